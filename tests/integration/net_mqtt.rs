//! The `mqtt` capability against the real Debian mosquitto broker, with TLS and
//! `require_certificate true`, and certificates made by gatehost's own certs capability.

use crate::support::mosquitto::{free_port, Mosquitto, Pki};
use crate::support::{flow_of, repo_root, wasm, PluginDir};
use gatehost::caps::mqtt::{ConnectOptions, MqttSession};
use gatehost::caps::tls::TlsOptions;
use gatehost::caps::{certs, CapContext, Permissions};
use gatehost::engine::FlowPlugin;
use gatehost::model::{ErrorKind, Message, Pair, PluginError, ProtocolVersion};
use gatehost::plugins::registry::{PluginEnv, Registry};
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

/// Plain MQTT options for `client` on the local broker at `port`.
fn plain_options(port: u16, client: &str, protocol: ProtocolVersion) -> ConnectOptions {
    ConnectOptions {
        host: "127.0.0.1".into(),
        port,
        client_id: client.into(),
        username: None,
        password: None,
        keep_alive_secs: 30,
        clean_session: true,
        protocol,
        tls: None,
        connect_timeout_ms: 3000,
    }
}

/// TLS options for `client` (its certificate and key from the test PKI) trusting `ca`.
fn options(ctx: &CapContext, pki: &Pki, port: u16, client: &str, ca: &str) -> ConnectOptions {
    let key = certs::load_key(ctx, &pki.path(&format!("{client}.key")), None).unwrap();
    ConnectOptions {
        tls: Some(TlsOptions {
            ca_file: Some(pki.path(ca)),
            client_certificate: Some((pki.path(&format!("{client}_chain.pem")), key)),
            server_name: None,
            alpn: vec![],
        }),
        ..plain_options(port, client, ProtocolVersion::Mqtt311)
    }
}

fn connect_err(ctx: &CapContext, o: &ConnectOptions) -> PluginError {
    MqttSession::connect(ctx, o).expect_err("the connection must fail")
}

fn load_flow(dir: &PluginDir, manifest: &std::path::Path) -> Arc<dyn FlowPlugin> {
    flow_of(Registry::load_path(dir.env(), manifest).unwrap())
}

