//! The bridge `gatehost run` starts: the embedded local broker ([`local`]) feeds the rule chain
//! ([`chain`]); what the rules send upstream is stored durably ([`queue`], [`commit`]) before
//! the publisher's acknowledgement and forwarded per device ([`forward`]); [`reload`] swaps in
//! changed plugins and config while messages flow; [`metrics`] is served on `/metrics`.

pub(crate) mod broker_state;
pub mod chain;
pub(crate) mod commit;
pub mod external;
pub mod forward;
pub(crate) mod isolation;
pub mod local;
pub(crate) mod log_once;
pub mod metrics;
pub mod problems;
pub mod queue;
pub mod reload;
pub mod replay;
pub(crate) mod simulate;

use crate::config::Config;
use crate::events::Recorder;
use crate::mqtt::server::MqttServer;
use crate::plugins::registry::PluginEnv;
use crate::plugins::registry::Registry;
use chain::{Current, RuleChain, Running};
use commit::Committer;
use forward::Forwarders;
use log_once::LogOnce;
use metrics::{Gauges, Metrics};
use queue::{now_ms, Queue, QueueError};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BridgeError {
    #[error("{}", .0.join("; "))]
    Config(Vec<String>),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        addr: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("local TLS: {0}")]
    Tls(String),
    /// `local.tls_cert`, `local.tls_key` or `local.client_ca` cannot be used.
    #[error("local TLS: {0}")]
    TlsFile(#[from] crate::pki::tls::FileError),
    #[error(transparent)]
    External(#[from] external::ExternalError),
    #[error(transparent)]
    Watch(#[from] reload::WatchError),
    #[error("cannot start the bridge's runtime: {0}")]
    Runtime(std::io::Error),
}

/// A running bridge. Dropping it (or [`Bridge::stop`]) stops it.
pub(crate) struct Bridge {
    runtime: Option<tokio::runtime::Runtime>,
    /// The local broker as a URL (`mqtt://127.0.0.1:1883`, or the external broker).
    pub local_url: String,
    /// Where `/metrics` is served, if it is.
    pub metrics_addr: Option<SocketAddr>,
    current: Current,
    metrics: Arc<Metrics>,
    queue: Arc<Queue>,
    forwarders: Arc<Forwarders>,
    _reloader: Option<reload::Reloader>,
    /// The embedded broker's retained messages and persistent sessions, saved at stop.
    broker_state: Option<broker_state::BrokerState>,
}

/// Builds of 2026-11-24 kept the queue in `<state>/queue.redb`, which this build does not read:
/// say so once at start, so messages left in it are not lost silently.
fn warn_of_a_legacy_queue(state_dir: &Path) {
    let legacy = state_dir.join("queue.redb");
    if legacy.exists() {
        tracing::warn!(
            file = %legacy.display(),
            "found a store-and-forward queue of an earlier gatehost build, which this one does not read: messages still in it are not forwarded (move the file away to silence this)"
        );
    }
}

impl Bridge {
    /// Load the plugins, open the queue, start the local broker, the device workers, the
    /// metrics endpoint and (with `config_path`) the reload watcher.
    pub fn start(config: Config, config_path: Option<&Path>) -> Result<Bridge, BridgeError> {
        let problems = problems::bridge_problems(&config);
        if !problems.is_empty() {
            return Err(BridgeError::Config(problems));
        }
        let registry = Registry::load(PluginEnv::of(&config, true));
        let (chain, problems) = RuleChain::build(&config, &registry, None);
        for p in &problems {
            tracing::error!("{p}");
        }
        for rule in &chain.rules {
            tracing::info!(rule = %rule.name, source = %rule.source, filters = ?rule.filters, "rule running");
        }
        let queue = Arc::new(Queue::open(
            &config.queue_path(),
            crate::bridge::queue::QueueLimits::from_config(&config.store),
        )?);
        warn_of_a_legacy_queue(&config.state_dir());
        let metrics = Arc::new(Metrics::default());
        let log = Arc::new(LogOnce::default());
        let config = Arc::new(config);
        let current = Current::new(Running {
            config: config.clone(),
            registry: Arc::new(registry),
            chain,
            generation: 0,
        });
        let forwarders = Arc::new(Forwarders::new(
            queue.clone(),
            current.clone(),
            metrics.clone(),
            log.clone(),
        ));
        let wake = forwarders.clone();
        let (committer, _commit_thread) = Committer::start(
            queue.clone(),
            crate::bridge::commit::SyncPacing::from_config(&config.store),
            metrics.clone(),
            log.clone(),
            Box::new(move |device| wake.wake(device)),
        );

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bridge")
            .enable_all()
            .build()
            .map_err(BridgeError::Runtime)?;
        let tls = local_tls(&config)?;
        let service = Arc::new(local::LocalService {
            current: current.clone(),
            committer,
            metrics: metrics.clone(),
            log: log.clone(),
            max_packet: config.local.max_packet_bytes(),
        });
        let mut broker_state = None;
        let local_url = match external::ExternalBroker::from_config(&config)? {
            Some(broker) => {
                let url = broker.url().clone();
                let tls = broker.tls();
                let _guard = runtime.enter();
                let client = broker.start(service.clone(), current.clone(), log.clone());
                let cloud = service.clone();
                forwarders.set_from_cloud(Box::new(move |device, message| {
                    cloud.cloud_message(device, message, &client)
                }));
                let credentials = config
                    .local
                    .username
                    .clone()
                    .map(|user| (user, config.local.password.clone().unwrap_or_default()));
                let target = simulate::Target::External {
                    url: url.clone(),
                    tls,
                    credentials,
                };
                simulate::start(&config.simulators, &Arc::new(target), &log);
                url.to_string()
            }
            None => {
                let recorder = Arc::new(Recorder::with_limit(100));
                let listen = config.local.listen.clone();
                let server = runtime
                    .block_on(MqttServer::start(&listen, tls, service.clone(), recorder))
                    .map_err(|source| BridgeError::Listen {
                        addr: listen.clone(),
                        what: "local.listen",
                        source,
                    })?;
                metrics.local_connected.store(true, Ordering::Relaxed);
                let addr = SocketAddr::new(
                    listen
                        .parse::<SocketAddr>()
                        .map(|a| a.ip())
                        .unwrap_or([127, 0, 0, 1].into()),
                    server.port,
                );
                // The server lives as long as the runtime, and its clients get the
                // cloud-to-device messages.
                let server = Arc::new(server);
                let target = simulate::Target::Embedded {
                    service: service.clone(),
                    server: server.clone(),
                };
                let _guard = runtime.enter();
                broker_state = Some(broker_state::BrokerState::start(
                    server.clone(),
                    &config.state_dir(),
                    log.clone(),
                ));
                forwarders.set_from_cloud(Box::new(move |device, message| {
                    service.cloud_message(device, message, server.as_ref())
                }));
                simulate::start(&config.simulators, &Arc::new(target), &log);
                format!("mqtt://{addr}")
            }
        };

        // Devices with messages from before a restart, and every listed device (onboarded
        // and connected up front).
        for device in queue.depths().keys() {
            forwarders.wake(device);
        }
        for device in &config.devices {
            forwarders.wake(&device.name);
        }

        let mut bridge = Bridge {
            runtime: None,
            local_url,
            metrics_addr: None,
            current: current.clone(),
            metrics: metrics.clone(),
            queue,
            forwarders,
            _reloader: None,
            broker_state,
        };
        if config.metrics.listen != "off" {
            let addr = config.metrics.listen.clone();
            let view = bridge.view();
            let bound = runtime
                .block_on(serve_metrics(&addr, view))
                .map_err(|source| BridgeError::Listen {
                    addr,
                    what: "metrics.listen",
                    source,
                })?;
            bridge.metrics_addr = Some(bound);
        }
        bridge.runtime = Some(runtime);
        if let Some(path) = config_path {
            let forwarders = bridge.forwarders.clone();
            let reloader = reload::Reloader::start(
                Some(path.to_path_buf()),
                current,
                metrics,
                Box::new(move |outcome| {
                    for p in &outcome.problems {
                        tracing::error!(generation = outcome.generation, "reload: {p}");
                    }
                    tracing::info!(
                        generation = outcome.generation,
                        "reload applied in {:.1} ms",
                        outcome.took.as_secs_f64() * 1000.0
                    );
                    // Devices added to the config get their sessions.
                    for device in forwarders.listed_devices() {
                        forwarders.wake(&device);
                    }
                    // What compiling the new plugins took is free again.
                    crate::memory::release_freed();
                }),
            )?;
            bridge._reloader = Some(reloader);
        }
        tracing::info!(
            local = %bridge.local_url,
            metrics = ?bridge.metrics_addr,
            queue = %bridge.queue.path().display(),
            queued = bridge.queue.depths().values().map(|d| d.messages).sum::<u64>(),
            "bridge running"
        );
        crate::memory::release_freed();
        Ok(bridge)
    }

    /// What `/metrics` and `/healthz` read.
    fn view(&self) -> View {
        View {
            current: self.current.clone(),
            metrics: self.metrics.clone(),
            queue: self.queue.clone(),
            forwarders: self.forwarders.clone(),
        }
    }

    /// Stop serving local clients and the device workers (each finishes its batch in flight).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Connected clients' persistent sessions are kept once their connections end (not
            // possible from inside another runtime: then only absent clients' are saved).
            if let Some(state) = &self.broker_state {
                if tokio::runtime::Handle::try_current().is_err() {
                    runtime.block_on(state.close_clients());
                }
            }
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        }
        self.forwarders.stop();
        if let Err(e) = self.queue.sync() {
            tracing::warn!("the queue could not be synced at stop (acknowledged messages may be sent again after the restart): {e}");
        }
        if let Some(state) = self.broker_state.take() {
            state.save();
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The rustls server config for local clients, when `[local]` asks for TLS.
fn local_tls(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, BridgeError> {
    let (Some(cert), Some(key)) = (&config.local.tls_cert, &config.local.tls_key) else {
        return Ok(None);
    };
    let cert = config.resolve(cert);
    let (chain, key_der) = crate::pki::tls::chain_and_key_files(&cert, &config.resolve(key))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| BridgeError::Tls(e.to_string()))?;
    let builder = match &config.local.client_ca {
        None => builder.with_no_client_auth(),
        Some(file) => {
            let path = config.resolve(file);
            let verifier =
                crate::pki::tls::ClientCertificates::issued_by_file(&path, provider.clone())?;
            builder.with_client_cert_verifier(Arc::new(verifier))
        }
    };
    let identity = crate::pki::tls::certified_key(chain, key_der, &provider).map_err(|why| {
        BridgeError::Tls(format!(
            "local.tls_cert {} cannot be used with local.tls_key {}: {why}",
            cert.display(),
            config.resolve(key).display()
        ))
    })?;
    let server =
        builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(identity)));
    Ok(Some(Arc::new(server)))
}

/// What the HTTP endpoint reads.
#[derive(Clone)]
struct View {
    current: Current,
    metrics: Arc<Metrics>,
    queue: Arc<Queue>,
    forwarders: Arc<Forwarders>,
}

impl View {
    fn render(&self) -> String {
        let now = now_ms();
        let depths = self.queue.depths();
        let device = |d: &String| vec![("device", d.clone())];
        let (connected, expiry) = self.forwarders.gauges();
        let gauges = Gauges {
            queue_messages: depths
                .iter()
                .map(|(d, depth)| (device(d), depth.messages as f64))
                .collect(),
            queue_bytes: self.queue.bytes() as f64,
            queue_oldest_age_seconds: depths
                .keys()
                .filter_map(|d| {
                    let at = self.queue.oldest_ms(d)?;
                    Some((device(d), now.saturating_sub(at) as f64 / 1000.0))
                })
                .collect(),
            upstream_connected: connected,
            credential_expiry_seconds: expiry,
            dead_letters_kept: self.queue.dead_letter_count() as f64,
            rules_loaded: self.current.get().chain.rules.len() as f64,
        };
        self.metrics.render(&gauges)
    }

    fn health(&self) -> (u16, String) {
        let running = self.current.get();
        let queued: u64 = self.queue.depths().values().map(|d| d.messages).sum();
        let body = serde_json::json!({
            "status": "ok",
            "generation": running.generation,
            "rules": running.chain.rules.len(),
            "local_connected": self.metrics.local_connected.load(Ordering::Relaxed),
            "upstream_connected": self.forwarders.all_connected(),
            "queued": queued,
        });
        (200, body.to_string())
    }
}

/// Serve `/metrics` and `/healthz` on `addr`; the address bound.
async fn serve_metrics(addr: &str, view: View) -> std::io::Result<SocketAddr> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Response, StatusCode};
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let view = view.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                    let view = view.clone();
                    async move {
                        let (status, kind, body) = match request.uri().path() {
                            "/metrics" => (
                                200,
                                "text/plain; version=0.0.4; charset=utf-8",
                                view.render(),
                            ),
                            "/healthz" => {
                                let (status, body) = view.health();
                                (status, "application/json", body)
                            }
                            other => (
                                404,
                                "text/plain",
                                format!("no {other} here: try /metrics or /healthz\n"),
                            ),
                        };
                        Response::builder()
                            .status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK))
                            .header(hyper::header::CONTENT_TYPE, kind)
                            .body(Full::new(Bytes::from(body)))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(tcp);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Ok(bound)
}
