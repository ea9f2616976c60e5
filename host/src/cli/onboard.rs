//! `gatehost onboard DEVICE`: run the device's flow (or reuse its kept connection) and print the
//! resulting connection — endpoint, client id, username, auth kind, provider facts, never a secret.

use super::{print_json, ConfigArg};
use crate::onboard;
use crate::plugins::registry::PluginEnv;
use crate::plugins::registry::Registry;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct OnboardArgs {
    /// The device's name in the config ([[devices]] name = ...).
    pub device: String,
    #[command(flatten)]
    pub config: ConfigArg,
    /// Register again even when a connection is kept in the state directory.
    #[arg(long)]
    pub force: bool,
    /// Print the connection as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: OnboardArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let device = onboard::device(&config, &args.device)?;
    let registry = Registry::load(PluginEnv::for_device(&config, &device, true));
    let outcome = onboard::onboard(&config, &registry, &device, args.force)?;
    let kept = &outcome.onboarded;
    let c = &kept.connection;
    let state_file = onboard::state_path(&config, &device.name);
    if args.json {
        let attributes: serde_json::Map<String, serde_json::Value> = c
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        print_json(&serde_json::json!({
            "device": kept.device,
            "flow": kept.flow,
            "registered": outcome.registered,
            "attempts": outcome.attempts,
            "host": c.host,
            "port": c.port,
            "client_id": c.client_id,
            "username": c.username,
            "auth": c.auth.kind_name(),
            "ca_file": c.ca_file,
            "attributes": attributes,
            "state_file": state_file.display().to_string(),
        }));
    } else {
        let how = match outcome.attempts {
            0 => "kept from an earlier onboarding; --force registers again".to_string(),
            1 => "registered now".to_string(),
            n => format!("registered now, after {n} attempts"),
        };
        outln!("device:     {} ({how})", kept.device);
        outln!("flow:       {}", kept.flow);
        outln!("endpoint:   {}:{}", c.host, c.port);
        outln!("client id:  {}", c.client_id);
        if let Some(username) = &c.username {
            outln!("username:   {username}");
        }
        outln!("auth:       {}", c.auth.kind_name());
        for (k, v) in &c.attributes {
            outln!("{:<11} {v}", format!("{k}:"));
        }
        outln!("state:      {}", state_file.display());
    }
    Ok(ExitCode::SUCCESS)
}
