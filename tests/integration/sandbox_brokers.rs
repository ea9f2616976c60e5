//! The MindConnect (eu1, private cloud) and AWS IoT emulators against gatehost's own MQTT
//! capability, with agent and thing certificates made by the real `openssl` CLI: provisioning
//! closes, certificate and JWT authentication, per-client topics, and every refusal path.

use crate::support::openssl::{openssl_ca, openssl_leaf};
use crate::support::sandbox::{ctx, options};
use gatehost::caps::mqtt::{ConnectOptions, MqttSession};
use gatehost::caps::{certs, CapContext};
use gatehost::model::{ErrorKind, Message};
use gatehost::pki::crypto;
use gatehost::sandbox::config::SandboxConfig;
use gatehost::sandbox::{Sandbox, Service};
use std::path::Path;
use std::time::Duration;

fn start(dir: &Path, config: &str) -> Sandbox {
    let path = dir.join("sandbox.toml");
    std::fs::write(&path, config).unwrap();
    Sandbox::start(&SandboxConfig::load(&path).unwrap()).unwrap()
}

/// Options that present `<name>_chain.pem` and its key as the client certificate.
fn with_certificate(
    ctx: &CapContext,
    dir: &Path,
    mut o: ConnectOptions,
    name: &str,
) -> ConnectOptions {
    let key = certs::load_key(
        ctx,
        &dir.join(format!("{name}.key")).display().to_string(),
        None,
    )
    .unwrap();
    o.tls.as_mut().unwrap().client_certificate = Some((
        dir.join(format!("{name}_chain.pem")).display().to_string(),
        key,
    ));
    o
}

/// The sandbox's record of `service` closing or refusing `client_id` for a reason containing
/// `why`, waiting a little for it.
fn assert_turned_away(sandbox: &Sandbox, service: Service, client_id: &str, why: &str) {
    let found = sandbox.recorder.wait_for(Duration::from_secs(3), |r| {
        r.service == service.name()
            && r.client_id == client_id
            && matches!(r.event, "closed" | "refused")
            && r.detail.contains(why)
    });
    assert!(
        found.is_some(),
        "no record of {client_id} turned away for '{why}': {:#?}",
        sandbox.recorder.all()
    );
}

/// A publish to `topic` closes the session, and the sandbox recorded why (`why`).
fn assert_publish_closes(sandbox: &Sandbox, session: &mut MqttSession, topic: &str, why: &str) {
    let e = session.publish(&Message::new(topic, "x", 1)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Closed, "{e}");
    let recorded = sandbox.recorder.wait_for(Duration::from_secs(3), |r| {
        r.event == "disconnect" && r.detail.contains(why)
    });
    assert!(
        recorded.is_some(),
        "no disconnect for '{why}': {:#?}",
        sandbox.recorder.all()
    );
}

/// The sandbox's `provision_delay_ms` above, plus a margin: gatehost spaces CONNECTs of one
/// client id a second apart, so the second attempt still falls within the delay.
const PROVISIONED_AFTER: Duration = Duration::from_millis(2600);

/// Tenant `acme` with agents `agent1` and `agent9`, and a CA no tenant has with agent `stray`.
fn mindconnect_fixture(dir: &Path) {
    openssl_ca(dir, "acme-ca");
    openssl_leaf(dir, "acme-ca", "agent1", "agent1");
    openssl_leaf(dir, "acme-ca", "agent9", "agent9");
    openssl_ca(dir, "stray-ca");
    openssl_leaf(dir, "stray-ca", "stray", "agent1");
}

const MINDCONNECT: &str = r#"
pki_dir = "pki"
[mindconnect]
provision_delay_ms = 2500
eu1 = { port = 0 }
private = { port = 0 }
[[mindconnect.tenants]]
name = "acme"
ca = "acme-ca.pem"
"#;

