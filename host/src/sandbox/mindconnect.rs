//! The emulated Insights Hub (MindConnect) MQTT brokers. **eu1** authenticates agents by their
//! client certificate (chained to a tenant CA); **private cloud** by username
//! `_CertificateBearer` and an RS256 JWT whose `x5c` chain leads to a tenant CA and whose claims
//! follow the private-cloud contract. Both take client ids `<tenant>_<certificate CN>`, close the
//! first connections of an agent they have not seen while it is "provisioned" (later ones stay
//! up), and serve only the agent's own `tc/<tenant>/<clientId>/...` topics.

use super::jwt;
use crate::events::{Event, Recorder};
use crate::mqtt::server::{
    ConnectRequest, ConnectVerdict, Identity, MqttService, Peer, PublishVerdict,
};
use crate::pki::crypto;
use rumqttc::mqttbytes::v4::{ConnectReturnCode, Publish};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The username private-cloud agents connect with.
pub(crate) const CERTIFICATE_BEARER: &str = "_CertificateBearer";
/// Clock difference tolerated on `iat` and `nbf`.
const CLOCK_SKEW_SECS: i64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Client certificate; username and password are not used.
    Eu1,
    /// `_CertificateBearer` + RS256 JWT; no client certificate needed.
    PrivateCloud,
}

/// A tenant: its name and the CA its agent certificates are issued by (DER).
#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: String,
    pub ca: Vec<Vec<u8>>,
}

/// Who an agent proved to be.
struct Agent {
    tenant: String,
    common_name: String,
}

pub struct MindConnect {
    flavor: Flavor,
    tenants: Vec<Tenant>,
    provision_delay: Duration,
    /// When each agent (client id) was first seen.
    provisioning: Mutex<HashMap<String, Instant>>,
    recorder: Arc<Recorder>,
}

impl MindConnect {
    pub fn new(
        flavor: Flavor,
        tenants: Vec<Tenant>,
        provision_delay: Duration,
        recorder: Arc<Recorder>,
    ) -> MindConnect {
        MindConnect {
            flavor,
            tenants,
            provision_delay,
            provisioning: Mutex::new(HashMap::new()),
            recorder,
        }
    }

    /// The tenant whose CA issued `chain`'s leaf, and the leaf's CN.
    fn agent_of_chain(&self, chain: &[Vec<u8>], now: i64) -> Result<Agent, String> {
        let mut last = "no client certificate was presented".to_string();
        for tenant in &self.tenants {
            match super::auth::verify_chain(chain, &tenant.ca, now) {
                Ok(common_name) => {
                    return Ok(Agent {
                        tenant: tenant.name.clone(),
                        common_name,
                    })
                }
                Err(why) => last = why,
            }
        }
        Err(last)
    }

    fn authenticate(&self, request: &ConnectRequest<'_>) -> Result<Agent, String> {
        let now = crypto::now_unix() as i64;
        match self.flavor {
            Flavor::Eu1 => self.agent_of_chain(request.peer_chain, now),
            Flavor::PrivateCloud => {
                let token = jwt::verify_rs256_x5c(request.password)?;
                let agent = self.agent_of_chain(&token.x5c, now).map_err(|why| {
                    format!("the JWT's x5c chain does not lead to a tenant CA: {why}")
                })?;
                check_claims(&token.claims, request.client_id, &agent.tenant, now)?;
                Ok(agent)
            }
        }
    }

    /// Refuse the way this broker does: eu1 (an AWS IoT based broker) drops the connection,
    /// the private-cloud broker answers with a CONNACK code.
    fn refuse(&self, code: ConnectReturnCode, why: String) -> ConnectVerdict {
        match self.flavor {
            Flavor::Eu1 => ConnectVerdict::Close(why),
            Flavor::PrivateCloud => ConnectVerdict::Refuse(code, why),
        }
    }

    /// Close the first connection of an agent never seen, and every later one until
    /// `provision_delay` after that first one.
    fn provisioned(&self, client_id: &str) -> Result<(), String> {
        let mut first_seen = self.provisioning.lock().unwrap_or_else(|e| e.into_inner());
        let delay = self.provision_delay;
        match first_seen.get(client_id) {
            Some(first) if first.elapsed() >= delay => Ok(()),
            Some(first) => Err(format!(
                "agent '{client_id}' is still being provisioned; retry in {} ms",
                (delay - first.elapsed()).as_millis()
            )),
            None => {
                first_seen.insert(client_id.to_string(), Instant::now());
                Err(format!(
                    "agent '{client_id}' is new and is being provisioned; retry in {} ms",
                    delay.as_millis()
                ))
            }
        }
    }

    fn own_prefix(session: &Peer) -> String {
        let tenant = session.client_id.split('_').next().unwrap_or_default();
        format!("tc/{tenant}/{}/", session.client_id)
    }
}

