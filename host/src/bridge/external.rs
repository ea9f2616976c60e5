//! The local side on an external broker (`local.broker = "mqtt://..."`, or `mqtts://` with an
//! optional client certificate): gatehost keeps one MQTT 5 session there and subscribes to
//! every rule's filters (as `$share/<group>/<filter>` with `local.share_group`, so the
//! gatehosts of a group split the messages). The session is persistent and acknowledges by
//! hand: a message is acknowledged only once what the rules made of it is stored, so messages
//! that arrive while gatehost is down or crashed wait at the broker and come again.
//! Subscriptions follow reloads.

use super::chain::Current;
use super::local::{LocalService, Origin};
use super::log_once::LogOnce;
use crate::config::{BrokerUrl, Config};
use crate::model::Message;
use crate::retry::Backoff;
use rumqttc::v5::mqttbytes::v5::{
    Filter, Packet, Publish, RetainForwardRule, SubAck, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How often the subscriptions are compared with the running rule chain.
const FOLLOW_RELOADS: Duration = Duration::from_secs(1);
/// Requests (publishes, acknowledgements, subscriptions) queued ahead of the connection.
const REQUESTS: usize = 1024;

/// A message waiting for its acknowledgement, and what says when it is stored (`None`:
/// nothing to store).
type Pending = (Option<oneshot::Receiver<Result<(), String>>>, Publish);

/// Everything the external session needs, checked before the bridge starts.
pub(crate) struct ExternalBroker {
    url: BrokerUrl,
    options: MqttOptions,
    share_group: Option<String>,
    /// How the broker is verified, for `mqtts://`.
    tls: Option<Arc<rustls::ClientConfig>>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ExternalError {
    /// The CA file cannot be read or holds no usable CA (the sentence names the file).
    #[error("local.ca_file: {0}")]
    Ca(crate::pki::tls::FileError),
    /// The client certificate or key cannot be used.
    #[error("TLS to the local broker: {0}")]
    Identity(crate::pki::tls::FileError),
    #[error("TLS to the local broker: {0}")]
    Tls(String),
}

impl ExternalBroker {
    /// The session `config` asks for, when its local broker is an external one.
    pub(crate) fn from_config(config: &Config) -> Result<Option<ExternalBroker>, ExternalError> {
        let local = &config.local;
        let Ok(Some(url)) = local.external_broker() else {
            return Ok(None);
        };
        let client_id = local.client_id.clone().unwrap_or_else(|| "gatehost".into());
        let mut options = MqttOptions::new(client_id, url.host.clone(), url.port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_start(false);
        // The broker keeps the session (and the messages for it) as long as the queue keeps
        // messages: what gatehost would not forward any more need not wait for it.
        let keep = crate::bridge::queue::QueueLimits::from_config(&config.store)
            .max_age
            .as_secs()
            .min(u32::MAX as u64) as u32;
        options.set_session_expiry_interval(Some(keep));
        options.set_manual_acks(true);
        if let Some(user) = &local.username {
            options.set_credentials(user.clone(), local.password.clone().unwrap_or_default());
        }
        let tls = if url.tls {
            let tls = client_tls(config)?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
            Some(tls)
        } else {
            None
        };
        Ok(Some(ExternalBroker {
            url,
            options,
            share_group: local.share_group.clone(),
            tls,
        }))
    }

    pub fn url(&self) -> &BrokerUrl {
        &self.url
    }

    /// The TLS client config the session verifies the broker with (`None` for `mqtt://`).
    pub fn tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.clone()
    }

    /// Run the session on the current tokio runtime; the client publishes to the broker.
    pub fn start(
        self,
        service: Arc<LocalService>,
        current: Current,
        log: Arc<LogOnce>,
    ) -> AsyncClient {
        let (client, events) = AsyncClient::new(self.options.clone(), REQUESTS);
        tokio::spawn(run(self, client.clone(), events, service, current, log));
        client
    }
}

/// Verify the broker against `local.ca_file`, or the system roots.
fn client_tls(config: &Config) -> Result<Arc<rustls::ClientConfig>, ExternalError> {
    let ca_file = config.local.ca_file.as_ref().map(|f| config.resolve(f));
    let roots =
        crate::pki::tls::roots_from_file(ca_file.as_deref()).map_err(|why| match &ca_file {
            Some(_) => ExternalError::Ca(why),
            None => ExternalError::Tls(why.to_string()),
        })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ExternalError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let local = &config.local;
    let config = match (&local.client_cert, &local.client_key) {
        (Some(cert), Some(key)) => {
            let (cert, key) = (config.resolve(cert), config.resolve(key));
            let (chain, key_der) = crate::pki::tls::chain_and_key_files(&cert, &key)
                .map_err(ExternalError::Identity)?;
            // An expired certificate is said at start, not found as an anonymous refusal.
            if let Some(leaf) = chain.first() {
                crate::pki::x509::check_validity(
                    leaf,
                    crate::pki::crypto::now_unix() as i64,
                    &cert.display().to_string(),
                )
                .map_err(|e| ExternalError::Tls(e.message))?;
            }
            let identity =
                crate::pki::tls::certified_key(chain, key_der, &provider).map_err(|why| {
                    let why = match why {
                        crate::pki::tls::IdentityError::KeyMismatch => {
                            "the key is not the certificate's".to_string()
                        }
                        other => other.to_string(),
                    };
                    ExternalError::Tls(format!(
                        "local.client_cert {} cannot be used with local.client_key {}: {why}",
                        cert.display(),
                        key.display()
                    ))
                })?;
            builder
                .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(identity)))
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The filters the running chain receives, as this session subscribes to them.
fn wanted(current: &Current, share_group: Option<&str>) -> BTreeSet<String> {
    current
        .get()
        .chain
        .filters()
        .into_iter()
        .map(|f| match share_group {
            Some(group) => format!("$share/{group}/{f}"),
            None => f,
        })
        .collect()
}

impl super::local::LocalOut for AsyncClient {
    fn publish(&self, m: &Message) -> Result<(), String> {
        let qos = if m.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        self.try_publish(m.topic.clone(), qos, false, m.payload.clone())
            .map_err(|e| e.to_string())
    }
}

async fn run(
    broker: ExternalBroker,
    client: AsyncClient,
    mut events: rumqttc::v5::EventLoop,
    service: Arc<LocalService>,
    current: Current,
    log: Arc<LogOnce>,
) {
    let ExternalBroker {
        url, share_group, ..
    } = broker;
    let (acks, ack_queue) = mpsc::unbounded_channel();
    tokio::spawn(acknowledge_in_order(
        client.clone(),
        ack_queue,
        log.clone(),
        url.clone(),
    ));
    let mut subscriptions = Subscriptions::default();
    let mut follow = tokio::time::interval(FOLLOW_RELOADS);
    let mut backoff = Backoff::default();
    let mut connected = false;
    loop {
        tokio::select! {
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Backoff::default();
                    connected = true;
                    service.metrics.local_connected.store(true, Ordering::Relaxed);
                    tracing::info!(broker = %url, "connected to the local broker");
                    // Subscribe again on every connection: the broker may have lost the session.
                    subscriptions = Subscriptions::default();
                    subscriptions.follow(&client, &current, share_group.as_deref(), &log);
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    take(&service, &client, &acks, publish, &log);
                }
                Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => subscriptions.sent(pkid),
                Ok(Event::Incoming(Packet::SubAck(ack))) => subscriptions.acknowledged(&ack, &url, &log),
                Ok(_) => {}
                Err(e) => {
                    connected = false;
                    subscriptions.connection_lost();
                    service.metrics.local_connected.store(false, Ordering::Relaxed);
                    let why = crate::mqtt::client::v5_error(&url.to_string(), e).message;
                    log.warn(
                        "local broker",
                        &format!("the local broker {url} is not reachable: {why}; trying again"),
                    );
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            },
            // Reloads change the filters; while disconnected, the next CONNACK subscribes.
            _ = follow.tick(), if connected => {
                subscriptions.follow(&client, &current, share_group.as_deref(), &log);
            }
        }
    }
}

/// The session's subscriptions: what was asked for, and which SUBSCRIBE (by packet id) carries
/// which filter until the broker answers it.
#[derive(Default)]
struct Subscriptions {
    /// The filters subscribed to (asked for; the broker's answer is logged when it comes).
    subscribed: BTreeSet<String>,
    /// Filters whose SUBSCRIBE has not gone out yet, in the order they were asked for.
    unsent: VecDeque<String>,
    /// SUBSCRIBEs out, waiting for their SUBACK.
    unanswered: HashMap<u16, String>,
}

impl Subscriptions {
    /// Subscribe to filters the chain gained, unsubscribe from those it lost.
    fn follow(
        &mut self,
        client: &AsyncClient,
        current: &Current,
        share_group: Option<&str>,
        log: &LogOnce,
    ) {
        let wanted = wanted(current, share_group);
        for filter in wanted.difference(&self.subscribed) {
            let mut f = Filter::new(filter.clone(), QoS::AtLeastOnce);
            // What gatehost publishes back to the local broker is not for itself (MQTT 5
            // forbids no-local on shared subscriptions).
            f.nolocal = share_group.is_none();
            f.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
            if let Err(e) = client.try_subscribe_many([f]) {
                log.warn(
                    "local subscribe",
                    &format!("cannot subscribe to '{filter}': {e}"),
                );
                return;
            }
            self.unsent.push_back(filter.clone());
        }
        for filter in self.subscribed.difference(&wanted) {
            if client.try_unsubscribe(filter.clone()).is_err() {
                return;
            }
            tracing::info!(filter, "unsubscribed on the local broker");
        }
        self.subscribed = wanted;
    }

    /// A SUBSCRIBE went out with `pkid` (they go out in the order they were asked for).
    fn sent(&mut self, pkid: u16) {
        if let Some(filter) = self.unsent.pop_front() {
            self.unanswered.insert(pkid, filter);
        }
    }

    fn acknowledged(&mut self, ack: &SubAck, url: &BrokerUrl, log: &LogOnce) {
        let filter = self.unanswered.remove(&ack.pkid).unwrap_or_default();
        match ack.return_codes.first() {
            Some(SubscribeReasonCode::Success(_)) | None => {
                tracing::info!(filter, "subscribed on the local broker");
            }
            Some(code) => {
                log.warn(
                    &format!("local subscribe {filter}"),
                    &format!("{url} refused the subscription to '{filter}': {code:?}"),
                );
            }
        }
    }

    /// Nothing in flight survives the connection; the next CONNACK subscribes afresh.
    fn connection_lost(&mut self) {
        self.unsent.clear();
        self.unanswered.clear();
    }
}

/// Route one message from the local broker; its acknowledgement waits for the commit.
fn take(
    service: &LocalService,
    client: &AsyncClient,
    acks: &mpsc::UnboundedSender<Pending>,
    publish: Publish,
    log: &LogOnce,
) {
    let routed = service.route(crate::mqtt::client::v5_message(&publish), Origin::Local);
    service.publish_local(&routed.to_local, client, "a local client");
    match service.store(routed.batch) {
        Ok(settled) => {
            let _ = acks.send((settled, publish));
        }
        // gatehost is stopping: not acknowledged, the broker sends it again.
        Err(why) => {
            log.warn("local store", &why);
        }
    }
}

/// Acknowledge messages in the order they came, each once it is stored. One that could not be
/// stored is not acknowledged: the connection is dropped so the broker sends it again.
async fn acknowledge_in_order(
    client: AsyncClient,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    log: Arc<LogOnce>,
    url: BrokerUrl,
) {
    while let Some((settled, publish)) = queue.recv().await {
        let stored = match settled {
            None => Ok(()),
            Some(rx) => rx.await.unwrap_or_else(|_| Err("the queue closed".into())),
        };
        match stored {
            Ok(()) => {
                if client.ack(&publish).await.is_err() {
                    return;
                }
            }
            Err(why) => {
                log.warn(
                    "local store",
                    &format!("{why}; reconnecting to {url} so it sends the message again"),
                );
                let _ = client.try_disconnect();
            }
        }
    }
}
