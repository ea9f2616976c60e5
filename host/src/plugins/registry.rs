//! The registry of loaded plugins: discovers and loads every plugin in the configured
//! directories, keeps the ones that load, and records for each one that does not why not.

use super::discovery::{discover, discover_one, Discovered, DiscoveryError, EngineKind};
use super::manifest::PluginKind;
use crate::caps::{kv::KvRegistry, CapContext, GatewayPermissions};
use crate::config::{Config, DeviceConfig};
use crate::engine::limits::{LimitOverrides, Limits};
use crate::engine::rhai::{RhaiFlow, RhaiRule};
use crate::engine::wasm::WasmRuntime;
use crate::engine::{FlowPlugin, LoadError, RulePlugin};
use crate::plugins::bundle::store::Site;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Where plugins come from and what they may use.
#[derive(Debug, Clone)]
pub struct PluginEnv {
    pub dirs: Vec<PathBuf>,
    pub state_dir: PathBuf,
    /// Keep compiled WASM in `<state>/cache/wasm` and kv data in `<state>/kv`.
    pub persistent: bool,
    pub rule_limits: LimitOverrides,
    pub flow_limits: LimitOverrides,
    /// The config's ceilings for single plugins, by name (`[limits.plugins.<name>]`).
    pub plugin_limits: BTreeMap<String, LimitOverrides>,
    /// What one kv namespace may hold.
    pub kv_limits: crate::caps::kv::KvLimits,
    /// The gateway config's folder: relative file paths and roots of plugins start there
    /// (empty: the working directory).
    pub base_dir: PathBuf,
    /// The largest packet the local broker takes: Rhai's string and blob limits default to
    /// twice this, so every payload it accepts passes through a rule.
    pub max_payload_bytes: usize,
    /// The gateway config's narrowing of plugin permissions, by plugin name.
    pub permissions: BTreeMap<String, GatewayPermissions>,
    /// Skip TLS server verification for plugins loaded with this environment (a device's
    /// `insecure_skip_verify`); logged on every connect.
    pub insecure_skip_verify: bool,
    /// Plugins installed from bundles (checked against their bundles and the trust store at
    /// every load), or why the trust store could not be read.
    pub installed: Option<Result<Site, String>>,
}

impl PluginEnv {
    /// The plugin directories (resolved) and the installed bundles (`<state>/plugins`).
    pub fn of(config: &Config, persistent: bool) -> PluginEnv {
        let dirs: Vec<PathBuf> = config
            .plugin_dirs
            .iter()
            .map(|d| config.resolve(d))
            .collect();
        let permissions = config
            .permissions
            .iter()
            .map(|(name, p)| {
                let roots = p.file_roots.as_ref().map(|roots| {
                    roots
                        .iter()
                        .map(|r| config.resolve(Path::new(r)).display().to_string())
                        .collect()
                });
                let narrowed = GatewayPermissions {
                    endpoints: p.endpoints.clone(),
                    file_roots: roots,
                    add_endpoints: p.add_endpoints.clone(),
                };
                (name.clone(), narrowed)
            })
            .collect();
        PluginEnv {
            dirs,
            state_dir: config.state_dir(),
            persistent,
            rule_limits: config.limits.rule.clone(),
            flow_limits: config.limits.flow.clone(),
            plugin_limits: config.limits.plugins.clone(),
            kv_limits: config.limits.kv.limits(),
            base_dir: config.base_dir.clone(),
            max_payload_bytes: config.local.max_packet_bytes(),
            permissions,
            insecure_skip_verify: false,
            installed: Some(Site::for_config(config).map_err(|e| e.to_string())),
        }
    }

    /// The environment a device's flow runs in: the plugin environment plus the device's own
    /// TLS setting.
    pub fn for_device(config: &Config, device: &DeviceConfig, persistent: bool) -> PluginEnv {
        PluginEnv {
            insecure_skip_verify: device.insecure_skip_verify,
            ..PluginEnv::of(config, persistent)
        }
    }

