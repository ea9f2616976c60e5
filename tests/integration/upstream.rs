//! A device's upstream session against the sandbox hub (which, like IoT Hub, closes a session
//! when its SAS token expires): short-lived tokens are renewed before expiry while messages keep
//! flowing, none lost; a hub that no longer knows the device makes the flow register it again.

use crate::support::install_shipped_flows;
use crate::support::sandbox::{start_sandbox, DEVICE_KEY};
use gatehost::config::Config;
use gatehost::model::Message;
use gatehost::onboard;
use gatehost::plugins::registry::{PluginEnv, Registry};
use gatehost::sandbox::{Sandbox, Service};
use gatehost::upstream::DeviceSession;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn write_config(d: &Path, sandbox: &Sandbox, ttl_secs: u32) -> PathBuf {
    let text = format!(
        "state_dir = \"state\"\nplugin_dirs = [\"plugins\"]\n[[devices]]\nname = \"sym\"\nflow = \"azure-dps\"\n[devices.params]\nid_scope = \"0ne00SANDBOX\"\nregistration_id = \"sym-dev\"\nsymmetric_key = \"{DEVICE_KEY}\"\ndps_host = \"localhost\"\ndps_port = \"{}\"\nhub_port = \"{}\"\nca_file = \"{}\"\ntoken_ttl_secs = \"{ttl_secs}\"\n",
        sandbox.port(Service::Dps).unwrap(),
        sandbox.port(Service::IotHub).unwrap(),
        sandbox.ca_file().display()
    );
    let path = d.join("gatehost.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn telemetry_bodies(sandbox: &Sandbox) -> Vec<String> {
    sandbox
        .recorder
        .of("iothub", "telemetry")
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect()
}

#[test]
fn short_lived_tokens_are_renewed_before_expiry_without_losing_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sandbox = start_sandbox(d, "");
    install_shipped_flows(d);
    let config = Config::load(&write_config(d, &sandbox, 3), true).unwrap();
    let device = onboard::device(&config, "sym").unwrap();
    let registry = Registry::load(PluginEnv::for_device(&config, &device, true));
    let mut session = DeviceSession::open(&config, &registry, &device).unwrap();
    assert!(session.time_to_expiry().unwrap() <= Duration::from_secs(3));

    // 10 s of telemetry over 3 s tokens: at least three renewals.
    let sent: Vec<String> = (0..40).map(|i| format!("reading {i}")).collect();
    for body in &sent {
        session
            .publish(&Message::new(
                "devices/sym-dev/messages/events/",
                body.as_str(),
                1,
            ))
            .unwrap();
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(session.renewals() >= 3, "{} renewals", session.renewals());
    assert_eq!(telemetry_bodies(&sandbox), sent, "every message, in order");
    let expired: Vec<_> = sandbox
        .recorder
        .of("iothub", "disconnect")
        .into_iter()
        .filter(|r| r.detail.contains("expired"))
        .collect();
    assert!(
        expired.is_empty(),
        "a session outlived its token: {expired:#?}"
    );
    let connects = sandbox.recorder.of("iothub", "connect").len();
    assert!(
        connects > session.renewals() as usize,
        "{connects} connects"
    );

    // Left alone, a session is closed by the hub when its token expires: renewal is needed.
    drop(session);
    let mut idle = DeviceSession::open(&config, &registry, &device).unwrap();
    let closed = sandbox.recorder.wait_for(Duration::from_secs(6), |r| {
        r.event == "disconnect" && r.detail == "the credentials expired; closed"
    });
    assert!(closed.is_some(), "{:#?}", sandbox.recorder.all());
    // ... and the next publish finds it closed, reconnects with a fresh token, and delivers.
    idle.publish(&Message::new(
        "devices/sym-dev/messages/events/",
        "after expiry",
        1,
    ))
    .unwrap();
    assert_eq!(telemetry_bodies(&sandbox).last().unwrap(), "after expiry");
}

#[test]
fn a_hub_that_forgot_the_device_makes_the_flow_register_it_again_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sandbox = start_sandbox(d, "");
    install_shipped_flows(d);
    let config = Config::load(&write_config(d, &sandbox, 3600), true).unwrap();
    let device = onboard::device(&config, "sym").unwrap();
    let registry = Registry::load(PluginEnv::for_device(&config, &device, true));
    let registrations = || sandbox.recorder.of("dps", "register").len();

    let session = DeviceSession::open(&config, &registry, &device).unwrap();
    assert_eq!((session.registrations(), registrations()), (1, 1));
    drop(session);

    // A restart reuses the kept connection: no registration.
    let session = DeviceSession::open(&config, &registry, &device).unwrap();
    assert_eq!((session.registrations(), registrations()), (0, 1));
    drop(session);

    // The device is deleted from the hub: the kept connection is refused, the flow runs again.
    assert!(sandbox.devices.remove("sym-dev"));
    let mut session = DeviceSession::open(&config, &registry, &device).unwrap();
    assert_eq!((session.registrations(), registrations()), (1, 2));
    session
        .publish(&Message::new("devices/sym-dev/messages/events/", "back", 1))
        .unwrap();
    assert_eq!(telemetry_bodies(&sandbox), vec!["back"]);
    assert!(sandbox
        .recorder
        .of("iothub", "refused")
        .iter()
        .any(|r| r.detail.contains("not registered")));
}
