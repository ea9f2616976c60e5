//! Simulated brownfield publishers (`[[simulators]]` in the config): messages published to the
//! local broker on a timer, so a demo or a new rule can be watched end to end without a device.
//! `{n}` in the payload counts messages, `{t}` is the Unix time.
//!
//! With the embedded broker a simulator publishes in-process: its message takes a local client's
//! way (the rules, the queue, the local subscribers) without a connection, so it works whatever
//! the listener asks of clients (TLS, client certificates). With an external broker it is an MQTT
//! client with gatehost's own credentials and TLS settings; a connection it cannot make is logged
//! (once a minute per simulator), never dropped silently.

use super::local::{LocalService, Origin};
use super::log_once::LogOnce;
use crate::config::{BrokerUrl, SimulatorConfig};
use crate::model::Message;
use crate::mqtt::server::MqttServer;
use std::sync::Arc;
use std::time::Duration;

/// Where simulators publish.
pub(crate) enum Target {
    /// In-process, into the embedded broker.
    Embedded {
        service: Arc<LocalService>,
        server: Arc<MqttServer>,
    },
    /// Over MQTT to an external broker.
    External {
        url: BrokerUrl,
        tls: Option<Arc<rustls::ClientConfig>>,
        credentials: Option<(String, String)>,
    },
}

/// Start every simulator on the current tokio runtime.
pub fn start(simulators: &[SimulatorConfig], target: &Arc<Target>, log: &Arc<LogOnce>) {
    for sim in simulators {
        let sim = sim.clone();
        let target = target.clone();
        let log = log.clone();
        tokio::spawn(async move {
            match &*target {
                Target::Embedded { service, server } => {
                    in_process(&sim, service, server, &log).await;
                }
                Target::External {
                    url,
                    tls,
                    credentials,
                } => over_mqtt(&sim, url, tls.clone(), credentials.clone(), &log).await,
            }
        });
    }
}

/// The `n`-th payload of `sim`.
fn payload(sim: &SimulatorConfig, n: u64) -> String {
    sim.payload
        .replace("{n}", &n.to_string())
        .replace("{t}", &crate::pki::crypto::now_unix().to_string())
}

fn ticks(sim: &SimulatorConfig) -> tokio::time::Interval {
    tokio::time::interval(Duration::from_millis(sim.every_ms.max(10)))
}

/// Publish into the embedded broker as a local client would: rules and queue first, then (once
/// stored) to the local subscribers.
async fn in_process(
    sim: &SimulatorConfig,
    service: &LocalService,
    server: &MqttServer,
    log: &LogOnce,
) {
    let mut tick = ticks(sim);
    for n in 1u64.. {
        tick.tick().await;
        let message = Message::new(sim.topic.clone(), payload(sim, n), sim.qos);
        let routed = service.route(message.clone(), Origin::Local);
        let from = format!("simulator '{}'", sim.name);
        service.publish_local(&routed.to_local, server, &from);
        let stored = match service.store(routed.batch) {
            Ok(None) => Ok(()),
            Ok(Some(settled)) => settled
                .await
                .unwrap_or_else(|_| Err("the queue closed".to_string())),
            // The queue is closed: gatehost is stopping.
            Err(_) => return,
        };
        match stored {
            Ok(()) => server.publish(&message.topic, &message.payload, message.qos),
            Err(why) => {
                log.warn(
                    &format!("simulator {}", sim.name),
                    &format!(
                        "simulator '{}': message {n} was not stored: {why}",
                        sim.name
                    ),
                );
            }
        }
    }
}

/// Publish to an external broker over MQTT; rumqttc reconnects on the next poll after an error.
async fn over_mqtt(
    sim: &SimulatorConfig,
    url: &BrokerUrl,
    tls: Option<Arc<rustls::ClientConfig>>,
    credentials: Option<(String, String)>,
    log: &Arc<LogOnce>,
) {
    let mut options = rumqttc::MqttOptions::new(
        format!("gatehost-sim-{}", sim.name),
        url.host.clone(),
        url.port,
    );
    options.set_keep_alive(Duration::from_secs(30));
    if let Some((user, password)) = credentials {
        options.set_credentials(user, password);
    }
    if let Some(config) = tls {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(config),
        ));
    }
    let (client, mut events) = rumqttc::AsyncClient::new(options, 16);
    let (name, url, log) = (sim.name.clone(), url.to_string(), log.clone());
    tokio::spawn(async move {
        loop {
            if let Err(e) = events.poll().await {
                log.warn(
                    &format!("simulator {name}"),
                    &format!("simulator '{name}' cannot reach the local broker {url}: {e}; trying again every second"),
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    let qos = if sim.qos == 0 {
        rumqttc::QoS::AtMostOnce
    } else {
        rumqttc::QoS::AtLeastOnce
    };
    let mut tick = ticks(sim);
    for n in 1u64.. {
        tick.tick().await;
        if client
            .publish(&sim.topic, qos, false, payload(sim, n))
            .await
            .is_err()
        {
            return;
        }
    }
}
