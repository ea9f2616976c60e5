//! Azure DPS over MQTT as a WASM component: the twin of `scripts/flows/azure-dps.rhai` (its
//! MQTT transport), giving the same connection, the same errors and the same kv entries for
//! every attestation (symmetric key, group key, X.509). The protocol is described in the
//! script's header; the steps here follow it function by function.

use gatehost_sdk::flow::{
    Auth, ClientCertificate, Connection, Credentials, ErrorKind, Guest, ProtocolVersion,
};
use gatehost_sdk::host::{certs, crypto, kv, log, mqtt, time, types};
use gatehost_sdk::{error, Error};
use serde_json::{json, Value};

const REPLIES: &str = "$dps/registrations/res/";

struct AzureDps;

/// The flow's parameters, by name.
struct Params<'a>(&'a [(String, String)]);

impl Params<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn required(&self, name: &str) -> Result<&str, Error> {
        self.get(name).ok_or_else(|| {
            error(
                ErrorKind::InvalidInput,
                format!("missing parameters: {name}"),
            )
        })
    }

    fn number(&self, name: &str, fallback: u64) -> Result<u64, Error> {
        match self.get(name) {
            None => Ok(fallback),
            Some(text) => text.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                error(
                    ErrorKind::InvalidInput,
                    format!("parameter {name} must be a positive number, got '{text}'"),
                )
            }),
        }
    }
}

/// Exactly one attestation (gatehost has already checked the required parameters).
fn check_params(p: &Params) -> Result<(), Error> {
    let invalid = |m: &str| Err(error(ErrorKind::InvalidInput, m));
    let x509 = p.has("certificate") || p.has("key");
    let ways = [p.has("symmetric_key"), p.has("group_key"), x509]
        .iter()
        .filter(|w| **w)
        .count();
    if x509 {
        for name in ["certificate", "key"] {
            if !p.has(name) {
                return invalid(&format!(
                    "missing parameters: {name} (X.509 needs certificate and key)"
                ));
            }
        }
    }
    if ways == 0 {
        return invalid("missing parameters: symmetric_key | group_key | certificate + key");
    }
    if ways > 1 {
        return invalid("give one attestation: symmetric_key, group_key, or certificate + key");
    }
    if !p.has("registration_id") && !p.has("certificate") {
        return invalid("missing parameters: registration_id");
    }
    Ok(())
}

/// The device key for SAS attestation, or `None` for X.509.
fn device_key(p: &Params, id: &str) -> Result<Option<String>, Error> {
    if let Some(key) = p.get("symmetric_key") {
        return Ok(Some(key.to_string()));
    }
    if let Some(group) = p.get("group_key") {
        return Ok(Some(crypto::derive_device_key(group, id)?));
    }
    Ok(None)
}

fn key_ref(p: &Params) -> Result<String, Error> {
    Ok(certs::KeyPair::load(p.required("key")?, None)?.reference())
}

fn tls_options(p: &Params) -> Result<mqtt::TlsOptions, Error> {
    let client_certificate = match p.get("certificate") {
        Some(chain) => Some(ClientCertificate {
            chain_file: chain.to_string(),
            key_ref: key_ref(p)?,
        }),
        None => None,
    };
    Ok(mqtt::TlsOptions {
        ca_file: p.get("ca_file").map(str::to_string),
        client_certificate,
        server_name: None,
        alpn: vec![],
    })
}

/// A JSON value as the script would interpolate it: strings bare, the rest as JSON.
fn text(v: Option<&Value>, fallback: &str) -> String {
    match v {
        None => fallback.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// One DPS answer: status, retry-after seconds (0 when absent) and the JSON body.
struct Reply {
    status: i64,
    retry_after: u64,
    body: Value,
}

fn parse_reply(msg: &types::Message, rid: u32) -> Result<Reply, Error> {
    let rest = &msg.topic[REPLIES.len()..];
    let (status, query) = rest.split_once("/?").unwrap_or((rest, ""));
    let mut retry_after = 0;
    let mut got_rid = "";
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("retry-after", v)) => retry_after = v.parse().unwrap_or(0),
            Some(("$rid", v)) => got_rid = v,
            _ => {}
        }
    }
    if got_rid != rid.to_string() {
        return Err(error(
            ErrorKind::Remote,
            format!("DPS answered request {got_rid}, not {rid}"),
        ));
    }
    Ok(Reply {
        status: status.parse().unwrap_or(0),
        retry_after,
        body: serde_json::from_slice(&msg.payload).unwrap_or(Value::Null),
    })
}