#[test]
fn mindconnect_eu1_provisions_new_agents_then_serves_only_their_topics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mindconnect_fixture(d);
    let sandbox = start(d, MINDCONNECT);
    let ctx = ctx(d);
    let port = sandbox.port(Service::MindConnectEu1).unwrap();
    let eu1 = |client_id: &str, cert: &str| {
        with_certificate(&ctx, d, options(&sandbox, port, client_id, "", ""), cert)
    };

    // The first connection of a new agent is closed, and so is a retry within the delay.
    let first = std::time::Instant::now();
    assert!(MqttSession::connect(&ctx, &eu1("acme_agent1", "agent1")).is_err());
    assert_turned_away(
        &sandbox,
        Service::MindConnectEu1,
        "acme_agent1",
        "is new and is being provisioned",
    );
    assert!(MqttSession::connect(&ctx, &eu1("acme_agent1", "agent1")).is_err());
    assert_turned_away(
        &sandbox,
        Service::MindConnectEu1,
        "acme_agent1",
        "is still being provisioned",
    );
    std::thread::sleep(PROVISIONED_AFTER.saturating_sub(first.elapsed()));
    let mut agent = MqttSession::connect(&ctx, &eu1("acme_agent1", "agent1")).unwrap();

    // Its own topics only.
    agent.subscribe("tc/acme/acme_agent1/o/#", 1).unwrap();
    let e = agent.subscribe("tc/acme/acme_agent9/o/#", 1).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Refused, "{e}");
    agent
        .publish(&Message::new(
            "tc/acme/acme_agent1/i/amo_v3/ms",
            r#"{"t":21.5}"#,
            1,
        ))
        .unwrap();
    let telemetry = sandbox
        .recorder
        .wait_for(Duration::from_secs(3), |r| {
            r.service == "mindconnect-eu1" && r.event == "telemetry"
        })
        .unwrap();
    assert_eq!(telemetry.identity.as_deref(), Some("x509:acme_agent1"));
    assert_eq!(telemetry.body, br#"{"t":21.5}"#);
    assert!(sandbox.publish(
        Service::MindConnectEu1,
        "tc/acme/acme_agent1/o/cmd",
        b"start"
    ));
    let command = agent.receive(Duration::from_secs(3)).unwrap().unwrap();
    assert_eq!(
        (command.topic.as_str(), command.payload.as_slice()),
        ("tc/acme/acme_agent1/o/cmd", &b"start"[..])
    );
    assert_publish_closes(
        &sandbox,
        &mut agent,
        "tc/acme/acme_agent9/i/amo_v3/ms",
        "may publish only under 'tc/acme/acme_agent1/i/'",
    );

    // Client id not <tenant>_<CN>, a CA the tenant does not have, no certificate at all.
    assert!(MqttSession::connect(&ctx, &eu1("acme_agent9", "agent1")).is_err());
    assert_turned_away(
        &sandbox,
        Service::MindConnectEu1,
        "acme_agent9",
        "is not <tenant>_<CN> = 'acme_agent1'",
    );
    assert!(MqttSession::connect(&ctx, &eu1("acme_agent1", "stray")).is_err());
    assert_turned_away(
        &sandbox,
        Service::MindConnectEu1,
        "acme_agent1",
        "is not issued by a CA",
    );
    assert!(MqttSession::connect(&ctx, &options(&sandbox, port, "acme_agent1", "", "")).is_err());
    assert_turned_away(
        &sandbox,
        Service::MindConnectEu1,
        "acme_agent1",
        "no client certificate",
    );
}

fn agent_token(d: &Path, name: &str, client_id: &str, claims: Option<serde_json::Value>) -> String {
    let key_pem = std::fs::read_to_string(d.join(format!("{name}.key"))).unwrap();
    let key = certs::PrivateKey::from_pem(&key_pem, None, name).unwrap();
    let chain = std::fs::read_to_string(d.join(format!("{name}_chain.pem"))).unwrap();
    match claims {
        None => gatehost::pki::jwt::mindconnect_jwt(&key, &chain, "chain", client_id, "acme", 600)
            .unwrap(),
        Some(claims) => gatehost::pki::jwt::jwt_sign(
            &key,
            "",
            &claims.to_string(),
            Some((&chain, "chain")),
            None,
        )
        .unwrap(),
    }
}