#[test]
fn rhai_and_wasm_plugins_publish_and_receive_over_mutual_tls() {
    let pki = Pki::new();
    let broker = Mosquitto::start_tls(&pki);
    let dir = PluginDir::new();
    let perms = broker_permissions(&pki, broker.port);
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
    crate::support::openssl::openssl(
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
    crate::support::openssl::openssl(
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
        username: Some("someone".into()),
        password: Some("wrong".into()),
        connect_timeout_ms: 1500,
        ..plain_options(port, "dev01", ProtocolVersion::Mqtt311)
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

#[test]
fn mqtt5_sessions_carry_user_properties_and_mqtt311_refuses_them() {
    let pki = Pki::new();
    let broker = Mosquitto::start_tls(&pki);
    let ctx = ctx(&pki, &["127.0.0.1:*"]);
    let mut o = options(&ctx, &pki, broker.port, "dev01", "ca.pem");
    o.protocol = ProtocolVersion::Mqtt5;
    let mut s = MqttSession::connect(&ctx, &o).unwrap();
    s.subscribe("v5/#", 1).unwrap();
    let mut msg = Message::new("v5/props", "{\"t\":21}", 1);
    msg.properties = vec![
        ("$.ct".into(), "application/json".into()),
        ("line".into(), "7".into()),
        ("line".into(), "duplicate names are allowed".into()),
    ];
    s.publish(&msg).unwrap();
    let got = s.receive(Duration::from_secs(5)).unwrap().expect("echo");
    assert_eq!(got.topic, "v5/props");
    assert_eq!(got.payload, b"{\"t\":21}");
    assert_eq!(got.properties, msg.properties, "in order, duplicates kept");

    // A batch keeps each message's properties.
    let batch: Vec<Message> = (0..50)
        .map(|i| {
            let mut m = Message::new("v5/batch", format!("{i}"), 1);
            m.properties = vec![("seq".into(), i.to_string())];
            m
        })
        .collect();
    s.publish_batch(&batch).unwrap();
    for i in 0..50 {
        let m = s.receive(Duration::from_secs(5)).unwrap().expect("batch");
        assert_eq!(m.properties, vec![("seq".to_string(), i.to_string())]);
    }

    // MQTT 3.1.1 cannot carry them: an error, not a silent drop.
    let mut o311 = options(&ctx, &pki, broker.port, "dev01", "ca.pem");
    o311.client_id = "dev01-311".into();
    let mut s311 = MqttSession::connect(&ctx, &o311).unwrap();
    let e = s311.publish(&msg).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert_eq!(e.message, "the message to 'v5/props' has user properties, which MQTT 3.1.1 cannot carry (connect with MQTT 5, or put them in the topic)");
    assert_eq!(s.receive(Duration::from_millis(300)).unwrap(), None);
}

#[test]
fn mqtt5_refusals_are_typed_with_the_reason_code() {
    let pki = Pki::new();
    let ctx = ctx(&pki, &["127.0.0.1:*"]);
    std::fs::write(pki.dir.join("passwords"), "").unwrap();
    let strict = Mosquitto::start(
        &pki.dir,
        &format!(
            "allow_anonymous false\npassword_file {}",
            pki.path("passwords")
        ),
    );
    let o = ConnectOptions {
        username: Some("someone".into()),
        password: Some("wrong".into()),
        ..plain_options(strict.port, "dev01", ProtocolVersion::Mqtt5)
    };
    let e = connect_err(&ctx, &o);
    assert_eq!(e.kind, ErrorKind::Refused, "{e}");
    assert_eq!(
        e.message,
        "the broker refused the connection: not authorized"
    );
}

/// A manifest's permissions for the broker on `port` and the test PKI.
fn broker_permissions(pki: &Pki, port: u16) -> String {
    format!(
        "[permissions]\nendpoints = [\"127.0.0.1:{port}\"]\nfile_roots = [\"{}\"]",
        pki.dir.display()
    )
}

/// Flow parameters naming the broker's port and dev01's key, chain and CA.
fn client_params(pki: &Pki, port: u16) -> Vec<Pair> {
    vec![
        ("port".into(), port.to_string()),
        ("key".into(), pki.path("dev01.key")),
        ("chain".into(), pki.path("dev01_chain.pem")),
        ("ca".into(), pki.path("ca.pem")),
    ]
}

#[test]
fn a_rhai_plugin_speaks_mqtt5_with_user_properties() {
    let pki = Pki::new();
    let broker = Mosquitto::start_tls(&pki);
    let dir = PluginDir::new();
    let perms = broker_permissions(&pki, broker.port);
    let script = r#"
fn onboard(p) {
    let key = certs::load_key(p.key);
    let session = mqtt::connect(#{
        host: "127.0.0.1", port: parse_int(p.port), client_id: "dev01", protocol: "mqtt5",
        tls: #{ ca_file: p.ca, client_certificate: #{ chain_file: p.chain, key_ref: key.reference() } }
    });
    session.subscribe("v5/#", 1);
    session.publish(#{ topic: "v5/x", payload: "hi", qos: 1, properties: [["k", "v"], ["$.ce", "utf-8"]] });
    let got = session.receive(5000);
    #{ host: "127.0.0.1", port: parse_int(p.port), client_id: "dev01", auth: #{ kind: "none" },
       attributes: got.properties }
}
fn refresh(conn) { #{} }
"#;
    let flow = load_flow(&dir, &dir.rhai("v5-flow", "flow", script, &perms));
    let conn = flow.onboard(&client_params(&pki, broker.port)).unwrap();
    assert_eq!(
        conn.attributes,
        vec![
            ("k".to_string(), "v".to_string()),
            ("$.ce".to_string(), "utf-8".to_string())
        ]
    );
}

#[test]
fn sessions_are_capped_per_plugin_and_freed_when_a_call_fails() {
    let pki = Pki::new();
    let broker = Mosquitto::start_tls(&pki);
    let dir = PluginDir::new();
    let perms = broker_permissions(&pki, broker.port);
    // Opens `count` sessions, keeps them in an array, then fails.
    let script = r#"
fn onboard(p) {
    let key = certs::load_key(p.key);
    let sessions = [];
    for i in 0..parse_int(p.count) {
        sessions.push(mqtt::connect(#{
            host: "127.0.0.1", port: parse_int(p.port), client_id: `dev01-${i}`,
            tls: #{ ca_file: p.ca, client_certificate: #{ chain_file: p.chain, key_ref: key.reference() } }
        }));
    }
    throw #{ kind: "internal", message: `opened ${sessions.len()}` };
}
fn refresh(conn) { #{} }
"#;
    let limited = format!("{perms}\n[limits]\nmax_sessions = 8\n");
    let flow = load_flow(&dir, &dir.rhai("hoarder", "flow", script, &limited));
    let params = |count: u32| -> Vec<Pair> {
        let mut params = client_params(&pki, broker.port);
        params.push(("count".into(), count.to_string()));
        params
    };
    let e = flow.onboard(&params(9)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::LimitExceeded, "{e}");
    assert_eq!(
        e.message,
        "plugin 'hoarder' already has 8 MQTT sessions open (limits max_sessions)"
    );
    // The failed calls closed what they opened: all 8 slots are free again, twice over.
    for _ in 0..2 {
        let e = flow.onboard(&params(8)).unwrap_err();
        assert_eq!(e.message, "opened 8", "{e}");
    }
}

/// A gateway config in `dir` whose plugin directory holds the Rhai mqtt-flow fixture (which may
/// reach any port on 127.0.0.1 and read the PKI folder), with `extra` appended.
fn gateway_with_mqtt_flow(pki: &Pki, dir: &PluginDir, extra: &str) -> gatehost::config::Config {
    let source =
        std::fs::read_to_string(repo_root().join("tests/fixtures/rhai/mqtt-flow.rhai")).unwrap();
    let perms = format!(
        "[permissions]\nendpoints = [\"127.0.0.1:*\"]\nfile_roots = [\"{}\"]",
        pki.dir.display()
    );
    dir.rhai("mqtt-flow", "flow", &source, &perms);
    let text = format!(
        "state_dir = \"state\"\nplugin_dirs = [\"{}\"]\n{extra}",
        dir.path().display()
    );
    let path = dir.path().join("gatehost.toml");
    std::fs::write(&path, &text).unwrap();
    gatehost::config::Config::load(&path, true).unwrap()
}

fn mqtt_flow_params(pki: &Pki, port: u16, ca: &str) -> Vec<Pair> {
    vec![
        ("host".into(), "127.0.0.1".into()),
        ("port".into(), port.to_string()),
        ("client_id".into(), "dev01".into()),
        ("key".into(), pki.path("dev01.key")),
        ("chain".into(), pki.path("dev01_chain.pem")),
        ("ca".into(), pki.path(ca)),
        ("topic".into(), "gw".into()),
        ("payload".into(), "hello".into()),
    ]
}

fn flow_in(env: gatehost::plugins::registry::PluginEnv) -> Arc<dyn FlowPlugin> {
    flow_of(Registry::load_named(env, "mqtt-flow").unwrap())
}

#[test]
fn the_gateway_config_narrows_what_a_manifest_declares() {
    let pki = Pki::new();
    let broker = Mosquitto::start_tls(&pki);
    let dir = PluginDir::new();
    let params = mqtt_flow_params(&pki, broker.port, "ca.pem");

    // Without narrowing the manifest's permissions suffice.
    let config = gateway_with_mqtt_flow(&pki, &dir, "");
    flow_in(PluginEnv::of(&config, false))
        .onboard(&params)
        .unwrap();

    // Endpoints narrowed to another port.
    let config = gateway_with_mqtt_flow(
        &pki,
        &dir,
        "[permissions.mqtt-flow]\nendpoints = [\"127.0.0.1:8883\"]\n",
    );
    let e = flow_in(PluginEnv::of(&config, false))
        .onboard(&params)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied);
    assert_eq!(
        e.message,
        format!("plugin 'mqtt-flow' may not connect to 127.0.0.1:{}: the gateway config narrows its endpoints to 127.0.0.1:8883 ([permissions.mqtt-flow] endpoints)", broker.port)
    );

    // File roots narrowed to a folder (relative to the config) that does not hold the keys.
    std::fs::create_dir_all(dir.path().join("site-certs")).unwrap();
    let config = gateway_with_mqtt_flow(
        &pki,
        &dir,
        "[permissions.mqtt-flow]\nfile_roots = [\"site-certs\"]\n",
    );
    let e = flow_in(PluginEnv::of(&config, false))
        .onboard(&params)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied);
    assert!(
        e.message.starts_with(&format!(
            "plugin 'mqtt-flow' may not read {}: the gateway config narrows its file roots to {}",
            pki.path("dev01.key"),
            dir.path().join("site-certs").display()
        )),
        "{e}"
    );

    // Narrowing a plugin that does not exist is a config problem.
    let config = gateway_with_mqtt_flow(&pki, &dir, "[permissions.no-such]\nendpoints = [\"x\"]\n");
    let registry = Registry::load(PluginEnv::of(&config, false));
    let problems = gatehost::bridge::problems::config_problems(&config, &registry);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("[permissions.no-such]: no plugin named 'no-such'")),
        "{problems:?}"
    );
    assert!(
        problems.contains(
            &"[permissions.no-such]: endpoint 'x' must be host:port (port may be *)".to_string()
        ),
        "{problems:?}"
    );
}

