//! Onboarding against the in-process sandbox: the time one device takes with each shipped flow
//! (Rhai and WASM), then N devices (default 100) instantiated from a group-key device template
//! and onboarded concurrently (devices/s, peak RSS of the process, which hosts the sandbox too).
//!
//!   cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml
//!   cargo bench -p gatehost --bench onboard_flows [-- DEVICES]

use gatehost::config::Config;
use gatehost::onboard;
use gatehost::plugins::registry::PluginEnv;
use gatehost::plugins::registry::Registry;
use gatehost::sandbox::config::SandboxConfig;
use gatehost::sandbox::pki::SandboxPki;
use gatehost::sandbox::{Sandbox, Service};
use std::path::Path;
use std::time::Instant;

const GROUP_KEY: &str = "YmVuY2ggZ3JvdXAga2V5IGZvciB0aGUgc2FuZGJveA==";
const DEVICE_KEY: &str = "YmVuY2ggZGV2aWNlIGtleQ==";

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn sandbox(d: &Path) -> Sandbox {
    let pki = SandboxPki::open(&d.join("pki")).unwrap();
    pki.new_ca("acme-ca", "acme CA").unwrap();
    for (name, cn) in [
        ("dev-x509", "dev-x509"),
        ("agent1", "agent1"),
        ("agent3", "acme_agent3"),
        ("thing1", "thing1"),
    ] {
        pki.issue("acme-ca", name, cn, &[]).unwrap();
    }
    // Private-cloud agents sign RS256 tokens: RSA keys, made by openssl.
    for agent in ["agent2", "agent4"] {
        let pki_dir = d.join("pki");
        let run = |args: &[&str]| {
            let ok = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&pki_dir)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            assert!(ok, "openssl {args:?} failed");
        };
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{agent}.key"),
            "-out",
            &format!("{agent}.csr"),
            "-subj",
            &format!("/CN={agent}"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{agent}.csr"),
            "-CA",
            "acme-ca.pem",
            "-CAkey",
            "acme-ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            &format!("{agent}.pem"),
        ]);
        let read = |f: &str| std::fs::read_to_string(pki_dir.join(f)).unwrap();
        let chain = format!("{}{}", read(&format!("{agent}.pem")), read("acme-ca.pem"));
        std::fs::write(pki_dir.join(format!("{agent}_chain.pem")), chain).unwrap();
    }
    let text = format!(
        r#"
pki_dir = "pki"
[dps]
assign_delay_ms = 0
retry_after_secs = 1
[[dps.enrollments]]
attestation = "group-symmetric-key"
group_key = "{GROUP_KEY}"
[[dps.enrollments]]
attestation = "group-x509"
ca = "pki/acme-ca.pem"
[iothub]
[[iothub.devices]]
device_id = "direct01"
primary_key = "{DEVICE_KEY}"
[mindconnect]
provision_delay_ms = 0
eu1 = {{ port = 0 }}
private = {{ port = 0 }}
[[mindconnect.tenants]]
name = "acme"
ca = "pki/acme-ca.pem"
[aws_iot]
[[aws_iot.things]]
ca = "pki/acme-ca.pem"
allow = ["dt/${{iot:ClientId}}/#"]
"#
    );
    std::fs::write(d.join("sandbox.toml"), text).unwrap();
    Sandbox::start(&SandboxConfig::load(&d.join("sandbox.toml")).unwrap()).unwrap()
}

/// Flows from scripts/flows and the WASM twins from plugins/dist, file roots = `d`.
fn install_flows(d: &Path, repo: &Path) {
    let plugins = d.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let roots = r#"file_roots = ["certs", "state"]"#;
    let ours = format!("file_roots = [{:?}]", d.display().to_string());
    for entry in std::fs::read_dir(repo.join("scripts/flows")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(roots, &ours);
        std::fs::write(plugins.join(path.file_name().unwrap()), text).unwrap();
    }
    let release = repo.join("plugins/target/wasm32-wasip2/release");
    for (manifest, component) in [
        ("azure-dps-wasm.toml", "azure_dps"),
        ("mindconnect-private-wasm.toml", "mindconnect_private"),
    ] {
        let text = std::fs::read_to_string(repo.join("plugins/dist").join(manifest))
            .unwrap()
            .replace(roots, &ours)
            .replace(
                &format!("../target/wasm32-wasip2/release/{component}.wasm"),
                &release
                    .join(format!("{component}.wasm"))
                    .display()
                    .to_string(),
            );
        std::fs::write(plugins.join(manifest), text).unwrap();
    }
}

