//! `gatehost rule test`: run a rule offline and print what it produces as JSON lines.

use super::{print_json, ConfigArg};
use crate::engine::RulePlugin;
use crate::model::{Message, Pair};
use crate::plugins::registry::PluginEnv;
use crate::plugins::registry::{PluginHandle, Registry};
use anyhow::{bail, Context};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Run a rule on one message and print the resulting messages as JSON lines.
    #[command(after_help = "Examples:\n  \
        gatehost rule test iothub-telemetry --topic plant1/press7/temperature --payload '{\"value\":21.5}'\n  \
        gatehost rule test scripts/rules/iothub-telemetry.rhai --topic a/b/c --payload-file reading.bin --qos 1")]
    Test(TestArgs),
}

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// A rule's name in the config (template or plugin rule), a rule plugin's name, or the
    /// path of its manifest, .rhai or .wasm file.
    pub rule: String,
    /// Topic of the incoming message.
    #[arg(long)]
    pub topic: String,
    /// Payload as text.
    #[arg(long, conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// Payload read from a file (binary is fine).
    #[arg(long, value_name = "FILE")]
    pub payload_file: Option<PathBuf>,
    /// QoS of the incoming message (0, 1 or 2).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Mark the incoming message as retained.
    #[arg(long)]
    pub retain: bool,
    /// MQTT 5 user property KEY=VALUE (repeatable).
    #[arg(long = "property", value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
    #[command(flatten)]
    pub config: ConfigArg,
}

pub fn run(cmd: RuleCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RuleCommand::Test(args) => test(args),
    }
}

fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    let payload = match (&args.payload, &args.payload_file) {
        (Some(text), None) => text.clone().into_bytes(),
        (None, Some(file)) => std::fs::read(file)
            .with_context(|| format!("cannot read payload file {}", file.display()))?,
        (None, None) => Vec::new(),
        (Some(_), Some(_)) => unreachable!("clap rejects --payload with --payload-file"),
    };
    let properties = args
        .properties
        .iter()
        .map(|p| parse_property(p))
        .collect::<anyhow::Result<Vec<Pair>>>()?;
    let msg = Message {
        topic: args.topic.clone(),
        payload,
        qos: args.qos,
        retain: args.retain,
        properties,
    };

    let config = args.config.load()?;
    let (name, rule) = resolve(&config, &args.rule)?;
    match rule.translate(&msg) {
        Ok(out) => {
            for o in &out {
                print_json(o);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => bail!(
            "rule '{name}' failed on topic '{}': {} ({})",
            msg.topic,
            e.message,
            e.kind
        ),
    }
}

/// The rule to run: a rule of the config by its name (a template rule, or the plugin it
/// names), or a rule plugin by name or path.
fn resolve(
    config: &crate::config::Config,
    rule: &str,
) -> anyhow::Result<(String, Arc<dyn RulePlugin>)> {
    let env = PluginEnv::of(config, false);
    if let Some(configured) = config.rules.iter().find(|r| r.name == rule) {
        if let Some(template) = configured.template_rule() {
            let template = template.map_err(|e| anyhow::anyhow!(e))?;
            return Ok((rule.to_string(), Arc::new(template)));
        }
        if let Some(plugin) = &configured.rule {
            let loaded = Registry::load_named(env, plugin)
                .with_context(|| format!("rule '{rule}' of the config runs plugin '{plugin}'"))?;
            let PluginHandle::Rule(handle) = loaded.handle else {
                bail!("rule '{rule}' of the config names plugin '{plugin}', which is a flow");
            };
            return Ok((rule.to_string(), handle));
        }
    }
    let plugin = if looks_like_path(rule) {
        Registry::load_path(env, Path::new(rule))?
    } else {
        Registry::load_named(env, rule)?
    };
    let name = plugin.info.manifest.name.clone();
    let PluginHandle::Rule(rule) = plugin.handle else {
        bail!("plugin '{name}' is a flow, not a rule");
    };
    Ok((name, rule))
}

fn looks_like_path(rule: &str) -> bool {
    rule.contains('/')
        || [".rhai", ".wasm", ".toml"]
            .iter()
            .any(|e| rule.ends_with(e))
}

fn parse_property(p: &str) -> anyhow::Result<Pair> {
    match p.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => bail!("--property '{p}' must be KEY=VALUE"),
    }
}