#[test]
fn mindconnect_private_cloud_checks_the_jwt_and_every_claim() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mindconnect_fixture(d);
    let sandbox = start(d, MINDCONNECT);
    let ctx = ctx(d);
    let port = sandbox.port(Service::MindConnectPrivate).unwrap();
    let bearer = |client_id: &str, token: &str| {
        options(&sandbox, port, client_id, "_CertificateBearer", token)
    };
    let token = agent_token(d, "agent1", "acme_agent1", None);

    let first = std::time::Instant::now();
    assert!(MqttSession::connect(&ctx, &bearer("acme_agent1", &token)).is_err());
    assert_turned_away(
        &sandbox,
        Service::MindConnectPrivate,
        "acme_agent1",
        "is being provisioned",
    );
    std::thread::sleep(PROVISIONED_AFTER.saturating_sub(first.elapsed()));
    // A fresh token for every connection, as agents must do.
    let token = agent_token(d, "agent1", "acme_agent1", None);
    let mut agent = MqttSession::connect(&ctx, &bearer("acme_agent1", &token)).unwrap();
    agent
        .publish(&Message::new("tc/acme/acme_agent1/i/amo_v3/ms", "42", 1))
        .unwrap();
    assert!(sandbox
        .recorder
        .wait_for(Duration::from_secs(3), |r| r.service
            == "mindconnect-private"
            && r.event == "telemetry"
            && r.identity.as_deref() == Some("x509:acme_agent1"))
        .is_some());
    drop(agent);

    let e = MqttSession::connect(
        &ctx,
        &options(&sandbox, port, "acme_agent1", "bearer", &token),
    )
    .unwrap_err();
    assert_eq!(
        e.message,
        "the broker refused the connection: bad user name or password"
    );

    let now = crypto::now_unix();
    let claims = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut c = serde_json::json!({
            "jti": crypto::uuid_v4(), "iss": "acme_agent1", "sub": "acme_agent1",
            "aud": ["MQTTBroker"], "iat": now, "exp": now + 600,
            "schemas": ["urn:siemens:mindsphere:v1"], "ten": "acme",
        });
        change(&mut c);
        Some(c)
    };
    let bad: Vec<(Option<serde_json::Value>, &str)> = vec![
        (
            claims(&|c| c["ten"] = "other".into()),
            "the JWT's ten 'other' is not the tenant 'acme'",
        ),
        (
            claims(&|c| c["exp"] = (now + 7200).into()),
            "the JWT lives 7200 s",
        ),
        (
            claims(&|c| {
                c["iat"] = (now - 1000).into();
                c["exp"] = (now - 10).into();
            }),
            // gatehost spaces the CONNECTs of one client id a second apart: the exact age varies.
            "the JWT expired 1",
        ),
        (
            claims(&|c| c["aud"] = serde_json::json!(["someone"])),
            "'aud' claim must be [\"MQTTBroker\"]",
        ),
        (
            claims(&|c| c["sub"] = "acme_agent9".into()),
            "the JWT's sub 'acme_agent9' is not the client id",
        ),
        (
            claims(&|c| c["jti"] = "x".repeat(37).into()),
            "jti must be 1 to 36 characters",
        ),
        (
            claims(&|c| c["nbf"] = (now + 900).into()),
            "the JWT is not valid for another",
        ),
        (
            claims(&|c| {
                c.as_object_mut().unwrap().remove("schemas");
            }),
            "'schemas' claim",
        ),
    ];
    for (claims, why) in bad {
        let token = agent_token(d, "agent1", "acme_agent1", claims);
        let e = MqttSession::connect(&ctx, &bearer("acme_agent1", &token)).unwrap_err();
        assert_eq!(
            e.message, "the broker refused the connection: not authorized",
            "{why}"
        );
        assert_turned_away(&sandbox, Service::MindConnectPrivate, "acme_agent1", why);
    }

    // Signed by a certificate of a CA the tenant does not have; a token of another agent; junk.
    let stray = agent_token(d, "stray", "acme_agent1", None);
    assert!(MqttSession::connect(&ctx, &bearer("acme_agent1", &stray)).is_err());
    assert_turned_away(
        &sandbox,
        Service::MindConnectPrivate,
        "acme_agent1",
        "does not lead to a tenant CA",
    );
    let other = agent_token(d, "agent9", "acme_agent1", None);
    let e = MqttSession::connect(&ctx, &bearer("acme_agent1", &other)).unwrap_err();
    assert_eq!(
        e.message,
        "the broker refused the connection: client id rejected"
    );
    assert_turned_away(
        &sandbox,
        Service::MindConnectPrivate,
        "acme_agent1",
        "= 'acme_agent9'",
    );
    assert!(MqttSession::connect(&ctx, &bearer("acme_agent1", "not.a.jwt")).is_err());
    assert_turned_away(
        &sandbox,
        Service::MindConnectPrivate,
        "acme_agent1",
        "the JWT header is not",
    );
}