    /// Plugins in `dirs`, nothing persisted, no gateway narrowing.
    pub fn ephemeral(dirs: Vec<PathBuf>) -> PluginEnv {
        PluginEnv {
            dirs,
            state_dir: PathBuf::new(),
            persistent: false,
            rule_limits: LimitOverrides::default(),
            flow_limits: LimitOverrides::default(),
            plugin_limits: BTreeMap::new(),
            kv_limits: crate::caps::kv::KvLimits::default(),
            max_payload_bytes: crate::config::DEFAULT_MAX_PACKET,
            base_dir: PathBuf::new(),
            permissions: BTreeMap::new(),
            insecure_skip_verify: false,
            installed: None,
        }
    }

    /// Everything discoverable: the plugin directories and the installed bundles. A name
    /// defined in two places is an error, as within the directories.
    pub(crate) fn discover(&self) -> (Vec<Discovered>, Vec<DiscoveryError>) {
        let (mut found, mut errors) = discover(&self.dirs);
        let site = match &self.installed {
            None => return (found, errors),
            Some(Err(e)) => {
                errors.push(DiscoveryError::Installed(format!(
                    "installed plugins were not loaded: {e}"
                )));
                return (found, errors);
            }
            Some(Ok(site)) => site,
        };
        let names = site.names().unwrap_or_else(|e| {
            errors.push(DiscoveryError::Installed(e.to_string()));
            Vec::new()
        });
        for name in names {
            let info = site
                .installed(&name)
                .map_err(|e| e.to_string())
                .and_then(|i| discover_one(&i.manifest_path).map_err(|e| e.to_string()));
            match info {
                Ok(info) => match found.iter().find(|f| f.manifest.name == info.manifest.name) {
                    Some(first) => errors.push(DiscoveryError::Duplicate {
                        name: info.manifest.name.clone(),
                        first: first.manifest_path.clone(),
                        second: info.manifest_path,
                    }),
                    None => found.push(info),
                },
                Err(e) => errors.push(DiscoveryError::Installed(e)),
            }
        }
        (found, errors)
    }
}

#[derive(Clone)]
pub enum PluginHandle {
    Rule(Arc<dyn RulePlugin>),
    Flow(Arc<dyn FlowPlugin>),
}

#[derive(Clone)]
pub struct LoadedPlugin {
    pub info: Discovered,
    pub handle: PluginHandle,
    /// What the plugin may use; the host opens a flow's connections with it too, so they
    /// stay within the flow's endpoints and file roots.
    pub caps: CapContext,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("plugin '{name}': {source}")]
    Load { name: String, source: LoadError },
    #[error("no plugin named '{name}'{hint}")]
    Unknown { name: String, hint: String },
    #[error("plugin '{name}' is a {actual}, not a {expected}")]
    WrongKind {
        name: String,
        actual: PluginKind,
        expected: PluginKind,
    },
    #[error("plugin '{name}' failed to load: {reason}")]
    Broken { name: String, reason: String },
    #[error("plugin '{name}' may not use kv namespace '{namespace}': {why}")]
    Namespace {
        name: String,
        namespace: String,
        why: String,
    },
}

/// A kv namespace belongs to one plugin: its own name's, or one it declares that no other plugin
/// uses, or one that plugins of the same publisher all declare to share. (A namespace holds
/// what a plugin keeps, device keys among it: another plugin naming it would read them.)
fn check_namespace(info: &Discovered, all: &[Discovered]) -> Result<(), RegistryError> {
    let m = &info.manifest;
    let Some(namespace) = m.permissions.kv_namespace.as_deref() else {
        return Ok(());
    };
    if namespace == m.name {
        return Ok(());
    }
    let refuse = |why: String| {
        Err(RegistryError::Namespace {
            name: m.name.clone(),
            namespace: namespace.to_string(),
            why,
        })
    };
    let others = all.iter().filter(|o| o.manifest.name != m.name);
    for other in others {
        let o = &other.manifest;
        let declared = o.permissions.kv_namespace.as_deref();
        let uses = declared.unwrap_or(&o.name) == namespace;
        if !uses {
            continue;
        }
        if declared != Some(namespace) {
            return refuse(format!("it is plugin '{}''s own", o.name));
        }
        match (&m.publisher, &o.publisher) {
            (Some(a), Some(b)) if a == b => {}
            _ => {
                return refuse(format!(
                "plugin '{}' uses it too, and only plugins of one publisher may share a namespace",
                o.name
            ))
            }
        }
    }
    Ok(())
}

