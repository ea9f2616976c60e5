//! The emulated Device Provisioning Service: enrollments from the config (individual
//! and group, symmetric key and X.509), `$dps/registrations/PUT/iotdps-register` and
//! `GET/iotdps-get-operationstatus` with `$rid` echoed, `202` + `retry-after` while assigning,
//! then the terminal `assigned` / `failed` / `disabled` state; `401` for a client that did not
//! authenticate (DPS accepts the MQTT connection and refuses the request, as the real service
//! does), `429` for more than 5 status polls in 10 s. Assigned devices are added to the hub.
//! Register and status are transport-free ([`Caller`] in, [`Reply`] out): the MQTT binding is the
//! [`MqttService`] impl below, the REST binding is `dps_rest.rs`.

use super::auth;
use super::config::{Attestation, DpsConfig, Enrollment, EnrollmentStatus};
use super::iothub::{DeviceAuth, DeviceRegistry};
use crate::events::{Event, Recorder};
use crate::mqtt::server::{
    ConnectRequest, ConnectVerdict, Identity, MqttService, Peer, PublishVerdict,
};
use crate::pki::crypto;
use rumqttc::mqttbytes::v4::{ConnectReturnCode, Publish};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Status polls one registration may make per [`POLL_WINDOW`].
pub(crate) const MAX_POLLS: usize = 5;
pub(crate) const POLL_WINDOW: Duration = Duration::from_secs(10);

/// An enrollment with its files read.
#[derive(Debug, Clone)]
pub struct LoadedEnrollment {
    pub config: Enrollment,
    /// Individual X.509: the enrolled certificate's thumbprint.
    pub thumbprint: Option<String>,
    /// Group X.509: the CA certificates (DER).
    pub ca: Option<Vec<Vec<u8>>>,
}

struct Operation {
    registration_id: String,
    enrollment: usize,
    started: Instant,
    payload: Option<Value>,
}

struct Registration {
    created: String,
    etag: u64,
}

#[derive(Default)]
struct State {
    operations: HashMap<String, Operation>,
    polls: HashMap<String, VecDeque<Instant>>,
    /// Register requests throttled so far, per registration id (`throttle_registers`).
    throttled: HashMap<String, u32>,
    registrations: HashMap<String, Registration>,
}

/// A DPS answer, whatever the transport: an HTTP-style status, the seconds a client should wait
/// before asking again, and the JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<u32>,
    pub body: Value,
}

impl Reply {
    fn new(status: u16, retry_after: Option<u32>, body: Value) -> Reply {
        Reply {
            status,
            retry_after,
            body,
        }
    }
}

/// Who asks: the registration id, what authenticating it gave, and the transport (`dps` for
/// MQTT, `dps-rest`) records are filed under.
pub struct Caller<'a> {
    pub transport: &'static str,
    pub registration_id: &'a str,
    pub auth: &'a Result<Identity, String>,
}

impl Caller<'_> {
    fn label(&self) -> Option<&str> {
        self.auth.as_ref().ok().map(|i| i.label.as_str())
    }
}

pub struct Dps {
    config: DpsConfig,
    enrollments: Vec<LoadedEnrollment>,
    hub_hostname: String,
    devices: Arc<DeviceRegistry>,
    recorder: Arc<Recorder>,
    state: Mutex<State>,
}

