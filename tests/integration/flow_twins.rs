//! The WASM twins of the Azure DPS and MindConnect private-cloud flows (`plugins/azure-dps`,
//! `plugins/mindconnect-private`, and azure-dps in JavaScript and Python) against the sandbox: for every attestation they produce the
//! connection the Rhai scripts produce, their `refresh` credentials carry telemetry, and their
//! failures read the same.

use crate::support::install_shipped_flows;
use crate::support::sandbox::{install_twins, start};
use gatehost::caps::mqtt::{connection_options, MqttSession};
use gatehost::engine::FlowPlugin;
use gatehost::model::{Connection, Message, Pair};
use gatehost::plugins::registry::Registry;
use gatehost::sandbox::{Sandbox, Service};
use std::sync::Arc;
use std::time::Duration;

/// A connection with what differs between two runs (token, expiry) blanked.
fn comparable(mut c: Connection) -> serde_json::Value {
    c.expires_at = c.expires_at.map(|_| 0);
    let mut v = serde_json::to_value(c).unwrap();
    if v["auth"].get("password").is_some() {
        v["auth"]["password"] = "<token>".into();
    }
    v
}

fn pairs(list: &[(&str, String)]) -> Vec<Pair> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Send one message with `flow`'s fresh credentials for `conn`; the sandbox's record of it.
fn telemetry(
    sandbox: &Sandbox,
    registry: &Registry,
    flow: &str,
    conn: &Connection,
    service: Service,
    topic: &str,
) {
    let credentials = registry.flow(flow).unwrap().refresh(conn).unwrap();
    let caps = &registry.get(flow).unwrap().caps;
    let options = connection_options(caps, conn, &credentials).unwrap();
    let mut session = MqttSession::connect(caps, &options).unwrap();
    session.publish(&Message::new(topic, flow, 1)).unwrap();
    let got = sandbox.recorder.wait_for(Duration::from_secs(5), |r| {
        r.service == service.name() && r.event == "telemetry" && r.body == flow.as_bytes()
    });
    assert!(got.is_some(), "{flow}: no telemetry");
}

#[test]
fn wasm_twins_onboard_exactly_like_the_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sandbox = start(d);
    install_shipped_flows(d);
    install_twins(d);
    let registry = Registry::load(crate::support::env_for(
        vec![d.join("plugins")],
        d.join("state"),
        true,
    ));
    assert!(registry.errors().is_empty(), "{:?}", registry.errors());
    let flow = |name: &str| -> Arc<dyn FlowPlugin> { registry.flow(name).unwrap() };
    let ca = sandbox.ca_file().display().to_string();
    let dps = |extra: &[(&str, String)]| {
        let mut p = vec![
            ("id_scope", "0ne00SANDBOX".to_string()),
            ("dps_host", "localhost".into()),
            ("dps_port", sandbox.port(Service::Dps).unwrap().to_string()),
            (
                "hub_port",
                sandbox.port(Service::IotHub).unwrap().to_string(),
            ),
            ("ca_file", ca.clone()),
        ];
        p.extend(extra.iter().cloned());
        pairs(&p)
    };
    let derived =
        gatehost::pki::crypto::derive_device_key(crate::support::sandbox::GROUP_KEY, "twin-sym")
            .unwrap();
    let file = |name: &str| d.join(name).display().to_string();
    let cases = [
        (
            "symmetric key",
            dps(&[
                ("registration_id", "twin-sym".into()),
                ("symmetric_key", derived),
            ]),
        ),
        (
            "group key",
            dps(&[
                ("registration_id", "twin-group".into()),
                ("group_key", crate::support::sandbox::GROUP_KEY.into()),
                ("payload", r#"{"site":"plant1"}"#.into()),
            ]),
        ),
        (
            "X.509",
            dps(&[
                ("certificate", file("line7-dev9_chain.pem")),
                ("key", file("line7-dev9.key")),
            ]),
        ),
    ];
    let twins = ["azure-dps-wasm", "azure-dps-js", "azure-dps-py"];
    for (what, params) in cases {
        let script = flow("azure-dps").onboard(&params).unwrap();
        for twin in twins {
            let component = flow(twin).onboard(&params).unwrap();
            assert_eq!(
                comparable(script.clone()),
                comparable(component.clone()),
                "{twin}: {what}"
            );
            let topic = format!("devices/{}/messages/events/", component.client_id);
            telemetry(
                &sandbox,
                &registry,
                twin,
                &component,
                Service::IotHub,
                &topic,
            );
        }
    }

    // The same failures, word for word.
    let wrong = dps(&[
        ("registration_id", "twin-sym".into()),
        ("symmetric_key", "d3Jvbmcga2V5".into()),
    ]);
    let script = flow("azure-dps").onboard(&wrong).unwrap_err();
    assert!(script.message.contains("DPS answered 401"), "{script}");
    for twin in twins {
        assert_eq!(script, flow(twin).onboard(&wrong).unwrap_err(), "{twin}");
    }
    // Parameters the flow itself checks (gatehost checked the manifest's lists already).
    let bad_number = dps(&[
        ("registration_id", "twin-sym".into()),
        ("symmetric_key", "d3Jvbmcga2V5".into()),
        ("timeout_secs", "0".into()),
    ]);
    let script = flow("azure-dps").onboard(&bad_number).unwrap_err();
    for twin in twins {
        assert_eq!(
            script,
            flow(twin).onboard(&bad_number).unwrap_err(),
            "{twin}"
        );
    }

    // MindConnect private cloud: the broker closes the new agent's first connections, so each
    // engine is retried until it is provisioned (by hand here: `gatehost onboard` does it).
    let params = pairs(&[
        ("tenant", "acme".into()),
        ("broker_host", "localhost".into()),
        (
            "port",
            sandbox
                .port(Service::MindConnectPrivate)
                .unwrap()
                .to_string(),
        ),
        ("certificate", file("agent2_chain.pem")),
        ("key", file("agent2.key")),
        ("ca_file", ca.clone()),
    ]);
    let until_provisioned = |name: &str| {
        for _ in 0..10 {
            match flow(name).onboard(&params) {
                Ok(c) => return c,
                Err(e) => assert_eq!(e.kind, gatehost::model::ErrorKind::Closed, "{e}"),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("{name} never connected");
    };
    let script = until_provisioned("mindconnect-private");
    let component = until_provisioned("mindconnect-private-wasm");
    assert_eq!(comparable(script), comparable(component.clone()));
    telemetry(
        &sandbox,
        &registry,
        "mindconnect-private-wasm",
        &component,
        Service::MindConnectPrivate,
        "tc/acme/acme_agent2/i/amo_v3/ms",
    );
}
