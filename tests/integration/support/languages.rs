//! The JavaScript and Python plugins of `plugins/js` and `plugins/python`, built once per test
//! run with the real tools (componentize-js from `plugins/js/node_modules`, componentize-py
//! from the venv), exactly as their READMEs tell integrators to build them.

use crate::support::repo_root;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The language a component was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Js,
    Python,
}

impl Lang {
    pub const BOTH: [Lang; 2] = [Lang::Js, Lang::Python];

    /// Plugin-name suffix and directory under `plugins/`.
    pub fn suffix(self) -> &'static str {
        match self {
            Lang::Js => "js",
            Lang::Python => "py",
        }
    }

    pub fn dir(self) -> PathBuf {
        repo_root().join("plugins").join(match self {
            Lang::Js => "js",
            Lang::Python => "python",
        })
    }

    /// The command that builds the plugin directories `dirs` (all of the language's when empty).
    pub fn build_command(self, dirs: &[&Path]) -> Command {
        let mut cmd = match self {
            Lang::Js => {
                let tools = self
                    .dir()
                    .join("node_modules/@bytecodealliance/componentize-js");
                assert!(
                    tools.exists(),
                    "{} is missing: run .ci/install-deps (npm ci in plugins/js)",
                    tools.display()
                );
                let mut cmd = Command::new("node");
                cmd.arg(self.dir().join("build.mjs"));
                cmd
            }
            Lang::Python => {
                let mut cmd = Command::new(crate::support::python::venv_python());
                cmd.arg(self.dir().join("build.py"));
                cmd
            }
        };
        cmd.args(dirs);
        cmd
    }
}

/// Build every JavaScript and Python plugin of the repository (once per test run, both
/// languages at once).
pub fn built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let children: Vec<_> = Lang::BOTH
            .iter()
            .map(|lang| {
                let child = lang
                    .build_command(&[])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| panic!("starting the {lang:?} build: {e}"));
                (lang, child)
            })
            .collect();
        for (lang, child) in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "building the {lang:?} plugins failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
}

/// The manifest of a built plugin: `rel` is its directory under the language's plugins dir
/// (`iothub-telemetry`, `fixtures/misbehaving-rule`), `name` its name without the suffix.
pub fn manifest(lang: Lang, rel: &str, name: &str) -> PathBuf {
    built();
    let path = lang
        .dir()
        .join(rel)
        .join(format!("{name}-{}.toml", lang.suffix()));
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// The built component of that plugin.
pub fn component(lang: Lang, rel: &str, name: &str) -> PathBuf {
    let path = manifest(lang, rel, name).with_extension("wasm");
    assert!(path.exists(), "{} was not built", path.display());
    path
}
