//! Plugins written in JavaScript and Python, built with componentize-js and componentize-py as
//! integrators build them: limits, broken builds, `gatehost rule test`, `gatehost run` with hot
//! reload, bundles and `plugin new` skeletons, exactly as for Rust components.

use crate::support::gateway::{bare_gateway, eventually, mosquitto_pub, payloads, Gatehost, Sub};
use crate::support::languages::{component, manifest, Lang};
use crate::support::{gatehost, load_rule, repo_root, run, PluginDir};
use gatehost::model::{ErrorKind, Message};
use gatehost::plugins::registry::Registry;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn ok_msg() -> Message {
    Message::new("ok/press7/temperature", "{}", 1)
}

#[test]
fn js_and_python_rules_are_stopped_by_the_deadline_and_the_memory_cap_and_keep_serving() {
    for lang in Lang::BOTH {
        let dir = PluginDir::new();
        let m = dir.wasm(
            "misbehaving",
            "rule",
            &component(lang, "fixtures/misbehaving-rule", "misbehaving-rule"),
            "[limits]\ntimeout_ms = 500",
        );
        let rule = load_rule(dir.env(), &m);
        let echo = rule.translate(&ok_msg()).unwrap();
        assert_eq!(echo[0].message, ok_msg(), "{lang:?}");

        let e = rule
            .translate(&Message::new("loop/a/b", "x", 0))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Timeout, "{lang:?}: {e}");
        assert_eq!(e.message, "did not finish within 500 ms and was stopped");
        assert!(rule.translate(&ok_msg()).is_ok(), "{lang:?} serves again");

        let e = rule
            .translate(&Message::new("grow/a/b", "x", 0))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::LimitExceeded, "{lang:?}: {e}");
        assert_eq!(
            e.message,
            "exceeded its memory limit of 64 MiB and was stopped"
        );
        assert!(rule.translate(&ok_msg()).is_ok(), "{lang:?} serves again");

        // A bug (an exception the rule does not turn into an error): the call fails with what
        // the language runtime said, and the next message is served.
        let e = rule
            .translate(&Message::new("throw/a/b", "x", 0))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Plugin, "{lang:?}: {e}");
        assert!(e.message.starts_with("trapped: "), "{e}");
        let said = match lang {
            Lang::Python => "its stderr said: KeyError: 'value'",
            Lang::Js => "its stderr said: ",
        };
        assert!(e.message.contains(said), "{lang:?}: {e}");
        assert!(!e.message.contains('\n'), "one line: {e}");
        assert!(rule.translate(&ok_msg()).is_ok(), "{lang:?} serves again");
    }
}

#[test]
fn gatehost_rule_test_names_the_js_or_python_rule_that_loops() {
    for lang in Lang::BOTH {
        let m = manifest(lang, "fixtures/misbehaving-rule", "misbehaving-rule");
        let out = run(gatehost().args(["rule", "test"]).arg(&m).args([
            "--topic",
            "loop/a/b",
            "--payload",
            "x",
        ]));
        assert_eq!(out.code, 1, "{lang:?}: {}", out.stderr);
        let name = format!("misbehaving-rule-{}", lang.suffix());
        assert!(
            out.stderr.contains(&format!(
                "rule '{name}' failed on topic 'loop/a/b': did not finish within 1000 ms and was stopped (timeout)"
            )),
            "{}",
            out.stderr
        );
    }
}

/// Build one JavaScript or Python plugin directory with the language's build script.
fn build(lang: Lang, dir: &Path) -> std::process::Output {
    lang.build_command(&[dir]).output().unwrap()
}

/// A copy of the WIT package with another version, as an old gatehost shipped it.
fn old_wit(dir: &Path) -> PathBuf {
    let wit = dir.join("wit");
    std::fs::create_dir_all(&wit).unwrap();
    for entry in std::fs::read_dir(repo_root().join("wit")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("gatehost:plugin@0.1.0", "gatehost:plugin@0.0.9");
        std::fs::write(wit.join(path.file_name().unwrap()), text).unwrap();
    }
    wit
}

