//! Sharing plugins between sites: signed bundles (`.ghp`), the trust store, installing with
//! pinning in `gatehost.lock`, and new-plugin skeletons.
//!
//! A bundle is a plain tar archive in one canonical layout:
//!
//! ```text
//! bundle.toml           what the plugin is and may use, and the SHA-256 of every payload file
//! bundle.toml.minisig   minisign (Ed25519) signature of bundle.toml: `minisign -V` checks it
//! payload/<name>.toml   the plugin manifest
//! payload/<name>.rhai   or <name>.wasm, plus any `files` the manifest ships
//! ```

pub mod archive;
pub(crate) mod fetch;
pub mod format;
pub mod lock;
pub mod minisign;
pub mod skeleton;
pub mod store;
pub mod trust;

/// Write a file aside, flush it, and rename it over `path`.
pub(crate) fn write_atomic(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut file, data)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
