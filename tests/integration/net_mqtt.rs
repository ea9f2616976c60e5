//! The `mqtt` capability against the real Debian mosquitto broker, with TLS and
//! `require_certificate true`, and certificates made by gatehost's own certs capability.

use crate::broker::{free_port, Mosquitto, Pki};
use crate::support::{repo_root, wasm, PluginDir};
use gatehost::caps::certs;
use gatehost::caps::mqtt::{ConnectOptions, MqttSession};
use gatehost::caps::tls::TlsOptions;
use gatehost::caps::CapContext;
use gatehost::engine::FlowPlugin;
use gatehost::model::{ErrorKind, Message, Pair, PluginError, ProtocolVersion};
use gatehost::plugins::manifest::Permissions;
use gatehost::plugins::registry::{PluginHandle, Registry};
use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

fn ctx(pki: &Pki, endpoints: &[&str]) -> CapContext {
    CapContext::ephemeral(
        "net-test",
        Permissions {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            file_roots: vec![pki.dir.display().to_string()],
            kv_namespace: None,
        },
    )
}

fn options(ctx: &CapContext, pki: &Pki, port: u16, client: &str, ca: &str) -> ConnectOptions {
    let key = certs::load_key(ctx, &pki.path(&format!("{client}.key")), None).unwrap();
    ConnectOptions {
        host: "127.0.0.1".into(),
        port,
        client_id: client.into(),
        username: None,
        password: None,
        keep_alive_secs: 30,
        clean_session: true,
        protocol: ProtocolVersion::Mqtt311,
        tls: Some(TlsOptions {
            ca_file: Some(pki.path(ca)),
            client_certificate: Some((pki.path(&format!("{client}_chain.pem")), key)),
            server_name: None,
            alpn: vec![],
        }),
        connect_timeout_ms: 3000,
    }
}

fn connect_err(ctx: &CapContext, o: &ConnectOptions) -> PluginError {
    MqttSession::connect(ctx, o).expect_err("the connection must fail")
}

fn load_flow(dir: &PluginDir, manifest: &std::path::Path) -> Arc<dyn FlowPlugin> {
    match Registry::load_path(dir.env(), manifest).unwrap().handle {
        PluginHandle::Flow(f) => f,
        PluginHandle::Rule(_) => panic!("not a flow"),
    }
}

#[test]
fn rhai_and_wasm_plugins_publish_and_receive_over_mutual_tls() {
    let pki = Pki::new();
    let broker = Mosquitto::start_tls(&pki);
    let dir = PluginDir::new();
    let perms = format!(
        "[permissions]\nendpoints = [\"127.0.0.1:{}\"]\nfile_roots = [\"{}\"]",
        broker.port,
        pki.dir.display()
    );
    let source =
        std::fs::read_to_string(repo_root().join("tests/fixtures/rhai/mqtt-flow.rhai")).unwrap();
    let rhai = load_flow(&dir, &dir.rhai("mqtt-flow", "flow", &source, &perms));
    let wasm = load_flow(
        &dir,
        &dir.wasm("mqtt-flow-wasm", "flow", &wasm("fixture_mqtt_flow"), &perms),
    );
    for (engine, flow) in [("rhai", rhai), ("wasm", wasm)] {
        let params: Vec<Pair> = vec![
            ("host".into(), "127.0.0.1".into()),
            ("port".into(), broker.port.to_string()),
            ("client_id".into(), format!("dev01-{engine}")),
            ("key".into(), pki.path("dev01.key")),
            ("chain".into(), pki.path("dev01_chain.pem")),
            ("ca".into(), pki.path("ca.pem")),
            ("topic".into(), format!("plant1/{engine}")),
            ("payload".into(), format!("hello from {engine} ü")),
        ];
        let conn = flow
            .onboard(&params)
            .unwrap_or_else(|e| panic!("{engine}: {e}"));
        let attr = |n: &str| {
            conn.attributes
                .iter()
                .find(|(k, _)| k == n)
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(attr("received-topic"), format!("plant1/{engine}/hello"));
        assert_eq!(attr("received-payload"), format!("hello from {engine} ü"));
        assert_eq!(attr("received-qos"), "1");
    }
}

#[test]
fn a_session_keeps_messages_for_receive_and_times_out_cleanly() {
    let pki = Pki::new();
    let broker = Mosquitto::start_tls(&pki);
    let ctx = ctx(&pki, &["127.0.0.1:*"]);
    let mut s =
        MqttSession::connect(&ctx, &options(&ctx, &pki, broker.port, "dev01", "ca.pem")).unwrap();
    s.subscribe("a/#", 1).unwrap();
    for i in 0..3 {
        s.publish(&Message::new(format!("a/{i}"), vec![i as u8; 1000], 1))
            .unwrap();
    }
    for i in 0..3 {
        let m = s.receive(Duration::from_secs(5)).unwrap().expect("message");
        assert_eq!(m.topic, format!("a/{i}"));
    }
    assert_eq!(s.receive(Duration::from_millis(200)).unwrap(), None);

    let e = s
        .publish(&Message::new("a/big", vec![0; 256 * 1024 + 1], 1))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::LimitExceeded);
    assert_eq!(
        e.message,
        "payload of 262145 bytes exceeds the 262144-byte limit"
    );
    let e = s.subscribe("a/#/b", 1).unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (
            ErrorKind::InvalidInput,
            "topic filter 'a/#/b' uses '#' other than as the whole last level"
        )
    );
    let e = s.publish(&Message::new("a/+", "x", 1)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    s.disconnect().unwrap();
}

