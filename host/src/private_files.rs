//! Files that can hold a credential (kv namespaces, generated keys, kept registrations) are
//! written mode 0600 in folders gatehost creates 0700, atomically (a temp file in the same
//! folder, fsynced, then renamed): a crash leaves the old or the new file, never half of one,
//! and at no moment can another user read it. `gatehost check` reports what is looser.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Create `dir` (and missing parents) with mode 0700; tighten `dir` itself to 0700 if it was
/// there already.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Write `data` to `path` atomically with mode 0600, creating its folder 0700.
pub fn write(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_dir(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // A temp file left by an earlier run keeps its mode: set it.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The folders under the state dir that hold credentials.
pub(crate) const PRIVATE_DIRS: [&str; 3] = ["kv", "keys", "devices"];

/// Everything in the state dir that others than its owner can read or enter: the state dir
/// itself, the credential folders and what is in them. One sentence each.
pub(crate) fn loose_modes(state_dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut look = |path: &Path, what: &str| {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                found.push(format!(
                    "{} is {what} readable by other users (mode {mode:o}); chmod {} it",
                    path.display(),
                    if meta.is_dir() { "700" } else { "600" }
                ));
            }
        }
    };
    look(state_dir, "the state dir,");
    for name in PRIVATE_DIRS {
        let dir = state_dir.join(name);
        look(&dir, "a folder of credentials,");
        let mut stack: Vec<PathBuf> = vec![dir];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                match entry.file_type() {
                    Ok(t) if t.is_dir() => {
                        look(&path, "a folder of credentials,");
                        stack.push(path);
                    }
                    Ok(t) if t.is_file() => look(&path, "a file that can hold a credential,"),
                    _ => {}
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_0600_in_0700_folders_and_looser_ones_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let file = dir.path().join("kv/ns.json");
        write(&file, b"{}").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&dir.path().join("kv")), 0o700);
        assert!(loose_modes(dir.path()).is_empty());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let found = loose_modes(dir.path());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("mode 644"), "{found:?}");
        // Writing again makes it private again.
        write(&file, b"{}").unwrap();
        assert_eq!(mode(&file), 0o600);
    }
}