fn now_utc() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Dps {
    pub fn new(
        config: DpsConfig,
        enrollments: Vec<LoadedEnrollment>,
        hub_hostname: String,
        devices: Arc<DeviceRegistry>,
        recorder: Arc<Recorder>,
    ) -> Dps {
        Dps {
            config,
            enrollments,
            hub_hostname,
            devices,
            recorder,
            state: Mutex::new(State::default()),
        }
    }

    /// `(scope, registration id)` from `<scope>/registrations/<id>/api-version=..[&..]`.
    fn parse_username(username: &str) -> Option<(&str, &str)> {
        let (scope, rest) = username.split_once("/registrations/")?;
        let (id, tail) = rest.split_once('/')?;
        (!scope.is_empty() && !id.is_empty() && tail.starts_with("api-version="))
            .then_some((scope, id))
    }

    fn individual(&self, registration_id: &str) -> Option<(usize, &LoadedEnrollment)> {
        self.enrollments
            .iter()
            .enumerate()
            .find(|(_, e)| e.config.registration_id.as_deref() == Some(registration_id))
    }

    /// Which enrollment the credentials match — a SAS token (MQTT password or REST
    /// `Authorization` header; empty = none) or the TLS client certificate chain — or why none
    /// does.
    pub(crate) fn authenticate(
        &self,
        scope: &str,
        registration_id: &str,
        sas_token: &str,
        peer_chain: &[Vec<u8>],
    ) -> Result<Identity, String> {
        if scope != self.config.id_scope {
            return Err(format!(
                "id scope '{scope}' is not this DPS's ({})",
                self.config.id_scope
            ));
        }
        let now = crypto::now_unix();
        if !sas_token.is_empty() {
            let resource = format!("{scope}/registrations/{registration_id}");
            let check =
                |key: &str| auth::verify_sas(sas_token, &resource, key, Some("registration"), now);
            let label = format!("sas:{registration_id}");
            if let Some((i, e)) = self.individual(registration_id) {
                let Some(key) = &e.config.primary_key else {
                    return Err(format!(
                        "the enrollment of '{registration_id}' uses X.509, but a SAS token was presented"
                    ));
                };
                check(key)?;
                return Ok(Identity::new(label, Some(i)));
            }
            let mut last = format!("no enrollment matches registration id '{registration_id}'");
            for (i, e) in self.enrollments.iter().enumerate() {
                if e.config.attestation != Attestation::GroupSymmetricKey {
                    continue;
                }
                let group_key = e.config.group_key.as_deref().unwrap_or_default();
                let key =
                    crypto::derive_device_key(group_key, registration_id).map_err(|e| e.message)?;
                match check(&key) {
                    Ok(_) => return Ok(Identity::new(label, Some(i))),
                    Err(why) => last = format!("{why} (group enrollment {i})"),
                }
            }
            return Err(last);
        }
        if peer_chain.is_empty() {
            return Err("neither a SAS token nor a client certificate was presented".into());
        }
        let leaf_cn = crate::pki::x509::info(&peer_chain[0]).subject_cn;
        if leaf_cn != registration_id {
            return Err(format!(
                "the client certificate is for '{leaf_cn}', not registration id '{registration_id}'"
            ));
        }
        let label = format!("x509:{leaf_cn}");
        if let Some((i, e)) = self.individual(registration_id) {
            let Some(expected) = &e.thumbprint else {
                return Err(format!(
                    "the enrollment of '{registration_id}' uses a symmetric key, but a client certificate was presented"
                ));
            };
            let got = auth::thumbprint(&peer_chain[0]);
            if &got != expected {
                return Err(format!(
                    "the client certificate's thumbprint {got} is not the enrolled one"
                ));
            }
            crate::pki::x509::check_validity(&peer_chain[0], now as i64, "the client certificate")
                .map_err(|e| e.message)?;
            return Ok(Identity::new(label, Some(i)));
        }
        let mut last = format!("no enrollment matches registration id '{registration_id}'");
        for (i, e) in self.enrollments.iter().enumerate() {
            let Some(ca) = &e.ca else { continue };
            match auth::verify_chain(peer_chain, ca, now as i64) {
                Ok(_) => return Ok(Identity::new(label, Some(i))),
                Err(why) => last = format!("{why} (group enrollment {i})"),
            }
        }
        Err(last)
    }

    fn error_body(code: u32, message: &str) -> Value {
        json!({
            "errorCode": code,
            "trackingId": uuid::Uuid::new_v4().to_string(),
            "message": message,
            "timestampUtc": now_utc(),
        })
    }

    /// 401 to a caller that did not authenticate; the reason goes to the records.
    fn unauthorized(&self, caller: &Caller<'_>) -> Reply {
        let why = caller.auth.as_ref().err().cloned().unwrap_or_default();
        self.recorder
            .push(Event::new(caller.transport, "unauthorized", caller.registration_id).detail(why));
        Reply::new(
            401,
            None,
            Self::error_body(401002, "The device is unauthorized."),
        )
    }

    /// Whether this register request of `id` is one of the first `throttle_registers`.
    fn throttle(&self, id: &str) -> bool {
        if self.config.throttle_registers == 0 {
            return false;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let count = state.throttled.entry(id.to_string()).or_default();
        *count += 1;
        *count <= self.config.throttle_registers
    }

    /// Start a registration: `202` with the operation id, or why not.
    pub fn register(&self, caller: &Caller<'_>, payload: &[u8]) -> Reply {
        let id = caller.registration_id;
        let record = |event, detail: String| {
            self.recorder.push(
                Event::new(caller.transport, event, id)
                    .identity(caller.label())
                    .body(payload)
                    .detail(detail),
            )
        };
        let Ok(identity) = caller.auth else {
            return self.unauthorized(caller);
        };
        if self.throttle(id) {
            record(
                "throttled",
                format!(
                    "register throttled (throttle_registers = {}), retry-after {} s",
                    self.config.throttle_registers, self.config.retry_after_secs
                ),
            );
            return Reply::new(
                429,
                Some(self.config.retry_after_secs),
                Self::error_body(429001, "Operations are being throttled for this tenant."),
            );
        }
        let body: Value = if payload.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            match serde_json::from_slice(payload) {
                Ok(v @ Value::Object(_)) => v,
                _ => {
                    record(
                        "bad-request",
                        "the register body is not a JSON object".into(),
                    );
                    return Reply::new(
                        400,
                        None,
                        Self::error_body(400004, "The request body is not a JSON object."),
                    );
                }
            }
        };
        if let Some(named) = body.get("registrationId") {
            if named.as_str() != Some(id) {
                record(
                    "bad-request",
                    format!("the body names registration id {named}, the connection '{id}'"),
                );
                return Reply::new(
                    400,
                    None,
                    Self::error_body(
                        400004,
                        "The registrationId in the body does not match the connection.",
                    ),
                );
            }
        }
        let operation_id = format!(
            "4.{}.{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16],
            uuid::Uuid::new_v4()
        );
        let payload_data = body.get("payload").filter(|p| !p.is_null()).cloned();
        let enrollment = identity.entry.unwrap_or_default();
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .operations
            .insert(
                operation_id.clone(),
                Operation {
                    registration_id: id.to_string(),
                    enrollment,
                    started: Instant::now(),
                    payload: payload_data,
                },
            );
        record("register", format!("operation {operation_id} assigning"));
        Reply::new(
            202,
            Some(self.config.retry_after_secs),
            json!({"operationId": operation_id, "status": "assigning"}),
        )
    }

    /// Where operation `operation_id` stands: `202` while assigning, `200` with the
    /// registration state when done; `404`, `429` and `401` as DPS answers them.
    pub(crate) fn operation_status(&self, caller: &Caller<'_>, operation_id: &str) -> Reply {
        let id = caller.registration_id;
        if caller.auth.is_err() {
            return self.unauthorized(caller);
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let polls = state.polls.entry(id.to_string()).or_default();
        while polls
            .front()
            .is_some_and(|t| now.duration_since(*t) > POLL_WINDOW)
        {
            polls.pop_front();
        }
        if polls.len() >= MAX_POLLS {
            let wait = POLL_WINDOW
                .saturating_sub(now.duration_since(polls[0]))
                .as_secs() as u32
                + 1;
            drop(state);
            self.recorder.push(
                Event::new(caller.transport, "throttled", id)
                    .identity(caller.label())
                    .detail(format!(
                        "more than {MAX_POLLS} status polls in {} s",
                        POLL_WINDOW.as_secs()
                    )),
            );
            return Reply::new(
                429,
                Some(wait),
                Self::error_body(429001, "Operations are being throttled for this tenant."),
            );
        }
        polls.push_back(now);
        let Some(op) = state
            .operations
            .get(operation_id)
            .filter(|op| op.registration_id == id)
        else {
            drop(state);
            self.recorder.push(
                Event::new(caller.transport, "not-found", id)
                    .detail(format!("unknown operation {operation_id}")),
            );
            return Reply::new(404, None, Self::error_body(404201, "Operation not found."));
        };
        if op.started.elapsed() < Duration::from_millis(self.config.assign_delay_ms) {
            drop(state);
            return Reply::new(
                202,
                Some(self.config.retry_after_secs),
                json!({"operationId": operation_id, "status": "assigning"}),
            );
        }
        let enrollment = self.enrollments[op.enrollment].clone();
        let payload = op.payload.clone();
        let now_text = now_utc();
        let registration = state
            .registrations
            .entry(id.to_string())
            .or_insert(Registration {
                created: now_text.clone(),
                etag: 0,
            });
        registration.etag += 1;
        let created = registration.created.clone();
        let etag = crypto::base64_encode(format!("\"{}\"", registration.etag).as_bytes());
        drop(state);

        let e = &enrollment.config;
        let (status, state_body) = if e.status == EnrollmentStatus::Disabled {
            (
                "disabled",
                json!({
                    "registrationId": id, "createdDateTimeUtc": created, "status": "disabled",
                    "lastUpdatedDateTimeUtc": now_text, "etag": etag,
                }),
            )
        } else if let Some(fail) = &e.fail {
            (
                "failed",
                json!({
                    "registrationId": id, "createdDateTimeUtc": created, "status": "failed",
                    "errorCode": fail.error_code, "errorMessage": fail.error_message,
                    "lastUpdatedDateTimeUtc": now_text, "etag": etag,
                }),
            )
        } else {
            let device_id = e.device_id.clone().unwrap_or_else(|| id.to_string());
            let device_auth = match e.attestation {
                Attestation::SymmetricKey => {
                    DeviceAuth::SymmetricKey(e.primary_key.clone().unwrap_or_default())
                }
                Attestation::GroupSymmetricKey => DeviceAuth::SymmetricKey(
                    crypto::derive_device_key(e.group_key.as_deref().unwrap_or_default(), id)
                        .unwrap_or_default(),
                ),
                Attestation::X509 => {
                    DeviceAuth::Thumbprint(enrollment.thumbprint.clone().unwrap_or_default())
                }
                Attestation::GroupX509 => {
                    DeviceAuth::CertificateAuthority(enrollment.ca.clone().unwrap_or_default())
                }
            };
            self.devices.upsert(&device_id, device_auth);
            let mut state = json!({
                "registrationId": id, "createdDateTimeUtc": created, "assignedHub": self.hub_hostname,
                "deviceId": device_id, "status": "assigned", "substatus": "initialAssignment",
                "lastUpdatedDateTimeUtc": now_text, "etag": etag,
            });
            if let Some(p) = payload {
                state["payload"] = p;
            }
            ("assigned", state)
        };
        self.recorder.push(
            Event::new(
                caller.transport,
                if status == "assigned" {
                    "assigned"
                } else {
                    "registration-ended"
                },
                id,
            )
            .identity(caller.label())
            .body(state_body.to_string().as_bytes())
            .detail(format!("registration {status}")),
        );
        Reply::new(
            200,
            None,
            json!({"operationId": operation_id, "status": status, "registrationState": state_body}),
        )
    }
}

/// The value of `name` in a `?a=1&b=2` query.
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

impl MqttService for Dps {
    fn name(&self) -> &'static str {
        "dps"
    }

    fn connect(&self, request: &ConnectRequest<'_>) -> ConnectVerdict {
        let Some((scope, registration_id)) = Self::parse_username(request.username) else {
            return ConnectVerdict::Refuse(
                ConnectReturnCode::BadUserNamePassword,
                format!(
                    "username '{}' is not <idScope>/registrations/<registrationId>/api-version=<version>",
                    request.username
                ),
            );
        };
        if let Some(refusal) = request.client_id_refusal(registration_id, "registration id") {
            return refusal;
        }
        ConnectVerdict::Accept(self.authenticate(
            scope,
            registration_id,
            request.password,
            request.peer_chain,
        ))
    }

    fn subscribe(&self, _session: &Peer, filter: &str, qos: u8) -> Result<u8, String> {
        if filter == "$dps/registrations/res/#" {
            Ok(qos.min(1))
        } else {
            Err(format!("DPS serves no subscription to '{filter}'"))
        }
    }

    fn publish(&self, session: &Peer, publish: &Publish) -> PublishVerdict {
        let topic = publish.topic.as_str();
        let (request, query) = topic.split_once("/?").unwrap_or((topic, ""));
        let Some(rid) = query_value(query, "$rid") else {
            return PublishVerdict::Disconnect(format!(
                "published to '{topic}' without a $rid; closed"
            ));
        };
        let caller = Caller {
            transport: "dps",
            registration_id: &session.client_id,
            auth: &session.auth,
        };
        let reply = match request {
            "$dps/registrations/PUT/iotdps-register" => self.register(&caller, &publish.payload),
            "$dps/registrations/GET/iotdps-get-operationstatus" => {
                let Some(op) = query_value(query, "operationId") else {
                    return PublishVerdict::Disconnect(format!(
                        "polled '{topic}' without an operationId; closed"
                    ));
                };
                self.operation_status(&caller, op)
            }
            _ => {
                return PublishVerdict::Disconnect(format!(
                    "published to '{topic}', which DPS does not serve; closed"
                ))
            }
        };
        let mut reply_topic = format!("$dps/registrations/res/{}/?$rid={rid}", reply.status);
        if let Some(secs) = reply.retry_after {
            reply_topic.push_str(&format!("&retry-after={secs}"));
        }
        session.reply(reply_topic, reply.body.to_string().into_bytes());
        PublishVerdict::Accept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_and_queries_parse() {
        assert_eq!(
            Dps::parse_username("0ne00SANDBOX/registrations/dev01/api-version=2019-03-31&ClientVersion=azure-iot-device%2F2.14.0"),
            Some(("0ne00SANDBOX", "dev01"))
        );
        assert_eq!(
            Dps::parse_username("0ne00SANDBOX/registrations/dev01"),
            None
        );
        assert_eq!(
            Dps::parse_username("/registrations/dev01/api-version=1"),
            None
        );
        assert_eq!(
            query_value("$rid=7&operationId=4.x", "operationId"),
            Some("4.x")
        );
        assert_eq!(query_value("$rid=7", "$rid"), Some("7"));
        assert_eq!(query_value("$ridx=7", "$rid"), None);
    }
}