fn request(
    session: &mqtt::Session,
    topic: String,
    body: &str,
    rid: u32,
    deadline: u64,
) -> Result<Reply, Error> {
    session.publish(&types::Message {
        topic,
        payload: body.as_bytes().to_vec(),
        qos: 1,
        retain: false,
        properties: vec![],
    })?;
    loop {
        let left = deadline.saturating_sub(crypto::now_unix());
        if left == 0 {
            return Err(error(
                ErrorKind::Timeout,
                "DPS did not answer before the flow's deadline",
            ));
        }
        let msg = session
            .receive((left * 1000).min(u64::from(u32::MAX)) as u32)?
            .ok_or_else(|| {
                error(
                    ErrorKind::Timeout,
                    format!("DPS did not answer request {rid}"),
                )
            })?;
        if msg.topic.starts_with(REPLIES) {
            return parse_reply(&msg, rid);
        }
    }
}

fn wait_secs(secs: u64, deadline: u64) -> Result<(), Error> {
    if crypto::now_unix() + secs > deadline {
        return Err(error(
            ErrorKind::Timeout,
            "the registration did not finish before the flow's deadline",
        ));
    }
    time::sleep_ms((secs * 1000) as u32)
}

/// The register request's body: {"registrationId", "payload"?}, or empty for MindConnect eu2.
fn register_body(p: &Params, id: &str) -> Result<String, Error> {
    if p.get("empty_register_body") == Some("true") {
        return Ok(String::new());
    }
    let mut body = json!({ "registrationId": id });
    if let Some(payload) = p.get("payload") {
        let value: Value = serde_json::from_str(payload).map_err(|e| {
            error(
                ErrorKind::InvalidInput,
                format!("parameter payload is not JSON: {e}"),
            )
        })?;
        body["payload"] = value;
    }
    Ok(body.to_string())
}

/// What to do after one answer.
enum Step {
    /// The registration finished (assigned, failed or disabled): its answer.
    Done(Value),
    /// Ask again (poll `op`, or register again when `None`) after `secs` seconds.
    Wait { op: Option<String>, secs: u64 },
}

fn step(reply: Reply, op: Option<String>, id: &str) -> Result<Step, Error> {
    let answer = reply.body;
    if reply.status == 200 || reply.status == 202 {
        let state = text(answer.get("status"), "");
        if state != "assigning" && !state.is_empty() {
            return Ok(Step::Done(answer));
        }
        return Ok(Step::Wait {
            op: Some(text(answer.get("operationId"), "")),
            secs: reply.retry_after.max(2),
        });
    }
    if reply.status == 429 {
        let secs = reply.retry_after.max(1);
        log::log(
            log::Level::Warn,
            &format!("DPS throttled '{id}': waiting {secs} s as it asks"),
        );
        return Ok(Step::Wait { op, secs });
    }
    let code = text(answer.get("errorCode"), &reply.status.to_string());
    let why = text(answer.get("message"), "no reason given");
    let kind = if reply.status >= 500 {
        ErrorKind::Remote
    } else {
        ErrorKind::Refused
    };
    Err(error(
        kind,
        format!(
            "DPS answered {} to '{id}' (errorCode {code}: {why})",
            reply.status
        ),
    ))
}

/// Register over MQTT, then poll the operation until the registration is done.
fn register_over_mqtt(
    p: &Params,
    scope: &str,
    id: &str,
    key: Option<&str>,
    ttl: u64,
    deadline: u64,
) -> Result<Value, Error> {
    let password = match key {
        Some(key) => Some(crypto::sas_token(
            &format!("{scope}/registrations/{id}"),
            key,
            Some("registration"),
            crypto::now_unix() + ttl,
        )?),
        None => None,
    };
    let port = p.number("dps_port", 8883)?;
    let session = mqtt::Session::connect(&mqtt::ConnectOptions {
        host: p
            .get("dps_host")
            .unwrap_or("global.azure-devices-provisioning.net")
            .to_string(),
        port: u16::try_from(port)
            .map_err(|_| error(ErrorKind::InvalidInput, "dps_port is not a port"))?,
        client_id: id.to_string(),
        username: Some(format!("{scope}/registrations/{id}/api-version=2019-03-31")),
        password,
        keep_alive_secs: 60,
        clean_session: true,
        protocol: ProtocolVersion::Mqtt311,
        tls: Some(tls_options(p)?),
        connect_timeout_ms: 30000,
    })?;
    session.subscribe("$dps/registrations/res/#", 1)?;
    let body = register_body(p, id)?;
    let mut rid = 0;
    let mut op: Option<String> = None;
    loop {
        rid += 1;
        let reply = match &op {
            None => request(
                &session,
                format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}"),
                &body,
                rid,
                deadline,
            )?,
            Some(op) => request(
                &session,
                format!(
                    "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}"
                ),
                "",
                rid,
                deadline,
            )?,
        };
        match step(reply, op.clone(), id)? {
            Step::Done(answer) => {
                session.disconnect()?;
                return Ok(answer);
            }
            Step::Wait { op: next, secs } => {
                op = next;
                wait_secs(secs, deadline)?;
            }
        }
    }
}

