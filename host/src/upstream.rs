//! One device's upstream (cloud) MQTT session: opened with the device's onboarded connection and
//! fresh credentials from its flow's `refresh`; credentials renewed by a reconnect at 85 % of
//! their lifetime at the latest; the flow run once more when the kept endpoint refuses the device
//! (moved or deleted); and a publish that finds the session broken sent again on a new one, so
//! a message handed to [`DeviceSession::publish`] is either acknowledged or returned as an error.
//! The bridge streams instead ([`DeviceSession::offer`], [`DeviceSession::poll_completed`]) and
//! sends again what a broken session left unacknowledged itself.

pub(crate) use crate::caps::mqtt::Offered;
use crate::caps::mqtt::{connection_options, MqttSession};
use crate::caps::CapContext;
use crate::config::{Config, DeviceConfig};
use crate::engine::FlowPlugin;
use crate::model::{Connection, ErrorKind, Message, PluginError};
use crate::onboard::{self, OnboardError, Onboarded};
use crate::plugins::registry::{Registry, RegistryError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Credentials are renewed once this share of their lifetime has passed.
pub(crate) const RENEW_AT: f64 = 0.85;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Onboard(#[from] OnboardError),
    #[error(transparent)]
    Plugin(#[from] RegistryError),
    #[error("device '{device}': {source}")]
    Session { device: String, source: PluginError },
}

/// A device's live session to its cloud endpoint.
pub struct DeviceSession<'a> {
    config: &'a Config,
    registry: &'a Registry,
    device: DeviceConfig,
    flow: Arc<dyn FlowPlugin>,
    /// The flow's permissions (endpoints, file roots) with a session count of its own: the
    /// host's upstream sessions do not use up the flow's plugin session slots.
    caps: CapContext,
    onboarded: Onboarded,
    session: Option<MqttSession>,
    /// Unix seconds (fractional) when the current credentials are to be renewed.
    renew_at: Option<f64>,
    expires_at: Option<u64>,
    renewals: u32,
    registrations: u32,
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl<'a> DeviceSession<'a> {
    /// Onboard `device` (reusing its kept connection when possible) and connect.
    pub fn open(
        config: &'a Config,
        registry: &'a Registry,
        device: &DeviceConfig,
    ) -> Result<DeviceSession<'a>, UpstreamError> {
        let outcome = onboard::onboard(config, registry, device, false)?;
        let mut caps = registry.get(&device.flow)?.caps.clone();
        caps.mqtt = caps.mqtt.separate();
        let mut session = DeviceSession {
            config,
            registry,
            device: device.clone(),
            flow: registry.flow(&device.flow)?,
            caps,
            onboarded: outcome.onboarded,
            session: None,
            renew_at: None,
            expires_at: None,
            renewals: 0,
            registrations: u32::from(outcome.registered),
        };
        session.connect()?;
        Ok(session)
    }

    /// Publish `msg` (QoS 1 waits for the PUBACK). Renews the credentials first when due; a
    /// session found closed is replaced and the message sent again once.
    pub fn publish(&mut self, msg: &Message) -> Result<(), UpstreamError> {
        self.publish_batch(std::slice::from_ref(msg))
    }

    /// Publish `msgs` in order, many in flight at once; returns when every QoS 1 message is
    /// acknowledged. Renews the credentials first when due; a session found closed is replaced
    /// and the batch sent again once (the upstream may then see some messages twice).
    pub fn publish_batch(&mut self, msgs: &[Message]) -> Result<(), UpstreamError> {
        if self.renewal_due() {
            self.renew()?;
        }
        let first = self.session()?.publish_batch(msgs);
        match first {
            Err(e) if is_broken(&e) => {
                tracing::warn!(device = %self.device.name, "the upstream session broke ({e}); reconnecting");
                self.session = None;
                let second = self.session()?.publish_batch(msgs);
                second.map_err(|source| self.error(source))
            }
            other => other.map_err(|source| self.error(source)),
        }
    }

    /// Hand `msg` to the session without waiting (connecting first when there is none).
    /// Messages complete in the order they were offered ([`DeviceSession::poll_completed`]).
    /// A failed session is not replaced here: the caller knows what was in flight and offers
    /// it again on a new one.
    pub(crate) fn offer(&mut self, msg: Message) -> Result<Offered, UpstreamError> {
        Ok(self.session()?.offer(msg))
    }

    /// Drive the session for at most `timeout`: how many of the oldest offered messages the
    /// upstream has now acknowledged.
    pub(crate) fn poll_completed(&mut self, timeout: Duration) -> Result<usize, UpstreamError> {
        let polled = self.session()?.poll_completed(timeout);
        polled.map_err(|source| self.error(source))
    }

    /// Interrupts a [`DeviceSession::poll_completed`] of the current connection (a new one
    /// after [`DeviceSession::renew`] has a new waker).
    pub(crate) fn waker(&self) -> Option<crate::mqtt::client::Waker> {
        self.session.as_ref().map(MqttSession::waker)
    }

    /// Cloud-to-device messages received so far, taken.
    pub(crate) fn take_received(&mut self) -> Vec<Message> {
        self.session
            .as_mut()
            .map(MqttSession::take_received)
            .unwrap_or_default()
    }

    /// Whether the credentials are due for renewal: stop offering, let what is in flight
    /// complete, then [`DeviceSession::renew`].
    pub(crate) fn renewal_due(&self) -> bool {
        self.renew_at.is_some_and(|at| now_secs() >= at)
    }

    /// The current session, connecting first when there is none.
    fn session(&mut self) -> Result<&mut MqttSession, UpstreamError> {
        if self.session.is_none() {
            self.connect()?;
        }
        let device = &self.device.name;
        self.session.as_mut().ok_or_else(|| UpstreamError::Session {
            device: device.clone(),
            source: PluginError::new(ErrorKind::Closed, "no upstream session".to_string()),
        })
    }

    /// Replace the session by one with fresh credentials. Publishes are synchronous, so
    /// nothing is in flight on the old session when it is closed.
    pub(crate) fn renew(&mut self) -> Result<(), UpstreamError> {
        if let Some(mut old) = self.session.take() {
            let _ = old.disconnect();
        }
        self.connect()?;
        self.renewals += 1;
        tracing::info!(device = %self.device.name, renewals = self.renewals, "credentials renewed");
        Ok(())
    }

    /// Connect with fresh credentials; when the kept endpoint refuses the device, register it
    /// again (once) and connect to wherever the flow now says.
    fn connect(&mut self) -> Result<(), UpstreamError> {
        match self.try_connect() {
            Ok(()) => Ok(()),
            Err(e) if e.kind == ErrorKind::Refused => {
                tracing::warn!(
                    device = %self.device.name,
                    "{} refused the device ({e}); running flow '{}' again",
                    self.onboarded.connection.host,
                    self.device.flow
                );
                let outcome = onboard::onboard(self.config, self.registry, &self.device, true)?;
                self.onboarded = outcome.onboarded;
                self.registrations += 1;
                self.try_connect().map_err(|source| self.error(source))
            }
            Err(source) => Err(self.error(source)),
        }
    }

    fn try_connect(&mut self) -> Result<(), PluginError> {
        let credentials = self.flow.refresh(&self.onboarded.connection)?;
        let options = connection_options(&self.caps, &self.onboarded.connection, &credentials)?;
        let issued = now_secs();
        let mut session = MqttSession::connect(&self.caps, &options)?;
        // Cloud-to-device subscriptions: one the cloud refuses is said, and the session serves
        // telemetry all the same.
        for filter in &self.device.from_cloud {
            match session.subscribe(filter, 1) {
                Ok(()) => {
                    tracing::info!(device = %self.device.name, filter, "subscribed for cloud-to-device messages")
                }
                Err(e) => {
                    tracing::warn!(device = %self.device.name, filter, "the cloud refused the subscription: {e}")
                }
            }
        }
        self.expires_at = credentials.expires_at;
        self.renew_at = credentials
            .expires_at
            .map(|at| issued + (at as f64 - issued).max(0.0) * RENEW_AT);
        self.session = Some(session);
        Ok(())
    }

    fn error(&self, source: PluginError) -> UpstreamError {
        UpstreamError::Session {
            device: self.device.name.clone(),
            source,
        }
    }

    /// The connection in use (secrets blanked).
    pub fn connection(&self) -> &Connection {
        &self.onboarded.connection
    }

    /// How many times the credentials were renewed.
    pub fn renewals(&self) -> u32 {
        self.renewals
    }

    /// How many times the flow registered the device while this session was open (including
    /// the first onboarding when nothing was kept).
    pub fn registrations(&self) -> u32 {
        self.registrations
    }

    /// Time left before the current credentials expire; `None` when they do not.
    pub fn time_to_expiry(&self) -> Option<Duration> {
        self.expires_at
            .map(|at| Duration::from_secs_f64((at as f64 - now_secs()).max(0.0)))
    }
}

/// Failures after which a new session may succeed where the old one broke.
fn is_broken(e: &PluginError) -> bool {
    matches!(
        e.kind,
        ErrorKind::Closed | ErrorKind::Io | ErrorKind::Timeout
    )
}
