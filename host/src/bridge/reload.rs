//! Hot reload: `notify` watches the plugin directories, the installed bundles
//! (`<state>/plugins`, whose symlinks `gatehost plugin install` swaps) and the config file. A
//! burst of changes is settled, then the config and every plugin are loaded again off the hot
//! path, the chain is rebuilt (a rule whose new version fails to load keeps its running one),
//! and the new snapshot replaces the old in one step. Messages already being translated finish
//! on the version they started with.

use super::chain::{Current, RuleChain, Running};
use super::metrics::Metrics;
use crate::config::Config;
use crate::plugins::registry::PluginEnv;
use crate::plugins::registry::Registry;
use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the files must be quiet before a reload (editors write in several steps).
const SETTLE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path} for changes: {source}")]
pub(crate) struct WatchError {
    path: PathBuf,
    source: notify::Error,
}

/// What a reload did.
#[derive(Debug)]
pub struct Reloaded {
    pub generation: u64,
    pub took: Duration,
    /// One sentence per rule or plugin that did not take the new version.
    pub problems: Vec<String>,
}

/// Keeps the watcher alive; dropping it stops watching.
pub(crate) struct Reloader {
    _watcher: notify::RecommendedWatcher,
}

impl Reloader {
    /// Watch what `config_path` (None: no config file) and its plugin directories name, and
    /// reload into `current` on every change; `after` is called with each reload's outcome.
    pub fn start(
        config_path: Option<PathBuf>,
        current: Current,
        metrics: Arc<Metrics>,
        after: Box<dyn Fn(&Reloaded) + Send>,
    ) -> Result<Reloader, WatchError> {
        let (tx, rx) = channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event {
                    if !matches!(event.kind, notify::EventKind::Access(_)) {
                        let _ = tx.send(event.paths);
                    }
                }
            })
            .map_err(|source| WatchError {
                path: PathBuf::new(),
                source,
            })?;
        let running = current.get();
        let watch = Watched::of(&running.config, config_path.as_deref());
        for dir in &watch.dirs {
            watcher
                .watch(dir, RecursiveMode::Recursive)
                .map_err(|source| WatchError {
                    path: dir.clone(),
                    source,
                })?;
        }
        // The config through its folder: editors replace a file by renaming another onto it.
        if let Some(folder) = watch.config.as_ref().and_then(|f| f.parent()) {
            let folder = if folder.as_os_str().is_empty() {
                Path::new(".")
            } else {
                folder
            };
            watcher
                .watch(folder, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError {
                    path: folder.to_path_buf(),
                    source,
                })?;
        }
        std::thread::Builder::new()
            .name("reload".into())
            .spawn(move || loop {
                let Ok(first) = rx.recv() else { return };
                let mut relevant = watch.concerns(&first);
                // Settle: wait until nothing changed for SETTLE.
                loop {
                    match rx.recv_timeout(SETTLE) {
                        Ok(paths) => relevant |= watch.concerns(&paths),
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                if relevant {
                    let outcome = reload(config_path.as_deref(), &current, &metrics);
                    after(&outcome);
                }
            })
            .map_err(|e| WatchError {
                path: PathBuf::new(),
                source: notify::Error::io(e),
            })?;
        Ok(Reloader { _watcher: watcher })
    }
}

/// What a bridge watches: its plugin directories, its installed bundles and its config file.
struct Watched {
    dirs: Vec<PathBuf>,
    config: Option<PathBuf>,
    /// Compiled plugins: written by loading, never a reason to reload.
    cache: PathBuf,
}

impl Watched {
    fn of(config: &Config, config_path: Option<&Path>) -> Watched {
        let mut dirs: Vec<PathBuf> = config
            .plugin_dirs
            .iter()
            .map(|d| config.resolve(d))
            .filter(|d| d.is_dir())
            .collect();
        let installed = config.state_dir().join("plugins");
        if std::fs::create_dir_all(&installed).is_ok() {
            dirs.push(installed);
        }
        // Absolute paths: notify reports them so.
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        Watched {
            dirs: dirs.iter().map(|d| absolute(d)).collect(),
            config: config_path.map(absolute),
            cache: absolute(&config.state_dir().join("cache")),
        }
    }

    fn concerns(&self, paths: &[PathBuf]) -> bool {
        paths.iter().any(|p| {
            !p.starts_with(&self.cache)
                && (self.config.as_deref() == Some(p.as_path())
                    || self.dirs.iter().any(|d| p.starts_with(d)))
        })
    }
}

/// Load the config and plugins again and swap them in; what happened.
pub fn reload(config_path: Option<&Path>, current: &Current, metrics: &Metrics) -> Reloaded {
    let started = Instant::now();
    let old = current.get();
    let mut problems = Vec::new();
    let config = match config_path.map(|p| Config::load(p, true)) {
        Some(Ok(config)) => Arc::new(config),
        Some(Err(e)) => {
            problems.push(format!("the changed config was not applied: {e}"));
            old.config.clone()
        }
        None => old.config.clone(),
    };
    let registry = Registry::load(PluginEnv::of(&config, true));
    problems.extend(registry.errors().iter().map(|e| e.to_string()));
    let (chain, chain_problems) = RuleChain::build(&config, &registry, Some(&old.chain));
    problems.extend(chain_problems);
    let generation = old.generation + 1;
    current.replace(Running {
        config,
        registry: Arc::new(registry),
        chain,
        generation,
    });
    metrics.reloads.fetch_add(1, Ordering::Relaxed);
    if !problems.is_empty() {
        metrics.reload_failures.fetch_add(1, Ordering::Relaxed);
    }
    Reloaded {
        generation,
        took: started.elapsed(),
        problems,
    }
}
