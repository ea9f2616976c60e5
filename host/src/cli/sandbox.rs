//! `gatehost sandbox`: start the provider emulators a sandbox config names, print where they
//! listen, and log what they receive until Ctrl-C (or `--for-secs`).

use crate::sandbox::config::SandboxConfig;
use crate::sandbox::Sandbox;
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
    let endpoint = |port: Option<u16>| port.map(|p| format!("{}:{p}", sandbox.hub_hostname));
    let dps = endpoint(sandbox.dps_port());
    let hub = endpoint(sandbox.iothub_port());
    if args.json {
        println!(
            "{}",
            serde_json::json!({"ca_file": ca, "dps": dps, "iothub": hub})
        );
    } else {
        println!("sandbox CA:  {ca}");
        if let Some(dps) = &dps {
            let scope = config
                .dps
                .as_ref()
                .map(|d| d.id_scope.as_str())
                .unwrap_or_default();
            println!("DPS (MQTT):  {dps}  id scope {scope}");
        }
        if let Some(hub) = &hub {
            println!("IoT Hub:     {hub}");
        }
        println!("Logging what each service receives; Ctrl-C stops.");
    }
    sandbox.wait(args.for_secs.map(Duration::from_secs));
    Ok(ExitCode::SUCCESS)
}
