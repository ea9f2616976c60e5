//! The MQTT 3.1.1 server core of the sandbox's emulated services and of the bridge's embedded
//! local broker, built on rumqttc's packet codec (`rumqttc::mqttbytes::v4`) over tokio, plain TCP
//! or rustls. It owns the protocol mechanics — TLS, CONNECT/CONNACK, keep-alive, SUBACK, PUBACK,
//! QoS 0/1/2 in, one connection per client id, delivery to subscribed clients only, persistent
//! sessions for the services that keep them ([`sessions`]), retained messages ([`retained`]), and
//! acknowledgements held back until the service says the message is safe (persisted) — and asks
//! an [`MqttService`] for every decision (who may connect, which subscriptions and publishes are
//! allowed, what to answer).
//!
//! Layout (one concern per file):
//! - [`service`]: the contract with a service ([`MqttService`], the verdicts, [`Peer`]).
//! - `clients`: the connected clients by id, their inboxes and subscriptions.
//! - `network`: one connection's socket, read and write buffers and packet limit.
//! - `connection`: one connection from accept to close (TLS, CONNECT, take-over, resume, will).
//! - `event_loop`: the loop of an accepted session, one handler per packet.
//! - `delivery`: what was sent and waits for its acknowledgement, both ways.
//! - `subscriptions`: a client's filters and the QoS a message goes at.
//! - [`sessions`], [`retained`]: what outlives a connection; `jsonl`: their files.

mod clients;
mod connection;
mod delivery;
mod event_loop;
mod jsonl;
mod network;
pub mod retained;
pub mod service;
pub mod sessions;
mod subscriptions;
#[cfg(test)]
mod tests;

pub use service::Identity;
pub(crate) use service::{ConnectRequest, ConnectVerdict, MqttService, Peer, PublishVerdict};

use crate::events::Recorder;
use clients::{qos_of, Clients, Command};
use connection::{ClientTask, SERVER_STOPPING};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Largest packet accepted: IoT Hub's 256 KB message plus room for topic and properties.
pub(crate) const MAX_PACKET: usize = 256 * 1024 + 16 * 1024;

/// A running server.
pub(crate) struct MqttServer {
    pub port: u16,
    clients: Arc<Clients>,
}

impl MqttServer {
    /// Listen on `addr` (port 0 = any free port) and serve `service` on the current tokio runtime.
    /// Without `tls`, clients connect over plain TCP.
    pub async fn start(
        addr: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
        service: Arc<dyn MqttService>,
        recorder: Arc<Recorder>,
    ) -> std::io::Result<MqttServer> {
        let listener = TcpListener::bind(addr).await?;
        let port = listener.local_addr()?.port();
        let clients = Arc::new(Clients::new(service.clone()));
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let shared = clients.clone();
        tokio::spawn(async move {
            let ids = AtomicU64::new(1);
            loop {
                let Ok((tcp, _peer)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let conn = ClientTask {
                    id: ids.fetch_add(1, Ordering::Relaxed),
                    service: service.clone(),
                    clients: shared.clone(),
                    recorder: recorder.clone(),
                };
                let acceptor = acceptor.clone();
                tokio::spawn(conn.serve(tcp, acceptor));
            }
        });
        Ok(MqttServer { port, clients })
    }

    /// Publish to the connected client `client_id` (delivered if it subscribed to a matching
    /// filter). False when that client is not connected.
    pub(crate) fn send_to(&self, client_id: &str, topic: &str, payload: &[u8], qos: u8) -> bool {
        let clients = self.clients.by_id.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .get(client_id)
            .is_some_and(|client| client.inbox.offer(topic, || payload.to_vec(), qos_of(qos)))
    }

    /// Publish to every connected client subscribed to `topic` (QoS 0 or 1), as a broker's
    /// own message.
    pub fn publish(&self, topic: &str, payload: &[u8], qos: u8) {
        self.clients.broadcast(topic, payload, qos_of(qos));
    }

    /// Keep `payload` as `topic`'s retained message (empty: clear it); `Err` says why not.
    pub fn retain(
        &self,
        topic: &str,
        payload: &[u8],
        qos: u8,
    ) -> Result<(), retained::RetainError> {
        self.clients.retained.keep(topic, payload, qos_of(qos))
    }

    /// Save the retained messages to `path` if they changed ([`retained::Retained::save`]).
    pub(crate) fn save_retained(&self, path: &std::path::Path) -> std::io::Result<bool> {
        self.clients.retained.save(path)
    }

    /// Retain the messages saved in `path` ([`retained::Retained::load`]).
    pub(crate) fn load_retained(
        &self,
        path: &std::path::Path,
    ) -> std::io::Result<(usize, Vec<String>)> {
        self.clients.retained.load(path)
    }

    /// Close every client's connection (no wills are published) and wait up to `wait` for them
    /// to end, so the persistent sessions among them are kept ([`MqttServer::save_sessions`]).
    pub(crate) async fn close_all(&self, wait: Duration) {
        {
            let clients = self.clients.by_id.lock().unwrap_or_else(|e| e.into_inner());
            for client in clients.values() {
                let _ = client
                    .inbox
                    .commands
                    .send(Command::Kick(SERVER_STOPPING.into()));
            }
        }
        self.clients.wait_until(wait, HashMap::is_empty).await;
    }

    /// Save the absent clients' sessions to `path` ([`sessions::Sessions::save`]): how many
    /// sessions and messages.
    pub(crate) fn save_sessions(&self, path: &std::path::Path) -> std::io::Result<(usize, usize)> {
        self.clients.sessions().save(path)
    }

    /// Keep the sessions saved in `path` ([`sessions::Sessions::load`]).
    pub(crate) fn load_sessions(
        &self,
        path: &std::path::Path,
    ) -> std::io::Result<(usize, Vec<String>)> {
        self.clients.sessions().load(path)
    }
}
