//! MQTT connection failures said in one sentence naming the endpoint: network and TLS errors
//! of our own connections, and rumqttc's MQTT 5 errors (the external local broker's session).

use super::err;
use super::wire::reason_text;
use crate::model::{ErrorKind, PluginError};
use crate::pki::tls;
use rumqttc::v5;

pub(crate) fn tls_failure(endpoint: &str, why: &str) -> PluginError {
    err(ErrorKind::Tls, format!("TLS with {endpoint} failed: {why}"))
}

pub fn refused(why: &str) -> PluginError {
    err(
        ErrorKind::Refused,
        format!("the broker refused the connection: {why}"),
    )
}

pub(crate) fn io_failure(endpoint: &str, io: &std::io::Error) -> PluginError {
    use std::io::ErrorKind as Io;
    if let Some(inner) = tls::find_rustls_error(io) {
        return tls_failure(endpoint, &tls::describe(inner));
    }
    match io.kind() {
        Io::UnexpectedEof | Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe => err(
            ErrorKind::Closed,
            format!("{endpoint} closed the connection ({io})"),
        ),
        Io::ConnectionRefused => err(
            ErrorKind::Io,
            format!("{endpoint} is unreachable: connection refused (is a broker listening?)"),
        ),
        Io::TimedOut => err(
            ErrorKind::Timeout,
            format!("{endpoint} did not answer in time"),
        ),
        _ if io.to_string().contains("lookup") || io.to_string().contains("resolve") => err(
            ErrorKind::Io,
            format!("cannot resolve the host of {endpoint}: {io}"),
        ),
        _ => err(
            ErrorKind::Io,
            format!("network error with {endpoint}: {io}"),
        ),
    }
}

/// An rumqttc MQTT 5 connection error in one sentence naming `endpoint`.
pub(crate) fn v5_error(endpoint: &str, e: v5::ConnectionError) -> PluginError {
    use v5::ConnectionError as E;
    match e {
        E::ConnectionRefused(code) | E::MqttState(v5::StateError::ConnFail { reason: code }) => {
            refused(&reason_text(&format!("{code:?}")))
        }
        E::Timeout(_) => err(
            ErrorKind::Timeout,
            format!("{endpoint} did not answer in time"),
        ),
        E::Tls(rumqttc::TlsError::Io(io)) | E::Io(io) => io_failure(endpoint, &io),
        E::MqttState(v5::StateError::Io(io))
        | E::MqttState(v5::StateError::Deserialization(v5::mqttbytes::Error::Io(io))) => {
            io_failure(endpoint, &io)
        }
        E::MqttState(v5::StateError::ServerDisconnect {
            reason_code,
            reason_string,
        }) => err(
            ErrorKind::Closed,
            format!(
                "{endpoint} closed the connection: {}{}",
                reason_text(&format!("{reason_code:?}")),
                reason_string.map(|s| format!(" ({s})")).unwrap_or_default()
            ),
        ),
        E::Tls(rumqttc::TlsError::TLS(e)) => tls_failure(endpoint, &tls::describe(&e)),
        E::Tls(e) => tls_failure(endpoint, &e.to_string()),
        other => err(
            ErrorKind::Closed,
            format!("{endpoint} closed the connection: {other}"),
        ),
    }
}
