//! `gatehost sandbox`: start the provider emulators a sandbox config names, print where they
//! listen, and log what they receive until Ctrl-C (or `--for-secs`).

use crate::sandbox::config::SandboxConfig;
use crate::sandbox::{Sandbox, Service};
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    /// The sandbox config (see examples/sandbox.toml).
    #[arg(long, default_value = "sandbox.toml")]
    pub config: PathBuf,
    /// Print the endpoints as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many seconds instead of waiting for Ctrl-C.
    #[arg(long)]
    pub for_secs: Option<u64>,
}

pub fn run(args: SandboxArgs) -> anyhow::Result<ExitCode> {
    if !args.config.exists() {
        anyhow::bail!(
            "sandbox config {} does not exist (examples/sandbox.toml is a starting point)",
            args.config.display()
        );
    }
    let config = SandboxConfig::load(&args.config)?;
    let sandbox = Sandbox::start(&config).context("the sandbox did not start")?;
    let ca = sandbox.ca_file().display().to_string();
    let host = &sandbox.hub_hostname;
    let running: Vec<(Service, String)> = Service::ALL
        .iter()
        .filter_map(|s| sandbox.port(*s).map(|p| (*s, format!("{host}:{p}"))))
        .collect();
    if args.json {
        let mut endpoints = serde_json::Map::new();
        endpoints.insert("ca_file".into(), ca.into());
        for (service, endpoint) in &running {
            endpoints.insert(service.name().into(), endpoint.clone().into());
        }
        println!("{}", serde_json::Value::Object(endpoints));
    } else {
        println!("sandbox CA:           {ca}");
        for (service, endpoint) in &running {
            let note = match service {
                Service::Dps | Service::DpsRest => config
                    .dps
                    .as_ref()
                    .map(|d| format!("  id scope {}", d.id_scope))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            println!(
                "{:<21} {endpoint}{note}",
                format!("{}:", describe(*service))
            );
        }
        println!("Logging what each service receives; Ctrl-C stops.");
    }
    sandbox.wait(args.for_secs.map(Duration::from_secs));
    Ok(ExitCode::SUCCESS)
}

fn describe(service: Service) -> &'static str {
    match service {
        Service::Dps => "DPS (MQTT)",
        Service::DpsRest => "DPS (REST)",
        Service::IotHub => "IoT Hub",
        Service::MindConnectEu1 => "MindConnect eu1",
        Service::MindConnectPrivate => "MindConnect private",
        Service::AwsIot => "AWS IoT",
    }
}
