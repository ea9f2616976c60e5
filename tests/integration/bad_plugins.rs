//! Every kind of broken plugin gives one clear error naming the plugin and the cause, and the
//! plugins next to it keep loading and running.

use crate::support::{gatehost, run, wasm, PluginDir};
use gatehost::model::Message;
use gatehost::plugins::registry::Registry;

/// A plugin directory with one good rule and one plugin for each failure.
fn broken_dir() -> PluginDir {
    let dir = PluginDir::new();
    dir.rhai(
        "good",
        "rule",
        "fn translate(msg) { #{ local: true, topic: \"ok/\" + msg.topic, payload: msg.payload } }",
        "",
    );
    dir.rhai(
        "syntax",
        "rule",
        "fn translate(msg) {\n    let x = 1;\n    let y = ;\n}\n",
        "",
    );
    dir.rhai("no-translate", "rule", "fn something_else(msg) { () }", "");
    dir.manifest("missing-wasm", "rule", "entry = \"nowhere.wasm\"");
    std::fs::write(dir.path().join("corrupt.wasm"), b"\0asm\x0d\0\x01\0garbage").unwrap();
    dir.manifest("corrupt", "rule", "");
    std::fs::write(dir.path().join("core-module.wasm"), b"\0asm\x01\0\0\0").unwrap();
    dir.manifest("core-module", "rule", "");
    std::fs::write(dir.path().join("not-wasm.wasm"), b"hello").unwrap();
    dir.manifest("not-wasm", "rule", "");
    dir.wasm("wrong-world", "rule", &wasm("fixture_echo_flow"), "");
    dir.rhai(
        "unknown-field",
        "rule",
        "fn translate(msg) { () }",
        "colour = \"blue\"",
    );
    let future = dir.rhai("future-api", "rule", "fn translate(msg) { () }", "");
    let text = std::fs::read_to_string(&future).unwrap();
    std::fs::write(&future, text.replace("api = \"0.1\"", "api = \"1.0\"")).unwrap();
    std::fs::write(dir.path().join("orphan.rhai"), "fn translate(msg) { () }").unwrap();
    dir
}

fn error_for<'a>(errors: &'a [String], needle: &str) -> &'a str {
    errors
        .iter()
        .find(|e| e.contains(needle))
        .unwrap_or_else(|| panic!("no error mentions {needle:?}; errors: {errors:#?}"))
}

#[test]
fn broken_plugins_are_reported_one_by_one_and_the_good_one_runs() {
    let dir = broken_dir();
    let registry = Registry::load(dir.env());
    let errors: Vec<String> = registry.errors().iter().map(|e| e.to_string()).collect();
    let p = dir.path().display().to_string();

    let e = error_for(&errors, "syntax.rhai");
    assert!(e.starts_with("plugin 'syntax': "), "{e}");
    assert!(
        e.contains("syntax.rhai:3:"),
        "syntax errors give file:line:column: {e}"
    );
    assert!(e.contains("syntax error"), "{e}");

    let e = error_for(&errors, "no-translate");
    assert!(e.contains("does not define `fn translate`"), "{e}");

    let e = error_for(&errors, "nowhere.wasm");
    assert!(e.starts_with("plugin 'missing-wasm': cannot read"), "{e}");

    let e = error_for(&errors, "'corrupt'");
    assert!(e.contains("corrupt.wasm does not compile"), "{e}");

    let e = error_for(&errors, "'core-module'");
    assert!(e.contains("is a core WebAssembly module"), "{e}");
    assert!(
        e.contains("wasm32-wasip2"),
        "the error says how to fix it: {e}"
    );

    let e = error_for(&errors, "'not-wasm'");
    assert!(
        e.contains("does not start with the WebAssembly magic bytes"),
        "{e}"
    );

    let e = error_for(&errors, "'wrong-world'");
    assert!(
        e.contains("does not implement the gatehost:plugin/rule@0.1.0 world"),
        "{e}"
    );
    assert!(e.contains("translate"), "it names the missing export: {e}");

    let e = error_for(&errors, "unknown-field.toml");
    assert!(e.contains("unknown field `colour`"), "{e}");

    let e = error_for(&errors, "future-api.toml");
    assert!(e.contains("api 1.0 is not supported"), "{e}");

    let e = error_for(&errors, "orphan.rhai");
    assert!(e.contains("has no manifest"), "{e}");
    assert!(
        e.contains(&format!("{p}/orphan.toml")),
        "it says which file to create: {e}"
    );

    for e in &errors {
        assert!(!e.contains('\n'), "each error is one line: {e}");
    }

    // The good plugin loaded and works, next to all of that.
    let good = registry.rule("good").expect("the good rule loaded");
    let out = good.translate(&Message::new("t", "p", 0)).unwrap();
    assert_eq!(out[0].message.topic, "ok/t");
    let e = registry
        .rule("syntax")
        .err()
        .expect("broken plugins are not served");
    assert!(
        e.to_string()
            .starts_with("plugin 'syntax' failed to load: "),
        "{e}"
    );
}

#[test]
fn gatehost_check_lists_every_problem_and_exits_non_zero() {
    let dir = broken_dir();
    let config = dir.path().join("gatehost.toml");
    std::fs::write(
        &config,
        format!(
            "plugin_dirs = [\"{}\"]\n[[rules]]\nname = \"r\"\nrule = \"nope\"\nfrom = [\"a/#/b\"]\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = run(gatehost().arg("check").arg("--config").arg(&config));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("error: plugin 'syntax': "),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("rule 'r': no plugin named 'nope' (available: good)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("rule 'r': from filter 'a/#/b' uses '#' other than as the whole last level"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("problem(s)"), "{}", out.stderr);
}