/// The IoT Hub connection of an assigned registration.
fn connection(
    p: &Params,
    answer: &Value,
    key: Option<&str>,
    ttl: u64,
) -> Result<Connection, Error> {
    let state = &answer["registrationState"];
    let hub = text(state.get("assignedHub"), "");
    let device = text(state.get("deviceId"), "");
    let version = p.get("hub_api_version").unwrap_or("2021-04-12");
    let port = p.number("hub_port", 8883)?;
    let (auth, expires_at) = match key {
        None => (
            Auth::ClientCertificate(ClientCertificate {
                chain_file: p.required("certificate")?.to_string(),
                key_ref: key_ref(p)?,
            }),
            None,
        ),
        Some(key) => {
            // The device key stays in the flow's own kv namespace, for `refresh`.
            kv::set(&format!("device-key/{device}"), key.as_bytes())?;
            let expiry = crypto::now_unix() + ttl;
            let token = crypto::sas_token(&format!("{hub}/devices/{device}"), key, None, expiry)?;
            (Auth::Password(token), Some(expiry))
        }
    };
    Ok(Connection {
        host: hub.clone(),
        port: u16::try_from(port)
            .map_err(|_| error(ErrorKind::InvalidInput, "hub_port is not a port"))?,
        client_id: device.clone(),
        username: Some(format!("{hub}/{device}/?api-version={version}")),
        auth,
        ca_file: p.get("ca_file").map(str::to_string),
        server_name: None,
        alpn: vec![],
        protocol: ProtocolVersion::Mqtt311,
        keep_alive_secs: 60,
        attributes: vec![
            ("assigned-hub".into(), hub),
            ("device-id".into(), device),
            (
                "registration-id".into(),
                text(state.get("registrationId"), ""),
            ),
            ("token-ttl-secs".into(), ttl.to_string()),
        ],
        expires_at,
    })
}

impl Guest for AzureDps {
    fn onboard(params: Vec<(String, String)>) -> Result<Connection, Error> {
        let p = Params(&params);
        check_params(&p)?;
        if p.get("transport").is_some_and(|t| t != "mqtt") {
            return Err(error(
                ErrorKind::Unsupported,
                "this WASM flow registers over MQTT only; use azure-dps-rest for HTTPS",
            ));
        }
        let scope = p.required("id_scope")?;
        let id = match p.get("registration_id") {
            Some(id) => id.to_string(),
            None => certs::read_chain(p.required("certificate")?)?
                .first()
                .map(|c| c.subject_cn.clone())
                .ok_or_else(|| error(ErrorKind::InvalidInput, "the certificate file is empty"))?,
        };
        let deadline = crypto::now_unix() + p.number("timeout_secs", 90)?;
        let ttl = p.number("token_ttl_secs", 3600)?;
        let key = device_key(&p, &id)?;
        let answer = register_over_mqtt(&p, scope, &id, key.as_deref(), ttl, deadline)?;
        let state = text(answer.get("status"), "");
        if state != "assigned" {
            let reg = &answer["registrationState"];
            let code = text(reg.get("errorCode"), "-");
            let why = text(reg.get("errorMessage"), "no reason given");
            return Err(error(
                ErrorKind::Refused,
                format!("DPS registration of '{id}' ended '{state}' (errorCode {code}: {why})"),
            ));
        }
        connection(&p, &answer, key.as_deref(), ttl)
    }

    /// A fresh hub SAS token (X.509 connections need nothing).
    fn refresh(conn: Connection) -> Result<Credentials, Error> {
        if !matches!(conn.auth, Auth::Password(_)) {
            return Ok(Credentials {
                username: None,
                password: None,
                expires_at: None,
            });
        }
        let attr = |name: &str| {
            conn.attributes
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let device = attr("device-id");
        let key = kv::get(&format!("device-key/{device}"))?.ok_or_else(|| {
            error(
                ErrorKind::NotFound,
                format!("no device key for '{device}': onboard it again"),
            )
        })?;
        let key = String::from_utf8_lossy(&key).into_owned();
        let ttl: u64 = attr("token-ttl-secs").parse().unwrap_or(3600);
        let expiry = crypto::now_unix() + ttl;
        Ok(Credentials {
            username: conn.username.clone(),
            password: Some(crypto::sas_token(
                &format!("{}/devices/{device}", attr("assigned-hub")),
                &key,
                None,
                expiry,
            )?),
            expires_at: Some(expiry),
        })
    }
}

gatehost_sdk::export_flow!(AzureDps);