#[test]
fn tls_failures_are_typed_errors_naming_the_endpoint() {
    let pki = Pki::new();
    let broker = Mosquitto::start_tls(&pki);
    let ctx = ctx(&pki, &["127.0.0.1:*", "localhost:*"]);
    let endpoint = format!("127.0.0.1:{}", broker.port);

    // The server certificate is from a CA the client does not trust.
    let e = connect_err(
        &ctx,
        &options(&ctx, &pki, broker.port, "dev01", "rogue-ca.pem"),
    );
    assert_eq!(e.kind, ErrorKind::Tls, "{e}");
    assert!(
        e.message
            .starts_with(&format!("TLS with {endpoint} failed: ")),
        "{e}"
    );
    assert!(
        e.message
            .contains("the server's certificate is not signed by a CA in the configured CA file"),
        "{e}"
    );

    // The certificate does not name the host we verify against.
    let mut o = options(&ctx, &pki, broker.port, "dev01", "ca.pem");
    o.tls.as_mut().unwrap().server_name = Some("wrong.example".into());
    let e = connect_err(&ctx, &o);
    assert_eq!(e.kind, ErrorKind::Tls, "{e}");
    assert!(
        e.message
            .contains("certificate not valid for name \"wrong.example\""),
        "{e}"
    );
    // ...while the right override works.
    o.tls.as_mut().unwrap().server_name = Some("localhost".into());
    MqttSession::connect(&ctx, &o).unwrap();

    // A client certificate from a CA the broker does not trust: the broker hangs up.
    let e = connect_err(&ctx, &options(&ctx, &pki, broker.port, "rogue", "ca.pem"));
    assert!(matches!(e.kind, ErrorKind::Tls | ErrorKind::Closed), "{e}");
    assert!(e.message.contains(&endpoint), "{e}");
}

#[test]
fn an_expired_server_certificate_is_refused() {
    let pki = Pki::new();
    let d = &pki.dir;
    crate::certs_openssl::openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "server.key",
            "-subj",
            "/CN=localhost",
            "-out",
            "old.csr",
        ],
    );
    // A v3 certificate (openssl makes v1 without extensions, which rustls refuses for that alone).
    std::fs::write(d.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    crate::certs_openssl::openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "old.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "-1",
            "-extfile",
            "san.ext",
            "-out",
            "expired.pem",
        ],
    );
    let broker = Mosquitto::start(
        d,
        &format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nallow_anonymous true",
            pki.path("ca.pem"),
            pki.path("expired.pem"),
            pki.path("server.key")
        ),
    );
    let ctx = ctx(&pki, &["127.0.0.1:*"]);
    let mut o = options(&ctx, &pki, broker.port, "dev01", "ca.pem");
    o.tls.as_mut().unwrap().server_name = Some("localhost".into());
    let e = connect_err(&ctx, &o);
    assert_eq!(e.kind, ErrorKind::Tls, "{e}");
    assert!(
        e.message.contains("the server's certificate has expired"),
        "{e}"
    );
}

#[test]
fn refusals_closures_silence_and_absence_are_told_apart() {
    let pki = Pki::new();
    let ctx = ctx(&pki, &["127.0.0.1:*"]);
    let plain = |port: u16| ConnectOptions {
        host: "127.0.0.1".into(),
        port,
        client_id: "dev01".into(),
        username: Some("someone".into()),
        password: Some("wrong".into()),
        keep_alive_secs: 30,
        clean_session: true,
        protocol: ProtocolVersion::Mqtt311,
        tls: None,
        connect_timeout_ms: 1500,
    };

    // CONNACK refusal: a broker that allows no anonymous clients and knows no users.
    std::fs::write(pki.dir.join("passwords"), "").unwrap();
    let strict = Mosquitto::start(
        &pki.dir,
        &format!(
            "allow_anonymous false\npassword_file {}",
            pki.path("passwords")
        ),
    );
    let e = connect_err(&ctx, &plain(strict.port));
    assert_eq!(e.kind, ErrorKind::Refused, "{e}");
    assert!(
        e.message.starts_with("the broker refused the connection: "),
        "{e}"
    );

    // A server that reads the CONNECT and hangs up (as MindConnect does while provisioning).
    let closer = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closer.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = closer.accept() {
            let mut buf = [0u8; 256];
            let _ = stream.read(&mut buf);
        }
    });
    let e = connect_err(&ctx, &plain(port));
    assert_eq!(e.kind, ErrorKind::Closed, "{e}");
    assert!(
        e.message
            .starts_with(&format!("127.0.0.1:{port} closed the connection")),
        "{e}"
    );

    // A server that accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let e = connect_err(&ctx, &plain(port));
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert_eq!(
        e.message,
        format!("127.0.0.1:{port} did not send the CONNACK within 1500 ms")
    );
    drop(silent);

    // Nothing listens there.
    let port = free_port();
    let e = connect_err(&ctx, &plain(port));
    assert_eq!(e.kind, ErrorKind::Io, "{e}");
    assert!(e.message.contains("connection refused"), "{e}");
}