fn main() {
    let devices: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sandbox = sandbox(d);
    install_flows(d, &repo);
    let port = |s| sandbox.port(s).unwrap();
    let ca = sandbox.ca_file().display().to_string();
    let cert = |name: &str| {
        format!(
            "certificate = \"{}\"\nkey = \"{}\"\n",
            d.join(format!("pki/{name}_chain.pem")).display(),
            d.join(format!("pki/{name}.key")).display()
        )
    };
    let dps = |p: u16| {
        format!(
            "id_scope = \"0ne00SANDBOX\"\ndps_host = \"localhost\"\ndps_port = \"{p}\"\nhub_port = \"{}\"\n",
            port(Service::IotHub)
        )
    };
    let broker = |s| {
        format!(
            "tenant = \"acme\"\nbroker_host = \"localhost\"\nport = \"{}\"\n",
            port(s)
        )
    };
    let single: Vec<(&str, &str, String)> = vec![
        ("azure-dps (group key)", "azure-dps", format!("{}registration_id = \"one-sym\"\ngroup_key = \"{GROUP_KEY}\"\n", dps(port(Service::Dps)))),
        ("azure-dps (X.509)", "azure-dps", format!("{}{}", dps(port(Service::Dps)), cert("dev-x509"))),
        ("azure-dps-wasm (group key)", "azure-dps-wasm", format!("{}registration_id = \"one-sym-w\"\ngroup_key = \"{GROUP_KEY}\"\n", dps(port(Service::Dps)))),
        ("azure-dps-rest (group key)", "azure-dps-rest", format!("{}registration_id = \"one-rest\"\ngroup_key = \"{GROUP_KEY}\"\n", dps(port(Service::DpsRest)))),
        ("azure-iothub (SAS)", "azure-iothub", format!("hub_host = \"localhost\"\nport = \"{}\"\ndevice_id = \"direct01\"\nsymmetric_key = \"{DEVICE_KEY}\"\n", port(Service::IotHub))),
        ("mindconnect-eu1", "mindconnect-eu1", format!("{}{}", broker(Service::MindConnectEu1), cert("agent1"))),
        ("mindconnect-private", "mindconnect-private", format!("{}{}", broker(Service::MindConnectPrivate), cert("agent2"))),
        ("mindconnect-private-wasm", "mindconnect-private-wasm", format!("{}{}", broker(Service::MindConnectPrivate), cert("agent4"))),
        ("mindconnect-eu2", "mindconnect-eu2", format!("{}{}", dps(port(Service::Dps)), cert("agent3"))),
        ("aws-iot", "aws-iot", format!("endpoint = \"localhost\"\nport = \"{}\"\n{}", port(Service::AwsIot), cert("thing1"))),
    ];
    let mut text = String::from("state_dir = \"state\"\nplugin_dirs = [\"plugins\"]\n");
    for (i, (_, flow, params)) in single.iter().enumerate() {
        text.push_str(&format!(
            "[[devices]]\nname = \"d{i}\"\nflow = \"{flow}\"\n[devices.params]\nca_file = \"{ca}\"\n{params}\n"
        ));
    }
    text.push_str(&format!(
        "[[device_templates]]\nmatch = \"fleet-*\"\nflow = \"azure-dps\"\n[device_templates.params]\nregistration_id = \"{{device}}\"\ngroup_key = \"{GROUP_KEY}\"\nca_file = \"{ca}\"\n{}",
        dps(port(Service::Dps))
    ));
    std::fs::write(d.join("gatehost.toml"), text).unwrap();
    let config = Config::load(&d.join("gatehost.toml"), true).unwrap();
    let registry = Registry::load(PluginEnv::of(&config, true));
    for e in registry.errors() {
        eprintln!("warning: {e}");
    }

    println!(
        "one device per flow (sandbox in-process, assign_delay_ms = 0, provision_delay_ms = 0)"
    );
    println!("| flow | attempts | time |");
    println!("|---|---|---|");
    for (i, (label, _, _)) in single.iter().enumerate() {
        let device = onboard::device(&config, &format!("d{i}")).unwrap();
        let start = Instant::now();
        match onboard::onboard(&config, &registry, &device, true) {
            Ok(outcome) => println!(
                "| {label} | {} | {:.3} s |",
                outcome.attempts,
                start.elapsed().as_secs_f64()
            ),
            Err(e) => println!("| {label} | failed | {e} |"),
        }
    }

    let rss_before = peak_rss_mib();
    let start = Instant::now();
    let results: Vec<Result<u32, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..devices)
            .map(|i| {
                let (config, registry) = (&config, &registry);
                s.spawn(move || {
                    let device = onboard::device(config, &format!("fleet-{i:04}"))
                        .map_err(|e| e.to_string())?;
                    onboard::onboard(config, registry, &device, true)
                        .map(|o| o.attempts)
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let retried = results
        .iter()
        .filter(|r| matches!(r, Ok(a) if *a > 1))
        .count();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        eprintln!("first failure: {e}");
    }
    println!();
    println!("{devices} devices from the group-key template, onboarded concurrently");
    println!("| devices | onboarded | needed a retry | time | devices/s | peak RSS before | peak RSS after |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {devices} | {ok} | {retried} | {elapsed:.2} s | {:.1} | {rss_before:.0} MiB | {:.0} MiB |",
        ok as f64 / elapsed,
        peak_rss_mib()
    );
}