#[test]
fn insecure_skip_verify_comes_only_from_the_device_config() {
    let pki = Pki::new();
    let broker = Mosquitto::start_tls(&pki);
    let dir = PluginDir::new();
    // The flow trusts the wrong CA: verification fails unless the device switches it off.
    let params = mqtt_flow_params(&pki, broker.port, "rogue-ca.pem");
    let config = gateway_with_mqtt_flow(
        &pki,
        &dir,
        "[[devices]]\nname = \"strict\"\nflow = \"mqtt-flow\"\n\n\
         [[devices]]\nname = \"lab\"\nflow = \"mqtt-flow\"\ninsecure_skip_verify = true\n",
    );
    let strict = &config.devices[0];
    let lab = &config.devices[1];
    let e = flow_in(PluginEnv::for_device(&config, strict, false))
        .onboard(&params)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Tls, "{e}");
    let conn = flow_in(PluginEnv::for_device(&config, lab, false))
        .onboard(&params)
        .unwrap();
    let attrs: std::collections::BTreeMap<_, _> = conn.attributes.into_iter().collect();
    assert_eq!(attrs["received-payload"], "hello");
    // Client certificate authentication still happens: a rogue client is still refused.
    let mut rogue = params.clone();
    rogue[3].1 = pki.path("rogue.key");
    rogue[4].1 = pki.path("rogue_chain.pem");
    let e = flow_in(PluginEnv::for_device(&config, lab, false))
        .onboard(&rogue)
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Tls | ErrorKind::Closed), "{e}");
}