#[test]
fn undeclared_endpoints_are_denied_in_both_engines() {
    let pki = Pki::new();
    let ctx = ctx(&pki, &["*.azure-devices.net:8883"]);
    let e = connect_err(&ctx, &options(&ctx, &pki, 1883, "dev01", "ca.pem"));
    assert_eq!(e.kind, ErrorKind::PermissionDenied);
    assert_eq!(e.message, "plugin 'net-test' may not connect to 127.0.0.1:1883: no permissions.endpoints pattern matches (declared: *.azure-devices.net:8883)");

    let dir = PluginDir::new();
    let perms = format!("[permissions]\nfile_roots = [\"{}\"]", pki.dir.display());
    let source =
        std::fs::read_to_string(repo_root().join("tests/fixtures/rhai/mqtt-flow.rhai")).unwrap();
    let rhai = load_flow(&dir, &dir.rhai("mqtt-flow", "flow", &source, &perms));
    let wasm = load_flow(
        &dir,
        &dir.wasm("mqtt-flow-wasm", "flow", &wasm("fixture_mqtt_flow"), &perms),
    );
    for (name, flow) in [("mqtt-flow", rhai), ("mqtt-flow-wasm", wasm)] {
        let params: Vec<Pair> = vec![
            ("host".into(), "127.0.0.1".into()),
            ("port".into(), "1883".into()),
            ("client_id".into(), "dev01".into()),
            ("key".into(), pki.path("dev01.key")),
            ("chain".into(), pki.path("dev01_chain.pem")),
            ("ca".into(), pki.path("ca.pem")),
        ];
        let e = flow.onboard(&params).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PermissionDenied, "{name}: {e}");
        assert_eq!(e.message, format!("plugin '{name}' may not connect to 127.0.0.1:1883: no permissions.endpoints pattern matches (none are declared)"));
    }
}

#[test]
fn a_batch_arrives_complete_and_in_order_or_not_at_all() {
    let pki = Pki::new();
    let broker = Mosquitto::start_tls(&pki);
    let ctx = ctx(&pki, &["127.0.0.1:*"]);
    let o = options(&ctx, &pki, broker.port, "dev01", "ca.pem");
    let mut s = MqttSession::connect(&ctx, &o).unwrap();
    s.subscribe("batch/#", 1).unwrap();
    // MQTT orders messages within one QoS level, so the order check uses QoS 1 throughout.
    let batch: Vec<Message> = (0..500)
        .map(|i| Message::new(format!("batch/{}", i % 3), format!("{i}"), 1))
        .collect();
    s.publish_batch(&batch).unwrap();
    let got: Vec<String> = (0..500)
        .map(|_| {
            let m = s.receive(Duration::from_secs(10)).unwrap();
            String::from_utf8(m.expect("every message comes back").payload).unwrap()
        })
        .collect();
    let want: Vec<String> = (0..500).map(|i| i.to_string()).collect();
    if let Some(first) = got.iter().zip(&want).position(|(a, b)| a != b) {
        let end = (first + 8).min(500);
        panic!(
            "out of order from {first}: {:?}",
            &got[first.saturating_sub(2)..end]
        );
    }

    // Mixed QoS: every message is handed over and every QoS 1 one acknowledged.
    let mixed: Vec<Message> = (0..200)
        .map(|i| Message::new("batch/mixed", format!("{i}"), (i % 2) as u8))
        .collect();
    s.publish_batch(&mixed).unwrap();
    let mut seen = 0;
    while s.receive(Duration::from_millis(500)).unwrap().is_some() {
        seen += 1;
    }
    assert!(
        seen >= 100,
        "at least the 100 QoS 1 messages come back, got {seen}"
    );

    // One bad message: nothing of the batch is sent.
    let mut bad = batch[..3].to_vec();
    bad[2].topic = "batch/#".into();
    let e = s.publish_batch(&bad).unwrap_err();
    assert_eq!(
        e.message,
        "message 3: 'batch/#' is not a topic one can publish to"
    );
    assert_eq!(s.receive(Duration::from_millis(300)).unwrap(), None);
}
