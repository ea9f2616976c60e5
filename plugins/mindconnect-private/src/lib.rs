//! Siemens Insights Hub private-cloud agents as a WASM component: the twin of
//! `scripts/flows/mindconnect-private.rhai`, giving the same connection. Username
//! `_CertificateBearer`, password an RS256 JWT with x5c minted by the host with the agent's key
//! handle (the key never enters the plugin), fresh for every connection. The broker closes a new
//! agent's first connections while it provisions it; the `closed` error makes gatehost retry.

use gatehost_sdk::flow::{Auth, Connection, Credentials, ErrorKind, Guest, ProtocolVersion};
use gatehost_sdk::host::{certs, crypto, mqtt};
use gatehost_sdk::{error, Error};

struct MindConnectPrivate;

fn param<'a>(params: &'a [(String, String)], name: &str) -> Result<&'a str, Error> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| {
            error(
                ErrorKind::InvalidInput,
                format!("missing parameters: {name}"),
            )
        })
}

fn attribute(conn: &Connection, name: &str) -> Result<String, Error> {
    conn.attributes
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .ok_or_else(|| {
            error(
                ErrorKind::InvalidInput,
                format!("the connection has no '{name}' attribute: onboard it again"),
            )
        })
}

/// A fresh JWT for `conn` and its expiry.
fn jwt(conn: &Connection) -> Result<(String, u64), Error> {
    let key = certs::KeyPair::open(&attribute(conn, "key-ref")?)?;
    let ttl: u32 = attribute(conn, "token-ttl-secs")?.parse().unwrap_or(3600);
    let expiry = crypto::now_unix() + u64::from(ttl);
    let token = crypto::mindconnect_jwt(
        &key,
        &attribute(conn, "agent-chain")?,
        &conn.client_id,
        &attribute(conn, "tenant")?,
        ttl,
    )?;
    Ok((token, expiry))
}

impl Guest for MindConnectPrivate {
    fn onboard(params: Vec<(String, String)>) -> Result<Connection, Error> {
        let ttl = match params.iter().find(|(k, _)| k == "token_ttl_secs") {
            None => 3600,
            Some((_, text)) => text
                .parse::<u32>()
                .ok()
                .filter(|t| (1..=3600).contains(t))
                .ok_or_else(|| {
                    error(
                        ErrorKind::InvalidInput,
                        format!("token_ttl_secs must be 1 to 3600 (Insights Hub accepts at most an hour), got '{text}'"),
                    )
                })?,
        };
        let tenant = param(&params, "tenant")?;
        let chain = param(&params, "certificate")?;
        let agent = certs::read_chain(chain)?
            .first()
            .map(|c| c.subject_cn.clone())
            .ok_or_else(|| error(ErrorKind::InvalidInput, "the certificate file is empty"))?;
        let client_id = format!("{tenant}_{agent}");
        let port = match params.iter().find(|(k, _)| k == "port") {
            None => 8883,
            Some((_, text)) => text.parse::<u16>().map_err(|_| {
                error(
                    ErrorKind::InvalidInput,
                    format!("port must be a port number, got '{text}'"),
                )
            })?,
        };
        let key_ref = certs::KeyPair::load(param(&params, "key")?, None)?.reference();
        let mut conn = Connection {
            host: param(&params, "broker_host")?.to_string(),
            port,
            client_id: client_id.clone(),
            username: Some("_CertificateBearer".into()),
            auth: Auth::None,
            ca_file: params
                .iter()
                .find(|(k, _)| k == "ca_file")
                .map(|(_, v)| v.clone()),
            server_name: None,
            alpn: vec![],
            protocol: ProtocolVersion::Mqtt311,
            keep_alive_secs: 60,
            attributes: vec![
                ("tenant".into(), tenant.to_string()),
                ("agent".into(), agent),
                ("agent-chain".into(), chain.to_string()),
                ("key-ref".into(), key_ref),
                ("token-ttl-secs".into(), ttl.to_string()),
                (
                    "publish-topic-prefix".into(),
                    format!("tc/{tenant}/{client_id}/i/"),
                ),
                (
                    "subscribe-topic-prefix".into(),
                    format!("tc/{tenant}/{client_id}/o/"),
                ),
            ],
            expires_at: None,
        };
        let (token, expiry) = jwt(&conn)?;
        conn.auth = Auth::Password(token);
        conn.expires_at = Some(expiry);
        mqtt::Session::open(&conn)?.disconnect()?;
        Ok(conn)
    }

    /// A fresh JWT: Insights Hub wants a new one for every connection.
    fn refresh(conn: Connection) -> Result<Credentials, Error> {
        let (token, expiry) = jwt(&conn)?;
        Ok(Credentials {
            username: Some("_CertificateBearer".into()),
            password: Some(token),
            expires_at: Some(expiry),
        })
    }
}

gatehost_sdk::export_flow!(MindConnectPrivate);
