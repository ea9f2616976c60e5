//! Shared test support: paths, the WASM plugins built once per test run, temporary plugin
//! directories, and the `gatehost` binary; `languages` builds the JavaScript and Python plugins.

pub mod gateway;
pub mod languages;
pub mod mosquitto;
pub mod openssl;
pub mod python;
pub mod sandbox;

use gatehost::engine::RulePlugin;
use gatehost::plugins::registry::{PluginEnv, PluginHandle, Registry};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, OnceLock};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// Build the plugins workspace for wasm32-wasip2 (once per test run) and return its output dir.
pub fn wasm_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = repo_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(root.join("plugins/Cargo.toml"))
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("running cargo to build the WASM plugins");
        assert!(
            status.success(),
            "building plugins/ for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)"
        );
        root.join("plugins/target/wasm32-wasip2/release")
    })
}

pub fn wasm(crate_file_stem: &str) -> PathBuf {
    let path = wasm_dir().join(format!("{crate_file_stem}.wasm"));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A temporary plugin directory.
pub struct PluginDir {
    pub dir: tempfile::TempDir,
}

impl PluginDir {
    pub fn new() -> Self {
        PluginDir {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write `<name>.toml` with the given kind and extra manifest lines.
    pub fn manifest(&self, name: &str, kind: &str, extra: &str) -> PathBuf {
        let path = self.path().join(format!("{name}.toml"));
        let text = format!(
            "name = \"{name}\"\nversion = \"0.1.0\"\nkind = \"{kind}\"\napi = \"0.1\"\n{extra}\n"
        );
        std::fs::write(&path, text).expect("write manifest");
        path
    }

    /// A Rhai plugin: `<name>.rhai` with `source`, and its manifest.
    pub fn rhai(&self, name: &str, kind: &str, source: &str, extra: &str) -> PathBuf {
        std::fs::write(self.path().join(format!("{name}.rhai")), source).expect("write script");
        self.manifest(name, kind, extra)
    }

    /// A WASM plugin: a copy of `wasm` as `<name>.wasm`, and its manifest.
    pub fn wasm(&self, name: &str, kind: &str, wasm: &Path, extra: &str) -> PathBuf {
        std::fs::copy(wasm, self.path().join(format!("{name}.wasm"))).expect("copy component");
        self.manifest(name, kind, extra)
    }

    pub fn env(&self) -> PluginEnv {
        env_for(
            vec![self.path().to_path_buf()],
            self.path().join("state"),
            false,
        )
    }
}

pub fn env_for(dirs: Vec<PathBuf>, state_dir: PathBuf, persistent: bool) -> PluginEnv {
    PluginEnv {
        state_dir,
        persistent,
        ..PluginEnv::ephemeral(dirs)
    }
}

/// Load the rule whose manifest is at `manifest`.
pub fn load_rule(env: PluginEnv, manifest: &Path) -> Arc<dyn RulePlugin> {
    match Registry::load_path(env, manifest) {
        Ok(p) => match p.handle {
            PluginHandle::Rule(rule) => rule,
            PluginHandle::Flow(_) => panic!("{} is a flow", manifest.display()),
        },
        Err(e) => panic!("loading {}: {e}", manifest.display()),
    }
}

/// The example rule in both engines, as shipped in the repository.
pub fn example_rules() -> (Arc<dyn RulePlugin>, Arc<dyn RulePlugin>) {
    wasm_dir();
    let root = repo_root();
    let env = env_for(vec![], root.join("state"), false);
    let rhai = load_rule(
        env.clone(),
        &root.join("scripts/rules/iothub-telemetry.toml"),
    );
    let wasm = load_rule(env, &root.join("plugins/dist/iothub-telemetry-wasm.toml"));
    (rhai, wasm)
}

/// The example rule in every language it ships in, named: Rhai, Rust, JavaScript, Python.
pub fn example_rules_in_every_language() -> Vec<(&'static str, Arc<dyn RulePlugin>)> {
    let (rhai, rust) = example_rules();
    let env = env_for(vec![], repo_root().join("state"), false);
    let js = languages::manifest(languages::Lang::Js, "iothub-telemetry", "iothub-telemetry");
    let py = languages::manifest(
        languages::Lang::Python,
        "iothub-telemetry",
        "iothub-telemetry",
    );
    vec![
        ("Rhai", rhai),
        ("Rust", rust),
        ("JavaScript", load_rule(env.clone(), &js)),
        ("Python", load_rule(env, &py)),
    ]
}

/// The `gatehost` binary, run from the repository root.
pub fn gatehost() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehost"));
    cmd.current_dir(repo_root()).env("RUST_LOG", "warn");
    cmd
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("running gatehost");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The flow of a loaded plugin (the test fails when it is a rule).
pub fn flow_of(
    plugin: gatehost::plugins::registry::LoadedPlugin,
) -> std::sync::Arc<dyn gatehost::engine::FlowPlugin> {
    match plugin.handle {
        gatehost::plugins::registry::PluginHandle::Flow(f) => f,
        gatehost::plugins::registry::PluginHandle::Rule(_) => {
            panic!("{} is a rule, not a flow", plugin.info.manifest.name)
        }
    }
}

/// Every shipped flow of `scripts/flows` in `<dir>/plugins`, with manifests whose file roots are
/// `dir` (where the tests keep certificates and keys).
pub fn install_shipped_flows(dir: &Path) {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for entry in std::fs::read_dir(repo_root().join("scripts/flows")).unwrap() {
        let path = entry.unwrap().path();
        let mut text = std::fs::read_to_string(&path).unwrap();
        if path.extension().is_some_and(|e| e == "toml") {
            let roots = r#"file_roots = ["certs", "state"]"#;
            assert!(text.contains(roots), "{}", path.display());
            text = text.replace(
                roots,
                &format!("file_roots = [{:?}]", dir.display().to_string()),
            );
        }
        std::fs::write(plugins.join(path.file_name().unwrap()), text).unwrap();
    }
}

/// A child process killed when dropped (also when a test fails before it is done with it).
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn config_for(dir: &PluginDir) -> std::path::PathBuf {
    let config = dir.path().join("gatehost.toml");
    std::fs::write(
        &config,
        format!("plugin_dirs = [{:?}]\n", dir.path().display().to_string()),
    )
    .unwrap();
    config
}