#[test]
fn qos2_goes_both_ways_exactly_once_within_the_brokers_receive_maximum() {
    let pki = Pki::new();
    // mosquitto's defaults: 20 QoS 2 messages in flight per client (it drops those beyond that
    // from MQTT 3.1.1 clients while acknowledging them).
    let default = Mosquitto::start(&pki.dir, "allow_anonymous true");
    // MQTT 5 clients learn from this one's CONNACK that it takes 2 unacknowledged publishes
    // (mosquitto sends max_inflight_messages as the receive maximum) and packets of 300 bytes.
    let strict = Mosquitto::start(
        &pki.dir,
        "allow_anonymous true\nmax_inflight_messages 2\nmax_packet_size 300",
    );
    let ctx = ctx(&pki, &["127.0.0.1:*"]);
    for (protocol, port) in [
        (ProtocolVersion::Mqtt311, default.port),
        (ProtocolVersion::Mqtt5, default.port),
        (ProtocolVersion::Mqtt5, strict.port),
    ] {
        let client = format!("q2-{protocol:?}-{port}");
        let mut s = MqttSession::connect(&ctx, &plain_options(port, &client, protocol)).unwrap();
        let topic = format!("q2/{client}");
        s.subscribe(&format!("{topic}/#"), 2).unwrap();
        // PUBLISH, PUBREC, PUBREL, PUBCOMP out; PUBLISH, PUBREC, PUBREL, PUBCOMP back.
        let batch: Vec<Message> = (0..60)
            .map(|i| Message::new(format!("{topic}/seq"), format!("{i}"), 2))
            .collect();
        s.publish_batch(&batch).unwrap();
        for i in 0..60 {
            let m = s
                .receive(Duration::from_secs(5))
                .unwrap()
                .unwrap_or_else(|| panic!("{client}: message {i} comes back"));
            assert_eq!(
                (m.payload, m.qos),
                (i.to_string().into_bytes(), 2),
                "{client}"
            );
        }
        assert_eq!(
            s.receive(Duration::from_millis(300)).unwrap(),
            None,
            "{client}: each exactly once"
        );
    }

    // A packet over the broker's maximum is refused before it is sent, and the session lives on.
    let mut s = MqttSession::connect(
        &ctx,
        &plain_options(strict.port, "big", ProtocolVersion::Mqtt5),
    )
    .unwrap();
    s.subscribe("big/#", 1).unwrap();
    let e = s
        .publish(&Message::new("big/one", vec![b'x'; 400], 1))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Refused, "{e}");
    assert!(
        e.message
            .contains("is larger than the broker takes (300 bytes)"),
        "{e}"
    );
    s.publish(&Message::new("big/small", "fits", 1)).unwrap();
    let m = s
        .receive(Duration::from_secs(5))
        .unwrap()
        .expect("the small one");
    assert_eq!(m.payload, b"fits");
}

