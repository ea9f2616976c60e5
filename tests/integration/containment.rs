//! A hostile or careless plugin, using only the documented interface, cannot read what another
//! plugin keeps, cannot see the secrets it is handed in the logs, and cannot make the state dir
//! readable by others.

use crate::kv::OWNER;
use crate::support::{gatehost, repo_root, run, wasm, PluginDir};
use std::os::unix::fs::PermissionsExt;

#[test]
fn what_plugins_keep_is_private_and_check_warns_when_it_is_not() {
    let dir = PluginDir::new();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let manifest = dir.rhai("r-owner", "rule", OWNER, "");
    let env = crate::support::env_for(vec![dir.path().to_path_buf()], state.clone(), true);
    let rule = crate::support::load_rule(env, &manifest);
    rule.translate(&gatehost::model::Message::new("a/b", "x", 0))
        .unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state.join("kv/r-owner.json")), 0o600);
    assert_eq!(mode(&state.join("kv")), 0o700);
    assert_eq!(mode(&state.join("keys/r-owner/k.key")), 0o600);

    let config = dir.path().join("gatehost.toml");
    std::fs::write(&config, "state_dir = \"state\"\nplugin_dirs = []\n").unwrap();
    let quiet = run(gatehost().args(["check", "--config"]).arg(&config));
    assert!(!quiet.stderr.contains("warning"), "{}", quiet.stderr);
    // An operator's cp or a umask left one readable: said by check.
    std::fs::set_permissions(
        state.join("kv/r-owner.json"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = run(gatehost().args(["check", "--config"]).arg(&config));
    assert!(
        out.stderr.contains(&format!(
            "warning: {} is a file that can hold a credential, readable by other users (mode 644)",
            state.join("kv/r-owner.json").display()
        )),
        "{}",
        out.stderr
    );
}

#[test]
fn plugin_log_lines_never_show_a_device_key_or_a_token_in_either_engine() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plugins = d.join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for f in ["echo-flow.toml", "echo-flow.rhai"] {
        std::fs::copy(
            repo_root().join("tests/fixtures/rhai").join(f),
            plugins.join(f),
        )
        .unwrap();
    }
    std::fs::copy(
        wasm("fixture_echo_flow"),
        plugins.join("echo-flow-wasm.wasm"),
    )
    .unwrap();
    std::fs::write(
        plugins.join("echo-flow-wasm.toml"),
        "name = \"echo-flow-wasm\"\nversion = \"0.1.0\"\nkind = \"flow\"\napi = \"0.1\"\n",
    )
    .unwrap();
    let key = crate::support::sandbox::DEVICE_KEY;
    let mut text = "state_dir = \"state\"\nplugin_dirs = [\"plugins\"]\n".to_string();
    for flow in ["echo-flow", "echo-flow-wasm"] {
        text.push_str(&format!(
            "[[devices]]\nname = \"{flow}-dev\"\nflow = \"{flow}\"\n[devices.params]\nhub = \"hub.example\"\ndevice_id = \"d1\"\nkey = \"{key}\"\nexpiry = \"2000000000\"\n"
        ));
    }
    std::fs::write(d.join("gatehost.toml"), text).unwrap();
    for flow in ["echo-flow", "echo-flow-wasm"] {
        let out = run(gatehost()
            .args(["onboard", &format!("{flow}-dev"), "--config"])
            .arg(d.join("gatehost.toml"))
            .env("RUST_LOG", "info"));
        assert_eq!(out.code, 0, "{flow}: {}", out.stderr);
        assert!(
            out.stderr.contains("onboarding d1 with key <redacted>"),
            "{flow}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("minted <redacted>"),
            "{flow}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains(key), "{flow}: {}", out.stderr);
        assert!(
            !out.stderr.contains("SharedAccessSignature"),
            "{flow}: {}",
            out.stderr
        );
    }
}

#[test]
fn host_calls_end_at_the_calls_deadline_in_both_engines() {
    use gatehost::model::{ErrorKind, Message};
    use std::time::{Duration, Instant};
    let dir = PluginDir::new();
    // Rhai: sleeping in a loop (a sleep is one cheap operation, so the operations limit and the
    // progress check never come into it), and catching the timeout to sleep on.
    for (name, script) in [
        (
            "sleeper",
            "fn translate(msg) { loop { time::sleep_ms(5000); } }",
        ),
        (
            "stubborn",
            "fn translate(msg) { loop { try { time::sleep_ms(5000); } catch { } } }",
        ),
    ] {
        let m = dir.rhai(name, "rule", script, "[limits]\ntimeout_ms = 300");
        let rule = crate::support::load_rule(dir.env(), &m);
        let started = Instant::now();
        let e = rule.translate(&Message::new("a/b", "x", 0)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Timeout, "{name}: {e}");
        assert!(
            e.message
                .starts_with("did not finish within 300 ms and was stopped"),
            "{name}: {e}"
        );
        // One whole sleep would take 5 s; the bound only tells the two apart.
        assert!(started.elapsed() < Duration::from_secs(4), "{name}");
    }

    // WASM: an HTTPS request to a server that accepts and never answers (the rule asks for a
    // 5 s timeout).
    let pki = crate::support::mosquitto::Pki::new();
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hanging.local_addr().unwrap().port();
    let m = dir.wasm(
        "hanger",
        "rule",
        &wasm("fixture_http_rule"),
        &format!(
            "[limits]\ntimeout_ms = 300\n[permissions]\nendpoints = [\"127.0.0.1:*\", \"localhost:*\"]\nfile_roots = [{:?}]",
            pki.dir.display().to_string()
        ),
    );
    let rule = crate::support::load_rule(dir.env(), &m);
    let mut msg = Message::new("a/b", "{}", 0);
    msg.properties = vec![
        ("url".into(), format!("https://127.0.0.1:{port}/x")),
        ("ca".into(), pki.path("ca.pem")),
        ("chain".into(), pki.path("dev01_chain.pem")),
        ("key".into(), pki.path("dev01.key")),
    ];
    let started = Instant::now();
    let e = rule.translate(&msg).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    // The request ends at the deadline; whether the guest then still returns its error or the
    // engine stops it first (its next check comes at the deadline too), the call ends there.
    assert!(
        e.message
            .starts_with("did not finish within 300 ms and was stopped"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    drop(hanging);
}