/// Loads plugins; shares one WASM runtime and one kv registry between them.
pub(crate) struct Loader {
    env: PluginEnv,
    kv: KvRegistry,
    wasm: OnceLock<Result<Arc<WasmRuntime>, String>>,
}

impl Loader {
    pub fn new(env: PluginEnv) -> Self {
        let kv = if env.persistent {
            KvRegistry::persistent(&env.state_dir).with_limits(env.kv_limits)
        } else {
            KvRegistry::in_memory().with_limits(env.kv_limits)
        };
        Loader {
            env,
            kv,
            wasm: OnceLock::new(),
        }
    }

    fn wasm(&self) -> Result<Arc<WasmRuntime>, LoadError> {
        let cache = self
            .env
            .persistent
            .then(|| self.env.state_dir.join("cache").join("wasm"));
        self.wasm
            .get_or_init(|| WasmRuntime::new(cache).map_err(|e| e.to_string()))
            .clone()
            .map_err(LoadError::Engine)
    }

    /// Load one discovered plugin with its limits and capabilities.
    pub fn load(&self, info: &Discovered) -> Result<LoadedPlugin, LoadError> {
        let m = &info.manifest;
        let (base, config) = match m.kind {
            PluginKind::Rule => (Limits::rule(), &self.env.rule_limits),
            PluginKind::Flow => (Limits::flow(), &self.env.flow_limits),
        };
        // The config's limits are ceilings; the manifest may only stay below them.
        let mut ceiling = base
            .for_payloads(self.env.max_payload_bytes)
            .with_overrides(config);
        if let Some(own) = self.env.plugin_limits.get(&m.name) {
            ceiling = ceiling.with_overrides(own);
        }
        let (limits, capped) = ceiling.within(&m.limits);
        if !capped.is_empty() {
            tracing::warn!(
                plugin = %m.name,
                "the manifest asks for {}; the config's limits apply ([limits.plugins.{}] raises them)",
                capped.join(", "),
                m.name
            );
        }
        let mut caps = CapContext::new(
            &m.name,
            m.permissions.clone(),
            self.env.state_dir.clone(),
            &self.kv,
        );
        caps.gateway = self
            .env
            .permissions
            .get(&m.name)
            .cloned()
            .unwrap_or_default();
        caps.insecure_skip_verify = self.env.insecure_skip_verify;
        caps.mqtt = crate::caps::mqtt::SessionSlots::new(limits.max_sessions);
        caps.base_dir = self.env.base_dir.clone();
        let path = &info.entry;
        let handle = match (info.engine, m.kind) {
            (EngineKind::Rhai, PluginKind::Rule) => {
                PluginHandle::Rule(Arc::new(RhaiRule::load(path, &caps, limits)?))
            }
            (EngineKind::Rhai, PluginKind::Flow) => {
                PluginHandle::Flow(Arc::new(RhaiFlow::load(path, &caps, limits)?))
            }
            (EngineKind::Wasm, PluginKind::Rule) => PluginHandle::Rule(Arc::new(
                self.wasm()?.load_rule(path, caps.clone(), limits)?,
            )),
            (EngineKind::Wasm, PluginKind::Flow) => PluginHandle::Flow(Arc::new(
                self.wasm()?.load_flow(path, caps.clone(), limits)?,
            )),
        };
        Ok(LoadedPlugin {
            info: info.clone(),
            handle,
            caps,
        })
    }
}

/// Every plugin found in the plugin directories: loaded, or with the reason it is not.
pub struct Registry {
    loaded: BTreeMap<String, LoadedPlugin>,
    failed: BTreeMap<String, String>,
    errors: Vec<RegistryError>,
}

impl Registry {
    /// Discover and load everything in `env.dirs`.
    pub fn load(env: PluginEnv) -> Registry {
        let loader = Loader::new(env.clone());
        let (found, discovery_errors) = env.discover();
        let mut registry = Registry {
            loaded: BTreeMap::new(),
            failed: BTreeMap::new(),
            errors: discovery_errors.into_iter().map(Into::into).collect(),
        };
        for info in &found {
            if let Err(e) = check_namespace(info, &found) {
                tracing::error!("{e}");
                registry
                    .failed
                    .insert(info.manifest.name.clone(), e.to_string());
                registry.errors.push(e);
                continue;
            }
            registry.add(&loader, info.clone());
        }
        registry
    }