#[test]
fn pings_keep_an_idle_session_open_at_the_brokers_keep_alive() {
    let pki = Pki::new();
    // MQTT 5 clients asking for more than 10 s are told to use 10 s (server keep-alive).
    let broker = Mosquitto::start(&pki.dir, "allow_anonymous true\nmax_keepalive 10");
    let ctx = ctx(&pki, &["127.0.0.1:*"]);
    let mut mine = plain_options(broker.port, "idle-311", ProtocolVersion::Mqtt311);
    mine.keep_alive_secs = 5;
    let mut theirs = plain_options(broker.port, "idle-5", ProtocolVersion::Mqtt5);
    theirs.keep_alive_secs = 60;
    let mut sessions: Vec<MqttSession> = [mine, theirs]
        .iter()
        .map(|o| MqttSession::connect(&ctx, o).unwrap())
        .collect();
    for s in &mut sessions {
        s.subscribe("idle/#", 1).unwrap();
    }
    // mosquitto closes a client it has heard nothing from for 1.5 keep-alives: 7.5 s for the
    // 3.1.1 session, 15 s (checked about once a second) for the MQTT 5 one, which would ping
    // only every 60 s on its own.
    std::thread::sleep(Duration::from_secs(22));
    for (i, s) in sessions.iter_mut().enumerate() {
        let text = format!("still here {i}");
        s.publish(&Message::new("idle/after", text.as_str(), 1))
            .unwrap();
        let m = loop {
            let m = s.receive(Duration::from_secs(5)).unwrap().expect("echo");
            if m.payload == text.as_bytes() {
                break m;
            }
        };
        assert_eq!(m.topic, "idle/after");
    }
}

#[test]
fn a_session_that_does_not_read_for_a_while_keeps_its_connection_and_every_message() {
    let pki = Pki::new();
    // mosquitto keeps what a slow client has not taken yet (its default drops beyond 1 000).
    let broker = Mosquitto::start(&pki.dir, "allow_anonymous true\nmax_queued_messages 100000");
    let ctx = ctx(&pki, &["127.0.0.1:*"]);
    let mut o = plain_options(broker.port, "slow-reader", ProtocolVersion::Mqtt311);
    o.keep_alive_secs = 5;
    let mut slow = MqttSession::connect(&ctx, &o).unwrap();
    slow.subscribe("flood/#", 1).unwrap();
    // More messages than the connection may hand the session before it reads.
    let count = 3000;
    let mut publisher = MqttSession::connect(
        &ctx,
        &plain_options(broker.port, "flooder", ProtocolVersion::Mqtt311),
    )
    .unwrap();
    let flood: Vec<Message> = (0..count)
        .map(|i| Message::new("flood/x", format!("{i}"), 1))
        .collect();
    publisher.publish_batch(&flood).unwrap();
    // Not read for more than 1.5 keep-alives: the broker closes a connection it hears nothing
    // from for that long, so the connection must go on pinging while it holds messages back.
    std::thread::sleep(Duration::from_secs(12));
    for i in 0..count {
        let m = slow
            .receive(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("message {i}: {e}"))
            .unwrap_or_else(|| panic!("message {i} did not come"));
        assert_eq!(m.payload, format!("{i}").as_bytes(), "in order");
    }
    // Still the same connection: what it publishes now comes back.
    slow.publish(&Message::new("flood/after", "still here", 1))
        .unwrap();
    let m = slow.receive(Duration::from_secs(5)).unwrap().expect("echo");
    assert_eq!(m.payload, b"still here");
}

#[test]
fn a_persistent_session_gets_what_waited_for_it_even_in_the_connacks_segment() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki.dir, "allow_anonymous true");
    let ctx = ctx(&pki, &["127.0.0.1:*"]);
    let keeper = ConnectOptions {
        clean_session: false,
        ..plain_options(broker.port, "keeper", ProtocolVersion::Mqtt311)
    };
    let mut s = MqttSession::connect(&ctx, &keeper).unwrap();
    s.subscribe("kept/#", 1).unwrap();
    s.disconnect().unwrap();
    drop(s);

    let mut sender = MqttSession::connect(
        &ctx,
        &plain_options(broker.port, "sender", ProtocolVersion::Mqtt311),
    )
    .unwrap();
    let batch: Vec<Message> = (0..20)
        .map(|i| Message::new("kept/seq", format!("{i}"), 1))
        .collect();
    sender.publish_batch(&batch).unwrap();

    // mosquitto sends the queued messages right behind the CONNACK, often in one segment.
    let mut s = MqttSession::connect(&ctx, &keeper).unwrap();
    for i in 0..20 {
        let m = s
            .receive(Duration::from_secs(5))
            .unwrap()
            .unwrap_or_else(|| panic!("queued message {i} arrives"));
        assert_eq!(m.payload, i.to_string().into_bytes());
    }
}