/// The private-cloud claims: `jti`, `iss` = `sub` = client id, `aud` = ["MQTTBroker"], `iat`,
/// optional `nbf`, `exp` within an hour of `iat`, the MindSphere schema and `ten` = the tenant
/// whose CA issued the agent certificate.
fn check_claims(
    claims: &Map<String, Value>,
    client_id: &str,
    tenant: &str,
    now: i64,
) -> Result<(), String> {
    let text = |name: &str| -> Result<&str, String> {
        claims
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the JWT has no '{name}' claim (a string)"))
    };
    let number = |name: &str| -> Result<i64, String> {
        claims
            .get(name)
            .and_then(Value::as_i64)
            .ok_or_else(|| format!("the JWT has no '{name}' claim (a number)"))
    };
    let list_has = |name: &str, wanted: &str| -> Result<(), String> {
        let ok = claims
            .get(name)
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(wanted)));
        if ok {
            Ok(())
        } else {
            Err(format!("the JWT's '{name}' claim must be [\"{wanted}\"]"))
        }
    };
    let jti = text("jti")?;
    if jti.is_empty() || jti.chars().count() > 36 {
        return Err(format!(
            "the JWT's jti must be 1 to 36 characters, it has {}",
            jti.chars().count()
        ));
    }
    for name in ["iss", "sub"] {
        let value = text(name)?;
        if value != client_id {
            return Err(format!(
                "the JWT's {name} '{value}' is not the client id '{client_id}'"
            ));
        }
    }
    list_has("aud", "MQTTBroker")?;
    list_has("schemas", "urn:siemens:mindsphere:v1")?;
    let ten = text("ten")?;
    if ten != tenant {
        return Err(format!(
            "the JWT's ten '{ten}' is not the tenant '{tenant}' whose CA issued the agent certificate"
        ));
    }
    let iat = number("iat")?;
    let exp = number("exp")?;
    if iat > now + CLOCK_SKEW_SECS {
        return Err(format!("the JWT's iat is {} s in the future", iat - now));
    }
    if exp <= iat {
        return Err(format!(
            "the JWT's exp ({exp}) is not after its iat ({iat})"
        ));
    }
    if exp - iat > crate::pki::jwt::MAX_JWT_LIFETIME_SECS as i64 {
        return Err(format!(
            "the JWT lives {} s (exp - iat); at most {} s are accepted",
            exp - iat,
            crate::pki::jwt::MAX_JWT_LIFETIME_SECS
        ));
    }
    if exp <= now {
        return Err(format!("the JWT expired {} s ago", now - exp));
    }
    if claims.contains_key("nbf") {
        let nbf = number("nbf")?;
        if nbf > now + CLOCK_SKEW_SECS {
            return Err(format!(
                "the JWT is not valid for another {} s (nbf)",
                nbf - now
            ));
        }
    }
    Ok(())
}

impl MqttService for MindConnect {
    fn name(&self) -> &'static str {
        match self.flavor {
            Flavor::Eu1 => "mindconnect-eu1",
            Flavor::PrivateCloud => "mindconnect-private",
        }
    }

    fn connect(&self, request: &ConnectRequest<'_>) -> ConnectVerdict {
        if self.flavor == Flavor::PrivateCloud && request.username != CERTIFICATE_BEARER {
            return ConnectVerdict::Refuse(
                ConnectReturnCode::BadUserNamePassword,
                format!(
                    "username '{}' is not {CERTIFICATE_BEARER}",
                    request.username
                ),
            );
        }
        let agent = match self.authenticate(request) {
            Ok(agent) => agent,
            Err(why) => return self.refuse(ConnectReturnCode::NotAuthorized, why),
        };
        let expected = format!("{}_{}", agent.tenant, agent.common_name);
        if request.client_id != expected {
            return self.refuse(
                ConnectReturnCode::BadClientId,
                format!(
                    "client id '{}' is not <tenant>_<CN> = '{expected}'",
                    request.client_id
                ),
            );
        }
        if let Err(why) = self.provisioned(request.client_id) {
            return ConnectVerdict::Close(why);
        }
        ConnectVerdict::Accept(Ok(Identity::new(format!("x509:{expected}"), None)))
    }

    fn subscribe(&self, session: &Peer, filter: &str, qos: u8) -> Result<u8, String> {
        let own = Self::own_prefix(session);
        if filter.starts_with(&own) {
            Ok(qos.min(1))
        } else {
            Err(format!("an agent may subscribe only under '{own}'"))
        }
    }

    fn publish(&self, session: &Peer, publish: &Publish) -> PublishVerdict {
        let inbound = format!("{}i/", Self::own_prefix(session));
        if !publish.topic.starts_with(&inbound) {
            return PublishVerdict::Disconnect(format!(
                "published to '{}'; an agent may publish only under '{inbound}'; closed",
                publish.topic
            ));
        }
        self.recorder.push(
            Event::new(self.name(), "telemetry", &session.client_id)
                .identity(session.label())
                .topic(&publish.topic)
                .body(&publish.payload),
        );
        PublishVerdict::Accept
    }
}