#[test]
fn broken_js_and_python_components_are_named_with_their_file_and_cause() {
    let dir = PluginDir::new();
    let d = dir.path();
    let rule_js = component(Lang::Js, "iothub-telemetry", "iothub-telemetry");
    let rule_py = component(Lang::Python, "iothub-telemetry", "iothub-telemetry");
    dir.wasm("good-js", "rule", &rule_js, "");
    // Another world: a rule component declared as a flow.
    dir.wasm("rule-as-flow", "flow", &rule_py, "");
    // A build that stopped half-way through writing the component.
    let bytes = std::fs::read(&rule_py).unwrap();
    std::fs::write(d.join("half.wasm"), &bytes[..bytes.len() / 2]).unwrap();
    dir.manifest("half", "rule", "");
    // The language runtime cannot start: CPython needs more than 8 MiB before its first call.
    dir.wasm("cramped", "rule", &rule_py, "[limits]\nmemory_mib = 8");

    // Built against an old WIT package, in each language.
    let src = tempfile::tempdir().unwrap();
    let js = src.path().join("old-js");
    old_wit(&js);
    std::fs::write(
        js.join("rule.js"),
        "import { quote } from 'gatehost:plugin/json@0.0.9';\nexport function translate(msg) { quote('x'); return []; }\n",
    )
    .unwrap();
    std::fs::write(
        js.join("old-js.toml"),
        "name = \"old-js\"\nversion = \"0.1.0\"\nkind = \"rule\"\napi = \"0.1\"\nentry = \"old-js.wasm\"\n",
    )
    .unwrap();
    let py = src.path().join("old-py");
    old_wit(&py);
    std::fs::write(
        py.join("app.py"),
        "import wit_world\nfrom wit_world.imports import json\n\nclass WitWorld(wit_world.WitWorld):\n    def translate(self, msg):\n        json.quote('x')\n        return []\n",
    )
    .unwrap();
    std::fs::write(
        py.join("old-py.toml"),
        "name = \"old-py\"\nversion = \"0.1.0\"\nkind = \"rule\"\napi = \"0.1\"\nentry = \"old-py.wasm\"\n",
    )
    .unwrap();
    for (lang, path, name) in [(Lang::Js, &js, "old-js"), (Lang::Python, &py, "old-py")] {
        let out = build(lang, path);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir.wasm(name, "rule", &path.join(format!("{name}.wasm")), "");
    }

    let registry = Registry::load(dir.env());
    let errors: Vec<String> = registry.errors().iter().map(|e| e.to_string()).collect();
    let error_for = |needle: &str| -> String {
        errors
            .iter()
            .find(|e| e.contains(needle))
            .unwrap_or_else(|| panic!("no error mentions {needle:?}: {errors:#?}"))
            .clone()
    };
    let e = error_for("'rule-as-flow'");
    assert!(e.contains("rule-as-flow.wasm"), "{e}");
    assert!(
        e.contains("does not implement the gatehost:plugin/flow@0.1.0 world"),
        "{e}"
    );
    let e = error_for("'half'");
    assert!(e.contains("half.wasm does not compile"), "{e}");
    let e = error_for("'cramped'");
    assert!(e.contains("cramped.wasm failed to start"), "{e}");
    assert!(
        e.contains("exceeded its memory limit of 8 MiB"),
        "the cause: {e}"
    );
    for name in ["old-js", "old-py"] {
        let e = error_for(&format!("'{name}'"));
        assert!(
            e.contains(&format!("{name}.wasm does not implement the gatehost:plugin/rule@0.1.0 world: it was built against gatehost API 0.0.9")),
            "{e}"
        );
        assert!(
            e.contains("rebuild it with this gatehost's WIT files"),
            "{e}"
        );
    }
    for e in &errors {
        assert!(!e.contains('\n'), "each error is one line: {e}");
    }
    assert_eq!(errors.len(), 5, "{errors:#?}");
    // The good one serves next to them.
    let good = registry.rule("good-js").unwrap();
    assert!(good
        .translate(&Message::new("plant1/press7/t", "1", 0))
        .is_ok());

    // `gatehost check` lists every one of them and fails.
    let config = crate::support::config_for(&dir);
    let check = run(gatehost().arg("check").arg("--config").arg(&config));
    assert_eq!(check.code, 1, "{}", check.stdout);
    for name in ["rule-as-flow", "half", "cramped", "old-js", "old-py"] {
        assert!(
            check.stderr.contains(&format!("plugin '{name}'")),
            "{name}: {}",
            check.stderr
        );
    }
}

