//! Every shipped flow of `scripts/flows` through `gatehost onboard` against the sandbox, with
//! agent and device certificates made by the real `openssl` CLI: the resulting connection, a
//! telemetry message over it, MindConnect's provisioning closes retried, DPS 429s waited out,
//! zero-touch templates, and the bad cases (missing and unknown parameters, an expired
//! certificate, an unreachable endpoint past its deadline).

use crate::support::gateway::{gatehost_onboard, onboarded};
use crate::support::install_shipped_flows;
use crate::support::sandbox::{publish_over, start, write_config};
use gatehost::sandbox::{Sandbox, Service};
use std::process::Command;
use std::time::Duration;

fn telemetry_from(sandbox: &Sandbox, service: Service, client_id: &str) -> Vec<u8> {
    sandbox
        .recorder
        .wait_for(Duration::from_secs(5), |r| {
            r.service == service.name() && r.event == "telemetry" && r.client_id == client_id
        })
        .unwrap_or_else(|| {
            panic!(
                "no telemetry from {client_id}: {:#?}",
                sandbox.recorder.all()
            )
        })
        .body
}

#[test]
fn every_provider_flow_onboards_and_carries_telemetry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sandbox = start(d);
    install_shipped_flows(d);
    let config = write_config(d, &sandbox);

    // IoT Hub directly with a SAS token, and through an "Edge gateway" (127.0.0.1) with X.509
    // in the username form Edge requires.
    let c = onboarded(&config, "hub-sas", &[]);
    assert_eq!(
        (&c["host"], &c["client_id"], &c["auth"]),
        (&"localhost".into(), &"direct01".into(), &"password".into())
    );
    assert_eq!(c["username"], "localhost/direct01/?api-version=2021-04-12");
    publish_over(
        d,
        &config,
        "hub-sas",
        "devices/direct01/messages/events/",
        "1",
    );
    assert_eq!(telemetry_from(&sandbox, Service::IotHub, "direct01"), b"1");

    let c = onboarded(&config, "hub-edge", &[]);
    assert_eq!(c["host"], "127.0.0.1");
    assert_eq!(c["username"], "localhost/edge-leaf/api-version=2016-11-14");
    assert_eq!(c["auth"], "client-certificate");
    assert_eq!(c["attributes"]["gateway"], "127.0.0.1");
    publish_over(
        d,
        &config,
        "hub-edge",
        "devices/edge-leaf/messages/events/",
        "2",
    );
    assert_eq!(telemetry_from(&sandbox, Service::IotHub, "edge-leaf"), b"2");

    // MindConnect eu1 and private cloud: the broker closes a new agent's first connections while
    // it provisions it; gatehost retries the flow until one stays up.
    for (device, service, agent, auth) in [
        (
            "eu1",
            Service::MindConnectEu1,
            "acme_agent1",
            "client-certificate",
        ),
        (
            "private",
            Service::MindConnectPrivate,
            "acme_agent2",
            "password",
        ),
    ] {
        let c = onboarded(&config, device, &[]);
        assert_eq!(c["client_id"], agent);
        assert_eq!(c["auth"], auth);
        assert!(c["attempts"].as_u64().unwrap() >= 2, "{device}: {c}");
        let closes = sandbox
            .recorder
            .all()
            .into_iter()
            .filter(|r| r.service == service.name() && r.client_id == agent)
            .filter(|r| r.detail.contains("provisioned"))
            .count();
        assert!(closes >= 1, "{device}: no provisioning close recorded");
        let topic = format!("tc/acme/{agent}/i/amo_v3/ms");
        assert_eq!(
            c["attributes"]["publish-topic-prefix"],
            format!("tc/acme/{agent}/i/")
        );
        publish_over(d, &config, device, &topic, r#"{"t":21.5}"#);
        assert_eq!(telemetry_from(&sandbox, service, agent), br#"{"t":21.5}"#);
    }
    assert_eq!(
        onboarded(&config, "private", &[])["username"],
        "_CertificateBearer"
    );

    // MindConnect eu2: DPS with X.509 (the first register is throttled: 429 + retry-after 1 s,
    // waited out), then the assigned hub with the eu2 username.
    let c = onboarded(&config, "eu2", &[]);
    assert_eq!(c["client_id"], "acme_agent3");
    assert_eq!(
        c["username"],
        "localhost/acme_agent3/?api-version=2018-06-30"
    );
    assert_eq!(c["auth"], "client-certificate");
    assert_eq!(c["attempts"], 1, "the 429 is handled inside the flow");
    let records = sandbox.recorder.all();
    let throttled = records
        .iter()
        .find(|r| r.service == "dps" && r.event == "throttled" && r.client_id == "acme_agent3")
        .expect("the first register was throttled");
    let registered = records
        .iter()
        .find(|r| r.service == "dps" && r.event == "register" && r.client_id == "acme_agent3")
        .expect("the register was sent again");
    assert!(
        registered.at_ms >= throttled.at_ms + 1000,
        "the register was repeated {} ms after the 429, before its retry-after of 1 s",
        registered.at_ms - throttled.at_ms
    );
    assert!(
        registered.body.is_empty(),
        "eu2 sends an empty register body"
    );
    publish_over(
        d,
        &config,
        "eu2",
        "devices/acme_agent3/messages/events/",
        "3",
    );
    assert_eq!(
        telemetry_from(&sandbox, Service::IotHub, "acme_agent3"),
        b"3"
    );

    // DPS over HTTPS: a group-key device and an X.509 device (registration id = the CN), each
    // throttled once (429 + Retry-After header) before it registers.
    for (device, id, auth) in [
        ("rest-group", "rest-dev1", "password"),
        ("rest-x509", "rest-leaf", "client-certificate"),
    ] {
        let c = onboarded(&config, device, &[]);
        assert_eq!(c["client_id"], id);
        assert_eq!(c["auth"], auth);
        assert_eq!(
            c["username"],
            format!("localhost/{id}/?api-version=2021-04-12")
        );
        let records = sandbox.recorder.all();
        let of = |event: &str| {
            records
                .iter()
                .find(|r| r.service == "dps-rest" && r.event == event && r.client_id == id)
                .unwrap_or_else(|| panic!("{device}: no dps-rest {event}: {records:#?}"))
        };
        assert!(of("register").at_ms >= of("throttled").at_ms + 1000);
        publish_over(
            d,
            &config,
            device,
            &format!("devices/{id}/messages/events/"),
            "6",
        );
        assert_eq!(telemetry_from(&sandbox, Service::IotHub, id), b"6");
    }

    // AWS IoT: the thing's certificate, client id = its CN, policy-allowed topic.
    let c = onboarded(&config, "aws", &[]);
    assert_eq!(
        (&c["client_id"], &c["auth"]),
        (&"thing1".into(), &"client-certificate".into())
    );
    publish_over(d, &config, "aws", "dt/thing1/temperature", "4");
    assert_eq!(telemetry_from(&sandbox, Service::AwsIot, "thing1"), b"4");

    // Zero-touch: a device not listed, instantiated from the line7-* group-key template.
    let c = onboarded(&config, "line7-dev9", &[]);
    assert_eq!(c["client_id"], "line7-dev9");
    assert_eq!(c["attributes"]["registration-id"], "line7-dev9");
    publish_over(
        d,
        &config,
        "line7-dev9",
        "devices/line7-dev9/messages/events/",
        "5",
    );
    assert_eq!(
        telemetry_from(&sandbox, Service::IotHub, "line7-dev9"),
        b"5"
    );
    // Secrets never reach the state directory.
    for entry in std::fs::read_dir(d.join("state/devices")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(
            !text.contains("SharedAccessSignature") && !text.contains("eyJ"),
            "{text}"
        );
    }
}

#[test]
fn flow_failures_are_named_before_or_instead_of_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sandbox = start(d);
    install_shipped_flows(d);
    let config = write_config(d, &sandbox);

    for (device, want) in [
        (
            "incomplete",
            "device 'incomplete': missing parameters: broker_host, certificate, key; unknown parameters: brokr_host (this flow takes tenant, broker_host, certificate, key, ca_file, port)",
        ),
        ("two-ways", "give only one of symmetric_key, certificate + key"),
        ("bad-port", "device 'bad-port': port must be a whole number, not 'eighty'"),
        ("aws-expired", "expired on"),
        ("nowhere", "gave up after"),
        ("line8-dev1", "no device 'line8-dev1' in the config ([[devices]] name = ...), and no [[device_templates]] match it"),
        ("line7-bad/name", "device name 'line7-bad/name' cannot instantiate a template"),
    ] {
        let run = gatehost_onboard(&config, device, &[]);
        assert_eq!(run.code, Some(1), "{device}: {}", run.stdout);
        assert!(run.stderr.contains(want), "{device}: {}", run.stderr);
        assert!(!run.stderr.contains("SharedAccessSignature"));
    }
    // The expired certificate was never presented.
    assert!(
        sandbox
            .recorder
            .all()
            .iter()
            .all(|r| r.client_id != "thing2"),
        "{:#?}",
        sandbox.recorder.all()
    );
    // `gatehost check` finds the parameter problems without running anything.
    let out = Command::new(env!("CARGO_BIN_EXE_gatehost"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("device 'incomplete': missing parameters: broker_host"),
        "{stderr}"
    );
    assert!(
        stderr.contains("device 'two-ways': give only one of"),
        "{stderr}"
    );
    assert!(
        stderr.contains("device 'bad-port': port must be a whole number, not 'eighty'"),
        "{stderr}"
    );
}
