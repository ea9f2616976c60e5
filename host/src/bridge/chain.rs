//! The rule chain: every configured rule with its topic filters and the plugin (or built-in
//! template) that translates for it, built from one config + registry snapshot. A [`Running`]
//! snapshot is swapped as a whole on reload; a message being translated keeps the snapshot it
//! started with, so it is translated by exactly one version of each rule.

use crate::config::Config;
use crate::engine::RulePlugin;
use crate::mqtt::topic::filter_matches;
use crate::plugins::registry::{Registry, RegistryError};
use std::sync::{Arc, RwLock};

/// One rule of the chain.
#[derive(Clone)]
pub struct ChainRule {
    pub name: String,
    pub filters: Vec<String>,
    /// Filters of the cloud-to-device messages it receives.
    pub cloud_filters: Vec<String>,
    pub plugin: Arc<dyn RulePlugin>,
    /// `template`, or the plugin's name and version (`iothub-telemetry 0.1.0`), for logs.
    pub source: String,
    /// Whether its calls run off the broker's I/O threads (`bridge::isolation`); `None` for
    /// the template rule, which runs no plugin code and stays inline.
    pub isolation: Option<Arc<super::isolation::Isolation>>,
}

impl ChainRule {
    pub(crate) fn receives(&self, topic: &str) -> bool {
        self.filters.iter().any(|f| filter_matches(f, topic))
    }

    pub(crate) fn receives_from_cloud(&self, topic: &str) -> bool {
        self.cloud_filters.iter().any(|f| filter_matches(f, topic))
    }
}

#[derive(Clone, Default)]
pub struct RuleChain {
    pub rules: Vec<ChainRule>,
}

impl RuleChain {
    /// The chain `config` describes with the plugins of `registry`. A rule whose plugin or
    /// template is broken keeps its version from `previous` when there is one (and runs
    /// nothing otherwise); each such problem is returned as one sentence.
    pub fn build(
        config: &Config,
        registry: &Registry,
        previous: Option<&RuleChain>,
    ) -> (RuleChain, Vec<String>) {
        let mut rules = Vec::new();
        let mut problems = Vec::new();
        for rule in &config.rules {
            let old = previous.and_then(|p| p.rules.iter().find(|r| r.name == rule.name));
            let built: Result<(Arc<dyn RulePlugin>, String), String> =
                match (rule.template_rule(), &rule.rule) {
                    (Some(Ok(template)), _) => Ok((Arc::new(template), "template".to_string())),
                    (Some(Err(e)), _) => Err(e.to_string()),
                    (None, Some(name)) => match registry.rule(name) {
                        Ok(plugin) => {
                            let version = registry
                                .get(name)
                                .map(|p| p.info.manifest.version.clone())
                                .unwrap_or_default();
                            Ok((plugin, format!("{name} {version}")))
                        }
                        // A plugin that is gone stops its rules, even if it ran before.
                        Err(e @ RegistryError::Unknown { .. }) => {
                            problems.push(format!("rule '{}' stopped: {e}", rule.name));
                            continue;
                        }
                        Err(e) => Err(e.to_string()),
                    },
                    (None, None) => Err(format!(
                        "rule '{}' names neither a rule plugin nor a template",
                        rule.name
                    )),
                };
            match (built, old) {
                (Ok((plugin, source)), _) => rules.push(ChainRule {
                    name: rule.name.clone(),
                    filters: rule.filters(),
                    cloud_filters: rule.from_cloud.clone(),
                    isolation: (rule.template.is_none()).then(Default::default),
                    plugin,
                    source,
                }),
                (Err(e), Some(old)) => {
                    problems.push(format!(
                        "rule '{}' keeps running {}: {e}",
                        rule.name, old.source
                    ));
                    rules.push(ChainRule {
                        filters: rule.filters(),
                        cloud_filters: rule.from_cloud.clone(),
                        ..old.clone()
                    });
                }
                (Err(e), None) => {
                    problems.push(format!("rule '{}' is not running: {e}", rule.name))
                }
            }
        }
        (RuleChain { rules }, problems)
    }

    /// The rules that receive a message on `topic`, in config order: their `from` filters for
    /// a local message, their `from_cloud` filters for a cloud-to-device one.
    pub(crate) fn matching<'a>(
        &'a self,
        topic: &'a str,
        from_cloud: bool,
    ) -> impl Iterator<Item = &'a ChainRule> + 'a {
        self.rules.iter().filter(move |r| {
            if from_cloud {
                r.receives_from_cloud(topic)
            } else {
                r.receives(topic)
            }
        })
    }

    /// Every filter of every rule (what an external broker is subscribed to).
    pub(crate) fn filters(&self) -> Vec<String> {
        let mut all: Vec<String> = self.rules.iter().flat_map(|r| r.filters.clone()).collect();
        all.sort();
        all.dedup();
        all
    }
}

/// What the bridge runs with: the config, its plugins and the chain built from them.
pub struct Running {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub chain: RuleChain,
    /// Counts reloads: 0 for the configuration `gatehost run` started with.
    pub generation: u64,
}

/// The current [`Running`] snapshot, replaced in one step.
#[derive(Clone)]
pub struct Current(Arc<RwLock<Arc<Running>>>);

impl Current {
    pub fn new(running: Running) -> Current {
        Current(Arc::new(RwLock::new(Arc::new(running))))
    }

    pub fn get(&self) -> Arc<Running> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn replace(&self, running: Running) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(running);
    }
}
