//! WASI is linked with nothing granted: no environment, arguments, files or sockets.

use crate::support::{load_rule, wasm, PluginDir};
use gatehost::model::Message;

#[test]
fn a_wasm_plugin_sees_no_environment_files_or_network() {
    std::env::set_var("GATEHOST_TEST_SECRET", "do-not-leak");
    let dir = PluginDir::new();
    let m = dir.wasm("probe", "rule", &wasm("fixture_probe_rule"), "");
    let rule = load_rule(dir.env(), &m);
    let out = rule.translate(&Message::new("probe/topic", "", 0)).unwrap();
    let report = String::from_utf8(out[0].message.payload.clone()).unwrap();
    assert!(report.starts_with("env=0 args=0 "), "{report}");
    assert!(report.contains("file=denied("), "{report}");
    assert!(report.contains("dir=denied("), "{report}");
    assert!(report.contains("socket=denied("), "{report}");
}
