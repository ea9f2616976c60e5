//! Registrations per second through the sandbox DPS: N devices of a group-key enrollment
//! register concurrently over MQTT/TLS (gatehost's own MQTT capability, one thread and one
//! connection per device: connect, subscribe, register, poll until assigned).
//!
//!   cargo bench -p gatehost --bench sandbox_register [-- DEVICES]

use gatehost::caps::mqtt::{ConnectOptions, MqttSession};
use gatehost::caps::tls::TlsOptions;
use gatehost::caps::CapContext;
use gatehost::caps::Permissions;
use gatehost::model::{Message, ProtocolVersion};
use gatehost::pki::crypto;
use gatehost::sandbox::config::SandboxConfig;
use gatehost::sandbox::{Sandbox, Service};
use std::time::{Duration, Instant};

const GROUP_KEY: &str = "YmVuY2ggZ3JvdXAga2V5IGZvciB0aGUgc2FuZGJveA==";

/// Register `id`; Ok(()) once DPS says assigned.
fn register(ctx: &CapContext, port: u16, ca: &str, id: &str) -> Result<(), String> {
    let key = crypto::derive_device_key(GROUP_KEY, id).unwrap();
    let token = crypto::sas_token(
        &format!("0ne00SANDBOX/registrations/{id}"),
        &key,
        Some("registration"),
        crypto::now_unix() + 600,
    )
    .unwrap();
    let o = ConnectOptions {
        host: "localhost".into(),
        port,
        client_id: id.into(),
        username: Some(format!(
            "0ne00SANDBOX/registrations/{id}/api-version=2019-03-31"
        )),
        password: Some(token),
        keep_alive_secs: 30,
        clean_session: true,
        protocol: ProtocolVersion::Mqtt311,
        tls: Some(TlsOptions {
            ca_file: Some(ca.into()),
            ..Default::default()
        }),
        connect_timeout_ms: 30_000,
    };
    let mut s = MqttSession::connect(ctx, &o).map_err(|e| e.to_string())?;
    s.subscribe("$dps/registrations/res/#", 1)
        .map_err(|e| e.to_string())?;
    let register = Message::new("$dps/registrations/PUT/iotdps-register/?$rid=1", "", 1);
    s.publish(&register).map_err(|e| e.to_string())?;
    let mut rid = 2;
    loop {
        let reply = s
            .receive(Duration::from_secs(30))
            .map_err(|e| e.to_string())?
            .ok_or("no reply within 30 s")?;
        let body: serde_json::Value =
            serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())?;
        match body["status"].as_str() {
            Some("assigned") => return Ok(()),
            Some("assigning") => {
                let op = body["operationId"].as_str().unwrap_or_default();
                let topic = format!(
                    "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}"
                );
                rid += 1;
                s.publish(&Message::new(topic, "", 1))
                    .map_err(|e| e.to_string())?;
            }
            _ => return Err(format!("{}: {body}", reply.topic)),
        }
    }
}

fn main() {
    let devices: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "pki_dir = \"pki\"\n[dps]\nassign_delay_ms = 0\n[[dps.enrollments]]\nattestation = \"group-symmetric-key\"\ngroup_key = \"{GROUP_KEY}\"\n"
    );
    let config = SandboxConfig::parse(&text, dir.path(), &dir.path().join("sandbox.toml")).unwrap();
    let sandbox = Sandbox::start(&config).unwrap();
    let port = sandbox.port(Service::Dps).unwrap();
    let ca = sandbox.ca_file().display().to_string();
    let ctx = CapContext::ephemeral(
        "bench",
        Permissions {
            endpoints: vec!["localhost:*".into()],
            file_roots: vec![dir.path().display().to_string()],
            ..Default::default()
        },
    );
    let start = Instant::now();
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..devices)
            .map(|i| {
                let (ctx, ca) = (ctx.clone(), ca.clone());
                // Each device is its own plugin context, as each would be on its own gateway.
                let ctx = CapContext {
                    mqtt: ctx.mqtt.separate(),
                    ..ctx
                };
                scope.spawn(move || register(&ctx, port, &ca, &format!("bench-{i:04}")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = start.elapsed();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    println!("| devices registering at once | assigned | failed | time | registrations/s |");
    println!("|---|---|---|---|---|");
    println!(
        "| {devices} | {} | {} | {:.2} s | {:.0} |",
        devices - failed.len(),
        failed.len(),
        elapsed.as_secs_f64(),
        devices as f64 / elapsed.as_secs_f64()
    );
    if let Some(first) = failed.first() {
        eprintln!("first failure: {first}");
        std::process::exit(1);
    }
}
