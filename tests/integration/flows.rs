//! The flow world in both engines: the same flow logic gives the same connection and the same
//! errors, and host capabilities (here the SAS token) behave alike in Rhai and WASM.

use crate::support::{flow_of, repo_root, wasm, PluginDir};
use gatehost::engine::FlowPlugin;
use gatehost::model::{Auth, ErrorKind, Pair};
use gatehost::pki::crypto;
use gatehost::plugins::registry::Registry;
use std::sync::Arc;

fn flows() -> (Arc<dyn FlowPlugin>, Arc<dyn FlowPlugin>) {
    let dir = PluginDir::new();
    let wasm_manifest = dir.wasm("echo-flow-wasm", "flow", &wasm("fixture_echo_flow"), "");
    let rhai_manifest = repo_root().join("tests/fixtures/rhai/echo-flow.toml");
    let load = |m: &std::path::Path| flow_of(Registry::load_path(dir.env(), m).unwrap());
    (load(&rhai_manifest), load(&wasm_manifest))
}

fn params(key: &str) -> Vec<Pair> {
    vec![
        ("hub".into(), "myhub.azure-devices.net".into()),
        ("device_id".into(), "press7".into()),
        ("key".into(), key.into()),
        ("expiry".into(), "1700000000".into()),
    ]
}

#[test]
fn the_same_flow_gives_the_same_connection_in_both_engines() {
    let (rhai, wasm) = flows();
    let key = "dGhpcyBpcyBhIHRlc3Qga2V5IG9mIDMyIGJ5dGVzIQ==";
    let a = rhai.onboard(&params(key)).unwrap();
    let b = wasm.onboard(&params(key)).unwrap();
    assert_eq!(a, b);
    let expected = crypto::sas_token(
        "myhub.azure-devices.net/devices/press7",
        key,
        None,
        1_700_000_000,
    )
    .unwrap();
    assert_eq!(a.auth, Auth::Password { password: expected });
    assert_eq!(
        a.attributes,
        vec![("device-id".to_string(), "press7".to_string())]
    );

    let ra = rhai.refresh(&a).unwrap();
    let rb = wasm.refresh(&b).unwrap();
    assert_eq!(ra, rb);
    assert_eq!(ra.expires_at, Some(1_700_003_600));
}

#[test]
fn flow_errors_are_identical_in_both_engines() {
    let (rhai, wasm) = flows();
    let few: Vec<Pair> = vec![("hub".into(), "h".into())];
    let a = rhai.onboard(&few).unwrap_err();
    let b = wasm.onboard(&few).unwrap_err();
    assert_eq!(a, b);
    assert_eq!(a.kind, ErrorKind::InvalidInput);
    assert_eq!(a.message, "missing parameters: device_id, key, expiry");

    let a = rhai.onboard(&params("not base64!")).unwrap_err();
    let b = wasm.onboard(&params("not base64!")).unwrap_err();
    assert_eq!(a, b);
    assert_eq!(a.message, "SAS key is not valid base64");
}

#[test]
fn a_rhai_flow_that_returns_a_malformed_connection_is_named() {
    let dir = PluginDir::new();
    let m = dir.rhai(
        "sloppy",
        "flow",
        "fn onboard(p) { #{ host: \"h\", port: 8883, client_id: \"c\", auth: #{ kind: \"password\", password: \"x\" }, prot: 1 } }\nfn refresh(c) { #{} }",
        "",
    );
    let flow = flow_of(Registry::load_path(dir.env(), &m).unwrap());
    let e = flow.onboard(&[]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Plugin);
    assert!(
        e.message
            .starts_with("`onboard` did not return a connection: "),
        "{e}"
    );
    assert!(e.message.contains("prot"), "it names the bad field: {e}");
}

#[test]
fn a_host_that_does_not_resolve_is_an_io_error_naming_the_endpoint() {
    let dir = PluginDir::new();
    let m = dir.rhai(
        "early",
        "flow",
        "fn onboard(p) { mqtt::connect(#{ host: \"gateway.invalid\", port: 8883, client_id: \"c\", protocol: \"mqtt5\", connect_timeout_ms: 5000 }) }\nfn refresh(c) { #{} }",
        "[permissions]\nendpoints = [\"gateway.invalid:8883\"]",
    );
    let flow = flow_of(Registry::load_path(dir.env(), &m).unwrap());
    let e = flow.onboard(&[]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Io, "{e}");
    assert!(e.message.contains("gateway.invalid:8883"), "{e}");
}