#[test]
fn a_js_build_that_keeps_wasi_http_is_told_how_to_build() {
    // componentize-js adds wasi:http (for fetch) unless told not to.
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("rule.js");
    std::fs::write(&src, "export function translate(msg) { return []; }\n").unwrap();
    let out = d.path().join("fetching.wasm");
    let tool = Lang::Js.dir().join("node_modules/.bin/componentize-js");
    let built = std::process::Command::new(&tool)
        .arg(&src)
        .arg("--wit")
        .arg(repo_root().join("wit"))
        .args(["--world-name", "rule", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let dir = PluginDir::new();
    dir.wasm("fetching", "rule", &out, "");
    let registry = Registry::load(dir.env());
    let e = registry.errors()[0].to_string();
    assert!(
        e.starts_with("plugin 'fetching': ") && e.contains("fetching.wasm"),
        "{e}"
    );
    assert!(e.contains("it imports wasi:http/"), "{e}");
    assert!(e.contains("--disable http fetch-event"), "{e}");
}

#[test]
fn gatehost_rule_test_gives_the_same_lines_for_every_language() {
    let rhai = repo_root().join("scripts/rules/iothub-telemetry.toml");
    let rust = repo_root().join("plugins/dist/iothub-telemetry-wasm.toml");
    crate::support::wasm_dir();
    let js = manifest(Lang::Js, "iothub-telemetry", "iothub-telemetry");
    let py = manifest(Lang::Python, "iothub-telemetry", "iothub-telemetry");
    let cases: [&[&str]; 3] = [
        &[
            "--topic",
            "plant1/press7/temperature",
            "--payload",
            "{\"value\":21.5}",
            "--qos",
            "2",
        ],
        &[
            "--topic",
            "plant 1/press7/temp °C",
            "--payload",
            "not json",
            "--property",
            "unit=°C",
        ],
        &["--topic", "plant1/press7", "--payload", "{}"],
    ];
    for args in cases {
        let outputs: Vec<_> = [&rhai, &rust, &js, &py]
            .iter()
            .map(|m| run(gatehost().args(["rule", "test"]).arg(m).args(args)))
            .collect();
        for (o, m) in outputs.iter().zip([&rhai, &rust, &js, &py]) {
            assert_eq!(o.code, outputs[0].code, "{}: {}", m.display(), o.stderr);
            assert_eq!(o.stdout, outputs[0].stdout, "{}", m.display());
        }
    }
}

/// `echo-<lang>` in `<plugins>/<name>/`: a rule that answers `in/<lang>/#` on `out` with
/// "<lang> <version>", built by the language's build script (the component is replaced
/// atomically, as the scripts do).
fn echo_rule(lang: Lang, plugins: &Path, version: &str) {
    let name = format!("echo-{}", lang.suffix());
    let dir = plugins.join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{name}.toml")),
        format!("name = \"{name}\"\nversion = \"1.0.0\"\nkind = \"rule\"\napi = \"0.1\"\nentry = \"{name}.wasm\"\n"),
    )
    .unwrap();
    let reply = format!("{} {version}", lang.suffix());
    match lang {
        Lang::Js => std::fs::write(
            dir.join("rule.js"),
            format!("export function translate(msg) {{\n  return [{{ destination: {{ tag: 'local' }}, message: {{ topic: 'out', payload: new TextEncoder().encode('{reply}'), qos: 1, retain: false, properties: [] }} }}];\n}}\n"),
        ),
        Lang::Python => std::fs::write(
            dir.join("app.py"),
            format!("import wit_world\nfrom wit_world.imports.types import Destination_Local, Message, Outbound\n\nclass WitWorld(wit_world.WitWorld):\n    def translate(self, msg):\n        return [Outbound(Destination_Local(), Message('out', b'{reply}', 1, False, []))]\n"),
        ),
    }
    .unwrap();
    let out = build(lang, &dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn js_and_python_rules_serve_in_gatehost_run_and_hot_reload() {
    let (dir, local, metrics) = bare_gateway(
        "[[rules]]\nname = \"js\"\nrule = \"echo-js\"\nfrom = [\"in/js/#\"]\n[[rules]]\nname = \"py\"\nrule = \"echo-py\"\nfrom = [\"in/py/#\"]\n",
    );
    let d = dir.path();
    let plugins = d.join("plugins");
    for lang in Lang::BOTH {
        echo_rule(lang, &plugins, "v1");
    }
    let config = std::fs::read_to_string(d.join("gatehost.toml"))
        .unwrap()
        .replace(
            "plugin_dirs = []",
            "plugin_dirs = [\"plugins/echo-js\", \"plugins/echo-py\"]",
        );
    std::fs::write(d.join("gatehost.toml"), config).unwrap();
    let g = Gatehost::start(d, metrics);
    let sub = Sub::start(
        d,
        &["-p".into(), local.to_string(), "-t".into(), "out".into()],
    );
    let answers = |sub: &Sub| {
        let mut p = payloads(sub);
        p.sort();
        p
    };
    eventually(60, "both rules answer", || {
        mosquitto_pub(local, "in/js/a", b"1");
        mosquitto_pub(local, "in/py/a", b"1");
        std::thread::sleep(Duration::from_millis(300));
        let p = answers(&sub);
        p.contains(&"js v1".to_string()) && p.contains(&"py v1".to_string())
    });

    // A component cut short (a build that failed half-way, copied in anyway): the reload
    // fails, is counted and names the file; v1 keeps serving.
    let js = plugins.join("echo-js/echo-js.wasm");
    let bytes = std::fs::read(&js).unwrap();
    let tmp = plugins.join("echo-js/echo-js.wasm.tmp");
    std::fs::write(&tmp, &bytes[..bytes.len() / 3]).unwrap();
    std::fs::rename(&tmp, &js).unwrap();
    eventually(60, "the failed reload is counted", || {
        g.metric("gatehost_reload_failures_total") >= 1.0
    });
    assert!(g.log().contains("echo-js.wasm"), "{}", g.log());
    let before = payloads(&sub).len();
    mosquitto_pub(local, "in/js/b", b"2");
    eventually(20, "v1 still answers", || payloads(&sub).len() > before);
    assert_eq!(payloads(&sub).last().unwrap(), "js v1");

    // Rebuilt: the new versions serve without a restart.
    for lang in Lang::BOTH {
        echo_rule(lang, &plugins, "v2");
    }
    eventually(90, "both rules are reloaded", || {
        mosquitto_pub(local, "in/js/c", b"3");
        mosquitto_pub(local, "in/py/c", b"3");
        std::thread::sleep(Duration::from_millis(300));
        let p = payloads(&sub);
        p.contains(&"js v2".to_string()) && p.contains(&"py v2".to_string())
    });
    assert_eq!(g.metric("gatehost_messages_dead_lettered_total"), 0.0);
}

#[test]
fn js_and_python_components_pack_sign_install_and_run_as_bundles() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let keygen = run(gatehost()
        .args(["plugin", "keygen", "--out"])
        .arg(dir.join("acme")));
    assert_eq!(keygen.code, 0, "{}", keygen.stderr);
    let site = dir.join("site");
    std::fs::create_dir_all(site.join("state/trust")).unwrap();
    std::fs::copy(dir.join("acme.pub"), site.join("state/trust/acme.pub")).unwrap();
    std::fs::write(site.join("gatehost.toml"), "plugin_dirs = []\n").unwrap();
    let args = [
        "--topic",
        "plant1/press7/temperature",
        "--payload",
        "{\"value\":21.5}",
    ];
    for lang in Lang::BOTH {
        // The example, with a publisher, as an integrator would ship it.
        let m = manifest(lang, "iothub-telemetry", "iothub-telemetry");
        let src = dir.join(format!("src-{}", lang.suffix()));
        std::fs::create_dir_all(&src).unwrap();
        let text = std::fs::read_to_string(&m).unwrap() + "publisher = \"acme\"\n";
        std::fs::write(src.join(m.file_name().unwrap()), text).unwrap();
        std::fs::copy(
            m.with_extension("wasm"),
            src.join(m.with_extension("wasm").file_name().unwrap()),
        )
        .unwrap();
        let bundle = dir.join(format!("{}.ghp", lang.suffix()));
        let packed = run(gatehost()
            .args(["plugin", "pack"])
            .arg(&src)
            .arg("--key")
            .arg(dir.join("acme.key"))
            .arg("--out")
            .arg(&bundle));
        assert_eq!(packed.code, 0, "{}", packed.stderr);
        let installed = run(gatehost()
            .args(["plugin", "install"])
            .arg(&bundle)
            .arg("--config")
            .arg(site.join("gatehost.toml")));
        assert_eq!(installed.code, 0, "{lang:?}: {}", installed.stderr);
        let name = format!("iothub-telemetry-{}", lang.suffix());
        let from_bundle = run(gatehost()
            .args(["rule", "test", &name])
            .args(args)
            .arg("--config")
            .arg(site.join("gatehost.toml")));
        assert_eq!(from_bundle.code, 0, "{}", from_bundle.stderr);
        let from_source = run(gatehost().args(["rule", "test"]).arg(&m).args(args));
        assert_eq!(from_bundle.stdout, from_source.stdout, "{lang:?}");
        assert!(
            from_bundle
                .stdout
                .contains("devices/press7/messages/events/"),
            "{}",
            from_bundle.stdout
        );
    }
}

#[test]
fn plugin_new_makes_js_and_python_skeletons_that_build_offline_and_run() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let new = |name: &str, kind: &str, engine: &str, lang: Option<&str>| {
        let mut cmd = gatehost();
        cmd.args(["plugin", "new", name, "--kind", kind, "--engine", engine]);
        if let Some(lang) = lang {
            cmd.args(["--lang", lang]);
        }
        run(cmd.arg("--out").arg(dir.join(name)))
    };
    let mut dirs = Vec::new();
    for (lang, arg) in [(Lang::Js, "js"), (Lang::Python, "python")] {
        for kind in ["rule", "flow"] {
            let name = format!("skel-{}-{kind}", lang.suffix());
            let out = new(&name, kind, "wasm", Some(arg));
            assert_eq!(out.code, 0, "{name}: {}", out.stderr);
            let skel = dir.join(&name);
            assert!(
                skel.join("wit/worlds.wit").exists(),
                "{name} carries the WIT"
            );
            // Build as the skeleton says, with the tools already installed (no network).
            let status = match lang {
                Lang::Js => {
                    std::os::unix::fs::symlink(
                        Lang::Js.dir().join("node_modules"),
                        skel.join("node_modules"),
                    )
                    .unwrap();
                    std::process::Command::new("npm")
                        .args(["run", "build", "--offline"])
                        .current_dir(&skel)
                        .output()
                        .unwrap()
                }
                Lang::Python => {
                    let venv = repo_root().join(".venv/bin");
                    let path = format!("{}:{}", venv.display(), std::env::var("PATH").unwrap());
                    std::process::Command::new(skel.join("build.sh"))
                        .env("PATH", path)
                        .output()
                        .unwrap()
                }
            };
            assert!(
                status.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&status.stderr)
            );
            assert!(skel.join(format!("{name}.wasm")).exists(), "{name} built");
            dirs.push(format!("{:?}", skel.display().to_string()));
        }
    }
    let rhai = new("skel-rhai-rule", "rule", "rhai", None);
    assert_eq!(rhai.code, 0, "{}", rhai.stderr);
    dirs.push(format!(
        "{:?}",
        dir.join("skel-rhai-rule").display().to_string()
    ));
    let refused = new("skel-x", "rule", "rhai", Some("js"));
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("--lang js is for WASM plugins"),
        "{}",
        refused.stderr
    );

    let mut config = format!("plugin_dirs = [{}]\n", dirs.join(", "));
    for lang in ["js", "py"] {
        config.push_str(&format!(
            "[[devices]]\nname = \"dev-{lang}\"\nflow = \"skel-{lang}-flow\"\n[devices.params]\nhost = \"broker.example.com\"\ndevice_id = \"press7\"\npassword = \"secret\"\n"
        ));
    }
    std::fs::write(dir.join("gatehost.toml"), &config).unwrap();
    let check = run(gatehost()
        .args(["check", "--config"])
        .arg(dir.join("gatehost.toml")));
    assert_eq!(check.code, 0, "{}", check.stderr);
    assert!(check.stdout.contains("5 plugins"), "{}", check.stdout);
    let outputs: Vec<String> = ["skel-rhai-rule", "skel-js-rule", "skel-py-rule"]
        .iter()
        .map(|rule| {
            let t = run(gatehost()
                .args(["rule", "test", rule])
                .args([
                    "--topic",
                    "plant1/press7/oil temp",
                    "--payload",
                    "{\"v\":1}",
                    "--qos",
                    "2",
                ])
                .arg("--config")
                .arg(dir.join("gatehost.toml")));
            assert_eq!(t.code, 0, "{rule}: {}", t.stderr);
            t.stdout
        })
        .collect();
    assert!(
        outputs[0].contains(r#""topic":"devices/press7/messages/events/measurement=oil%20temp""#),
        "{}",
        outputs[0]
    );
    assert_eq!(outputs[1], outputs[0], "the JavaScript skeleton");
    assert_eq!(outputs[2], outputs[0], "the Python skeleton");
}