    /// Load the single plugin described by a manifest, `.rhai` or `.wasm` path.
    pub fn load_path(env: PluginEnv, path: &Path) -> Result<LoadedPlugin, RegistryError> {
        let manifest_path = if path.extension().is_some_and(|e| e == "toml") {
            path.to_path_buf()
        } else {
            path.with_extension("toml")
        };
        if !manifest_path.exists() {
            return Err(DiscoveryError::NoManifest {
                path: path.to_path_buf(),
                expected: manifest_path,
            }
            .into());
        }
        let info = discover_one(&manifest_path).map_err(DiscoveryError::from)?;
        check_namespace(&info, &env.discover().0)?;
        Loader::new(env)
            .load(&info)
            .map_err(|source| RegistryError::Load {
                name: info.manifest.name.clone(),
                source,
            })
    }

    /// Discover the plugin directories but load only the plugin called `name` (what
    /// `gatehost rule test` needs: other plugins' problems do not get in the way).
    pub fn load_named(env: PluginEnv, name: &str) -> Result<LoadedPlugin, RegistryError> {
        let (found, errors) = env.discover();
        let names: Vec<String> = found.iter().map(|p| p.manifest.name.clone()).collect();
        let Some(info) = found.iter().find(|p| p.manifest.name == name).cloned() else {
            // A broken manifest of that name says more than "unknown".
            if let Some(e) = errors.into_iter().find(|e| e.to_string().contains(name)) {
                return Err(e.into());
            }
            return Err(RegistryError::Unknown {
                name: name.to_string(),
                hint: available_hint(names.iter().map(String::as_str)),
            });
        };
        check_namespace(&info, &found)?;
        Loader::new(env)
            .load(&info)
            .map_err(|source| RegistryError::Load {
                name: name.to_string(),
                source,
            })
    }

    fn add(&mut self, loader: &Loader, info: Discovered) {
        let name = info.manifest.name.clone();
        match loader.load(&info) {
            Ok(loaded) => {
                tracing::debug!(plugin = %name, engine = %info.engine, "plugin loaded");
                self.loaded.insert(name, loaded);
            }
            Err(source) => {
                let err = RegistryError::Load {
                    name: name.clone(),
                    source,
                };
                tracing::error!("{err}");
                self.failed.insert(name, err.to_string());
                self.errors.push(err);
            }
        }
    }

    pub fn plugins(&self) -> impl Iterator<Item = &LoadedPlugin> {
        self.loaded.values()
    }

    /// What could not be discovered or loaded.
    pub fn errors(&self) -> &[RegistryError] {
        &self.errors
    }

    pub fn get(&self, name: &str) -> Result<&LoadedPlugin, RegistryError> {
        if let Some(p) = self.loaded.get(name) {
            return Ok(p);
        }
        if let Some(reason) = self.failed.get(name) {
            return Err(RegistryError::Broken {
                name: name.to_string(),
                reason: reason.clone(),
            });
        }
        Err(RegistryError::Unknown {
            name: name.to_string(),
            hint: available_hint(self.loaded.keys().map(String::as_str)),
        })
    }

    pub fn rule(&self, name: &str) -> Result<Arc<dyn RulePlugin>, RegistryError> {
        match &self.get(name)?.handle {
            PluginHandle::Rule(rule) => Ok(rule.clone()),
            PluginHandle::Flow(_) => Err(RegistryError::WrongKind {
                name: name.to_string(),
                actual: PluginKind::Flow,
                expected: PluginKind::Rule,
            }),
        }
    }

    pub fn flow(&self, name: &str) -> Result<Arc<dyn FlowPlugin>, RegistryError> {
        match &self.get(name)?.handle {
            PluginHandle::Flow(flow) => Ok(flow.clone()),
            PluginHandle::Rule(_) => Err(RegistryError::WrongKind {
                name: name.to_string(),
                actual: PluginKind::Rule,
                expected: PluginKind::Flow,
            }),
        }
    }
}

fn available_hint<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        " (no plugins were found in the plugin directories)".to_string()
    } else {
        format!(" (available: {})", names.join(", "))
    }
}
