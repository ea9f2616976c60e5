//! `gatehost check`: validate the config, every plugin and the installed bundles against
//! `gatehost.lock`; exit 1 when anything is wrong.

use super::{print_json, ConfigArg};
use crate::plugins::registry::PluginEnv;
use crate::plugins::registry::Registry;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Report {
    ok: bool,
    plugins: Vec<String>,
    devices: usize,
    rules: usize,
    problems: Vec<String>,
    /// What is not wrong but should be looked at (loose file modes in the state dir).
    warnings: Vec<String>,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let registry = Registry::load(PluginEnv::of(&config, true));
    let mut problems: Vec<String> = registry.errors().iter().map(|e| e.to_string()).collect();
    problems.extend(crate::bridge::problems::config_problems(&config, &registry));
    // Installed plugins that fail their checks, and a trust store that cannot be read, are
    // among the registry's errors already; what is left is the lock file.
    if let Ok(site) = crate::plugins::bundle::store::Site::for_config(&config) {
        match site.lock_differences() {
            Ok(differences) => problems.extend(differences),
            Err(e) => problems.push(e.to_string()),
        }
    }
    let report = Report {
        ok: problems.is_empty(),
        plugins: registry
            .plugins()
            .map(|p| p.info.manifest.name.clone())
            .collect(),
        devices: config.devices.len(),
        rules: config.rules.len(),
        problems,
        warnings: crate::private_files::loose_modes(&config.state_dir()),
    };
    if !args.json {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
    }
    if args.json {
        print_json(&report);
    } else if report.ok {
        outln!(
            "ok: {} plugins ({}), {} devices, {} rules",
            report.plugins.len(),
            report.plugins.join(", "),
            report.devices,
            report.rules
        );
    } else {
        for p in &report.problems {
            eprintln!("error: {p}");
        }
        eprintln!("gatehost: check found {} problem(s)", report.problems.len());
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
