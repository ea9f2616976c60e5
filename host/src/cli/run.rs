//! `gatehost run`: the main job. Starts the configured sandbox (if any), then the bridge —
//! local broker, rule chain, store-and-forward queue, device sessions, metrics, hot reload —
//! and serves until SIGINT or SIGTERM.

use super::ConfigArg;
use crate::bridge::Bridge;
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
    // The config file is watched for changes when there is one.
    let config_path = args.config.config.clone().or_else(|| {
        let default = std::path::PathBuf::from(crate::config::DEFAULT_CONFIG);
        default.exists().then_some(default)
    });
    // The emulated providers first: devices onboard to them as soon as the bridge starts.
    let _sandbox = match &config.sandbox {
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
    let bridge =
        Bridge::start(config, config_path.as_deref()).context("the bridge did not start")?;
    eprintln!(
        "gatehost: local broker {}{}; Ctrl-C stops",
        bridge.local_url,
        bridge
            .metrics_addr
            .map(|a| format!(", metrics on http://{a}/metrics"))
            .unwrap_or_default()
    );
    wait_for_stop_signal()?;
    tracing::info!("stopping: the queue keeps what was not delivered");
    bridge.stop();
    Ok(ExitCode::SUCCESS)
}

/// Block until SIGINT (Ctrl-C) or SIGTERM.
fn wait_for_stop_signal() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = tokio::signal::ctrl_c() => r,
                _ = term.recv() => Ok(()),
            }
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c().await
    })?;
    Ok(())
}