#[test]
fn aws_iot_takes_registered_certificates_and_enforces_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl_ca(d, "fleet-ca");
    openssl_leaf(d, "fleet-ca", "press7", "press7");
    openssl_leaf(d, "fleet-ca", "press8", "press8");
    openssl_ca(d, "own-ca");
    openssl_leaf(d, "own-ca", "meter1", "meter1");
    openssl_ca(d, "stray-ca");
    openssl_leaf(d, "stray-ca", "stray", "press7");
    let sandbox = start(
        d,
        r#"
pki_dir = "pki"
[aws_iot]
[[aws_iot.things]]
ca = "fleet-ca.pem"
allow = ["dt/${iot:ClientId}/#", "cmd/${iot:ClientId}/+"]
[[aws_iot.things]]
name = "meter-one"
certificate = "meter1.pem"
allow = ["dt/+/#"]
"#,
    );
    let ctx = ctx(d);
    let port = sandbox.port(Service::AwsIot).unwrap();
    let thing = |client_id: &str, cert: &str| {
        let mut o = options(&sandbox, port, client_id, "", "");
        o.username = None;
        o.password = None;
        with_certificate(&ctx, d, o, cert)
    };

    // By CA (thing name = CN) and by thumbprint (the configured name).
    let mut press7 = MqttSession::connect(&ctx, &thing("press7", "press7")).unwrap();
    let mut meter = MqttSession::connect(&ctx, &thing("meter-one", "meter1")).unwrap();
    meter.subscribe("dt/press7/#", 1).unwrap();
    press7.subscribe("cmd/press7/start", 1).unwrap();
    let e = press7.subscribe("cmd/press8/start", 1).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Refused, "{e}");
    let e = press7.subscribe("cmd/#", 1).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Refused, "{e}");

    // An allowed publish is recorded and routed to subscribers.
    press7
        .publish(&Message::new("dt/press7/temp", "21.5", 1))
        .unwrap();
    let routed = meter.receive(Duration::from_secs(3)).unwrap().unwrap();
    assert_eq!(
        (routed.topic.as_str(), routed.payload.as_slice()),
        ("dt/press7/temp", &b"21.5"[..])
    );
    let telemetry = sandbox
        .recorder
        .wait_for(Duration::from_secs(3), |r| {
            r.service == "aws-iot" && r.event == "telemetry"
        })
        .unwrap();
    assert_eq!(telemetry.identity.as_deref(), Some("x509:press7"));
    assert!(sandbox.publish(Service::AwsIot, "cmd/press7/start", b"go"));
    let command = press7.receive(Duration::from_secs(3)).unwrap().unwrap();
    assert_eq!(command.payload, b"go");

    // Too large, then outside the policy: each closes the connection.
    let big = vec![b'x'; 128 * 1024 + 1];
    let e = press7
        .publish(&Message::new("dt/press7/blob", big, 1))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Closed, "{e}");
    let mut press7 = MqttSession::connect(&ctx, &thing("press7", "press7")).unwrap();
    assert_publish_closes(
        &sandbox,
        &mut press7,
        "dt/press8/temp",
        "does not allow publishing to 'dt/press8/temp'",
    );

    // A client id that is not the thing, an unregistered CA, no certificate.
    assert!(MqttSession::connect(&ctx, &thing("press8", "press7")).is_err());
    assert_turned_away(
        &sandbox,
        Service::AwsIot,
        "press8",
        "is not the thing name 'press7'",
    );
    assert!(MqttSession::connect(&ctx, &thing("press7", "stray")).is_err());
    assert_turned_away(&sandbox, Service::AwsIot, "press7", "is not issued by a CA");
    let mut bare = options(&sandbox, port, "press7", "", "");
    bare.username = None;
    assert!(MqttSession::connect(&ctx, &bare).is_err());
    assert_turned_away(&sandbox, Service::AwsIot, "press7", "no client certificate");
}
