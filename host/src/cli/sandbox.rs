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
    if args.json {
        outln!("{}", endpoints_json(&sandbox));
    } else {
        for line in endpoint_lines(&sandbox, &config) {
            outln!("{line}");
        }
        outln!("Logging what each service receives; Ctrl-C stops.");
    }
    sandbox.wait(args.for_secs.map(Duration::from_secs));
    Ok(ExitCode::SUCCESS)
}

/// Where each running service listens, and the CA that verifies them, as one JSON object.
pub(crate) fn endpoints_json(sandbox: &Sandbox) -> serde_json::Value {
    let mut endpoints = serde_json::Map::new();
    endpoints.insert(
        "ca_file".into(),
        sandbox.ca_file().display().to_string().into(),
    );
    for (service, endpoint) in running(sandbox) {
        endpoints.insert(service.name().into(), endpoint.into());
    }
    serde_json::Value::Object(endpoints)
}

/// The same for people: one line per service.
pub(crate) fn endpoint_lines(sandbox: &Sandbox, config: &SandboxConfig) -> Vec<String> {
    let mut lines = vec![format!(
        "sandbox CA:           {}",
        sandbox.ca_file().display()
    )];
    for (service, endpoint) in running(sandbox) {
        let note = match (service, &config.dps) {
            (Service::Dps | Service::DpsRest, Some(dps)) => format!("  id scope {}", dps.id_scope),
            _ => String::new(),
        };
        lines.push(format!(
            "{:<21} {endpoint}{note}",
            format!("{}:", describe(service))
        ));
    }
    lines
}

fn running(sandbox: &Sandbox) -> Vec<(Service, String)> {
    Service::ALL
        .iter()
        .filter_map(|s| {
            sandbox
                .port(*s)
                .map(|p| (*s, format!("{}:{p}", sandbox.hub_hostname)))
        })
        .collect()
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
