//! `gatehost run`: the main job. This build validates the config, loads every plugin and starts
//! the configured sandbox in-process; the bridge (local broker, rule chain, upstream sessions) is
//! not part of it yet.

use super::{ConfigArg, EXIT_NOT_IMPLEMENTED};
use crate::plugins::registry::Registry;
use crate::sandbox::config::SandboxConfig;
use crate::sandbox::Sandbox;
use anyhow::Context;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let registry = Registry::load(config.plugin_env(true));
    let mut problems: Vec<String> = registry.errors().iter().map(|e| e.to_string()).collect();
    problems.extend(config.validate(&registry));
    for p in &problems {
        tracing::error!("{p}");
    }
    let names: Vec<String> = registry
        .plugins()
        .map(|p| p.info.manifest.name.clone())
        .collect();
    tracing::info!(plugins = %names.join(", "), devices = config.devices.len(), rules = config.rules.len(), "config loaded");
    let sandbox = match &config.sandbox {
        Some(path) => {
            let path = config.resolve(path);
            let sandbox_config = SandboxConfig::load(&path)?;
            let sandbox = Sandbox::start(&sandbox_config).context("the sandbox did not start")?;
            for line in super::sandbox::endpoint_lines(&sandbox, &sandbox_config) {
                tracing::info!("{line}");
            }
            Some(sandbox)
        }
        None => None,
    };
    eprintln!(
        "gatehost: the bridge (local broker, rule chain, upstream sessions) is not implemented in \
         this build yet; use `gatehost rule test` to run rules offline"
    );
    if let Some(sandbox) = sandbox {
        eprintln!("gatehost: serving the sandbox until Ctrl-C");
        sandbox.wait(None);
    }
    Ok(ExitCode::from(EXIT_NOT_IMPLEMENTED))
}
