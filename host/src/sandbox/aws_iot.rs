//! The emulated AWS IoT Core broker: mutual TLS with a registered client certificate (by
//! thumbprint, or any certificate from a registered CA), client id = thing name, and a simple
//! policy per thing — the topic filters it may publish and subscribe to, with
//! `${iot:ClientId}` / `${iot:Connection.Thing.ThingName}` substituted. What a thing may not do
//! closes its connection (publish, connect) or fails its SUBACK, as AWS IoT does. Accepted
//! publishes are recorded and routed to every subscribed client.

use crate::events::{Event, Recorder};
use crate::mqtt::server::{
    ConnectRequest, ConnectVerdict, Identity, MqttService, Peer, PublishVerdict,
};
use crate::mqtt::topic::filter_matches;
use crate::pki::crypto;
use rumqttc::mqttbytes::v4::Publish;
use std::sync::Arc;

/// AWS IoT's largest message payload.
pub(crate) const MAX_PAYLOAD: usize = 128 * 1024;

/// How a thing's certificate is registered.
#[derive(Debug, Clone)]
pub enum Registration {
    /// This one certificate (SHA-256 thumbprint).
    Thumbprint(String),
    /// Any certificate issued by this CA (its certificates, DER).
    CertificateAuthority(Vec<Vec<u8>>),
}

#[derive(Debug, Clone)]
pub struct Thing {
    /// The thing name; `None` with a CA registration = the certificate's CN.
    pub name: Option<String>,
    pub registration: Registration,
    /// Topic filters the policy allows, before substitution.
    pub allow: Vec<String>,
}

pub struct AwsIot {
    things: Vec<Thing>,
    recorder: Arc<Recorder>,
}

impl AwsIot {
    pub fn new(things: Vec<Thing>, recorder: Arc<Recorder>) -> AwsIot {
        AwsIot { things, recorder }
    }

    /// The thing (index, name) whose registration the client certificate matches.
    fn thing_of(&self, chain: &[Vec<u8>]) -> Result<(usize, String), String> {
        let leaf = chain.first().ok_or("no client certificate was presented")?;
        let now = crypto::now_unix() as i64;
        let thumbprint = super::auth::thumbprint(leaf);
        let mut last =
            format!("the client certificate (thumbprint {thumbprint}) is not registered");
        for (i, thing) in self.things.iter().enumerate() {
            match &thing.registration {
                Registration::Thumbprint(registered) if *registered == thumbprint => {
                    crate::pki::x509::check_validity(leaf, now, "the client certificate")
                        .map_err(|e| e.message)?;
                    return Ok((i, thing.name.clone().unwrap_or_default()));
                }
                Registration::Thumbprint(_) => {}
                Registration::CertificateAuthority(ca) => {
                    match super::auth::verify_chain(chain, ca, now) {
                        Ok(cn) => return Ok((i, thing.name.clone().unwrap_or(cn))),
                        Err(why) => last = why,
                    }
                }
            }
        }
        Err(last)
    }

    /// The thing's allowed filters with the policy variables filled in.
    fn policy(&self, session: &Peer) -> Vec<String> {
        let Some(thing) = session
            .auth
            .as_ref()
            .ok()
            .and_then(|i| i.entry)
            .and_then(|i| self.things.get(i))
        else {
            return Vec::new();
        };
        thing
            .allow
            .iter()
            .map(|f| {
                f.replace("${iot:ClientId}", &session.client_id)
                    .replace("${iot:Connection.Thing.ThingName}", &session.client_id)
            })
            .collect()
    }
}

impl MqttService for AwsIot {
    fn name(&self) -> &'static str {
        "aws-iot"
    }

    fn connect(&self, request: &ConnectRequest<'_>) -> ConnectVerdict {
        // AWS IoT answers an unknown certificate or a denied iot:Connect by closing the
        // connection, without a CONNACK.
        let (index, thing) = match self.thing_of(request.peer_chain) {
            Ok(found) => found,
            Err(why) => return ConnectVerdict::Close(why),
        };
        if request.client_id != thing {
            return ConnectVerdict::Close(format!(
                "client id '{}' is not the thing name '{thing}' the policy allows to connect",
                request.client_id
            ));
        }
        ConnectVerdict::Accept(Ok(Identity::new(format!("x509:{thing}"), Some(index))))
    }

    fn subscribe(&self, session: &Peer, filter: &str, qos: u8) -> Result<u8, String> {
        if self
            .policy(session)
            .iter()
            .any(|a| filter_matches(a, filter))
        {
            Ok(qos.min(1))
        } else {
            Err(format!(
                "the policy of '{}' does not allow subscribing to '{filter}'",
                session.client_id
            ))
        }
    }

    fn publish(&self, session: &Peer, publish: &Publish) -> PublishVerdict {
        if publish.payload.len() > MAX_PAYLOAD {
            return PublishVerdict::Disconnect(format!(
                "published {} bytes to '{}'; AWS IoT takes at most {MAX_PAYLOAD}; closed",
                publish.payload.len(),
                publish.topic
            ));
        }
        if !self
            .policy(session)
            .iter()
            .any(|a| filter_matches(a, &publish.topic))
        {
            return PublishVerdict::Disconnect(format!(
                "the policy of '{}' does not allow publishing to '{}'; closed",
                session.client_id, publish.topic
            ));
        }
        self.recorder.push(
            Event::new("aws-iot", "telemetry", &session.client_id)
                .identity(session.label())
                .topic(&publish.topic)
                .body(&publish.payload),
        );
        PublishVerdict::Route
    }
}
