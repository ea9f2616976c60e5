//! Simulated brownfield publishers (`[[simulators]]` in the config): MQTT clients that publish
//! to the local broker on a timer, so a demo or a new rule can be watched end to end without a
//! device. `{n}` in the payload counts messages, `{t}` is the Unix time.

use crate::config::SimulatorConfig;
use std::sync::Arc;
use std::time::Duration;

/// Start every simulator on the current tokio runtime, publishing to the local broker at
/// `host`:`port` (over TLS with `tls`).
pub fn start(
    simulators: &[SimulatorConfig],
    host: &str,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
) {
    for sim in simulators.iter().cloned() {
        let host = host.to_string();
        let tls = tls.clone();
        tokio::spawn(async move {
            let mut options =
                rumqttc::MqttOptions::new(format!("gatehost-sim-{}", sim.name), host, port);
            options.set_keep_alive(Duration::from_secs(30));
            if let Some(config) = tls {
                options.set_transport(rumqttc::Transport::tls_with_config(
                    rumqttc::TlsConfiguration::Rustls(config),
                ));
            }
            let (client, mut events) = rumqttc::AsyncClient::new(options, 16);
            tokio::spawn(async move {
                // Drives the connection; rumqttc reconnects on the next poll after an error.
                loop {
                    if events.poll().await.is_err() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            });
            let qos = if sim.qos == 0 {
                rumqttc::QoS::AtMostOnce
            } else {
                rumqttc::QoS::AtLeastOnce
            };
            let mut tick = tokio::time::interval(Duration::from_millis(sim.every_ms.max(10)));
            for n in 1u64.. {
                tick.tick().await;
                let payload = sim
                    .payload
                    .replace("{n}", &n.to_string())
                    .replace("{t}", &crate::caps::crypto::now_unix().to_string());
                if client
                    .publish(&sim.topic, qos, false, payload)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}
