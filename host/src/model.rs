//! The host-side data model shared by the engines, the CLI and (later) the bridge: messages,
//! outbound messages, connections, and the one plugin error type. Mirrors `wit/types.wit`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A key/value pair (MQTT 5 user property, HTTP header, flow parameter, attribute).
pub type Pair = (String, String);

/// An MQTT message as it travels through the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub topic: String,
    #[serde(with = "payload_serde")]
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<Pair>,
}

impl Message {
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>, qos: u8) -> Self {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain: false,
            properties: Vec::new(),
        }
    }
}

/// Where an outbound message goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Destination {
    /// The upstream session of the named device.
    Upstream(String),
    /// Back to the local broker.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbound {
    pub destination: Destination,
    #[serde(flatten)]
    pub message: Message,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProtocolVersion {
    #[default]
    Mqtt311,
    Mqtt5,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCertificate {
    pub chain_file: String,
    pub key_ref: String,
}

/// How a connection authenticates. `Debug` never prints a secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Auth {
    None,
    Password {
        password: String,
    },
    ClientCertificate(ClientCertificate),
    CertificateAndPassword {
        certificate: ClientCertificate,
        password: String,
    },
}

impl Auth {
    /// A short name for logs and CLI output ("password", "client-certificate", ...).
    pub(crate) fn kind_name(&self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::Password { .. } => "password",
            Auth::ClientCertificate(_) => "client-certificate",
            Auth::CertificateAndPassword { .. } => "client-certificate+password",
        }
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::ClientCertificate(c) | Auth::CertificateAndPassword { certificate: c, .. } => {
                write!(f, "{}({})", self.kind_name(), c.chain_file)
            }
            _ => f.write_str(self.kind_name()),
        }
    }
}

/// A live, authenticated cloud endpoint as produced by a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    #[serde(default)]
    pub username: Option<String>,
    pub auth: Auth,
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default)]
    pub alpn: Vec<String>,
    #[serde(default)]
    pub protocol: ProtocolVersion,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u16,
    #[serde(default)]
    pub attributes: Vec<Pair>,
    #[serde(default)]
    pub expires_at: Option<u64>,
}

fn default_keep_alive() -> u16 {
    60
}

/// Fresh credentials for an existing connection. `Debug` never prints the password.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub expires_at: Option<u64>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Error categories a plugin can match on (`wit/types.wit`, `error-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    Unsupported,
    PermissionDenied,
    InvalidInput,
    NotFound,
    Timeout,
    Refused,
    Closed,
    Tls,
    Io,
    LimitExceeded,
    Remote,
    Plugin,
}

impl ErrorKind {
    pub(crate) const ALL: [ErrorKind; 12] = [
        ErrorKind::Unsupported,
        ErrorKind::PermissionDenied,
        ErrorKind::InvalidInput,
        ErrorKind::NotFound,
        ErrorKind::Timeout,
        ErrorKind::Refused,
        ErrorKind::Closed,
        ErrorKind::Tls,
        ErrorKind::Io,
        ErrorKind::LimitExceeded,
        ErrorKind::Remote,
        ErrorKind::Plugin,
    ];

    /// The WIT name (`invalid-input`), also used by Rhai scripts.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::PermissionDenied => "permission-denied",
            ErrorKind::InvalidInput => "invalid-input",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Refused => "refused",
            ErrorKind::Closed => "closed",
            ErrorKind::Tls => "tls",
            ErrorKind::Io => "io",
            ErrorKind::LimitExceeded => "limit-exceeded",
            ErrorKind::Remote => "remote",
            ErrorKind::Plugin => "plugin",
        }
    }

    pub fn parse(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one error of the plugin API: raised by host capabilities and by plugins alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct PluginError {
    pub kind: ErrorKind,
    pub message: String,
}

impl PluginError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        PluginError {
            kind,
            message: message.into(),
        }
    }
}

/// Longest MQTT topic name (the length prefix is 16 bits).
pub(crate) const MAX_TOPIC_BYTES: usize = 65_535;

/// Check what a rule returned, identically for both engines: a concrete topic (no wildcards, no
/// NUL, at most 65 535 bytes), QoS 0-2, a named upstream device.
pub(crate) fn validate_outbound(out: &[Outbound]) -> Result<(), PluginError> {
    for (i, o) in out.iter().enumerate() {
        let n = i + 1;
        let bad = |what: String| {
            Err(PluginError::new(
                ErrorKind::Plugin,
                format!("outbound message {n} {what}"),
            ))
        };
        let topic = &o.message.topic;
        if topic.is_empty() {
            return bad("has an empty topic".into());
        }
        if topic.len() > MAX_TOPIC_BYTES {
            return bad(format!(
                "has a topic of {} bytes (at most {})",
                topic.len(),
                MAX_TOPIC_BYTES
            ));
        }
        if topic.bytes().any(|b| matches!(b, b'+' | b'#' | 0)) {
            return bad(format!(
                "has topic '{topic}' with a wildcard or NUL; a published topic must be concrete"
            ));
        }
        if o.message.qos > 2 {
            return bad(format!("has QoS {}; it must be 0, 1 or 2", o.message.qos));
        }
        if let Destination::Upstream(device) = &o.destination {
            if device.is_empty() {
                return bad("is for an upstream device with an empty name".into());
            }
        }
    }
    Ok(())
}

/// A plugin, kv namespace or key name: 1-64 characters of a-z, 0-9, `-` or `_`, starting with a
/// letter or digit.
pub(crate) fn is_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

/// TOML errors span several lines (a source excerpt); keep the first sentence and the location.
pub(crate) fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && !l.chars().all(|c| c == '^'))
        .filter(|l| !l.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_checks_name_the_message() {
        let ok = Outbound {
            destination: Destination::Local,
            message: Message::new("a/b", "x", 1),
        };
        assert!(validate_outbound(std::slice::from_ref(&ok)).is_ok());
        let mut wild = ok.clone();
        wild.message.topic = "a/+".into();
        let e = validate_outbound(&[ok.clone(), wild]).unwrap_err();
        assert!(
            e.message.starts_with("outbound message 2 has topic 'a/+'"),
            "{e}"
        );
        let mut qos = ok;
        qos.message.qos = 3;
        assert_eq!(
            validate_outbound(&[qos]).unwrap_err().message,
            "outbound message 1 has QoS 3; it must be 0, 1 or 2"
        );
    }

    #[test]
    fn binary_payloads_serialize_as_base64() {
        let m = Message::new("t", vec![0xff, 0], 0);
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(r#""payload":{"base64":"/wA="}"#), "{json}");
        let back: Message = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let auth = Auth::Password {
            password: "SharedAccessSignature sr=x".into(),
        };
        assert_eq!(format!("{auth:?}"), "password");
        let creds = Credentials {
            username: None,
            password: Some("jwt".into()),
            expires_at: None,
        };
        assert!(!format!("{creds:?}").contains("jwt"));
    }
}

/// Payloads serialize as a UTF-8 string when they are valid UTF-8, otherwise as
/// `{"base64": "..."}`, so JSON output stays readable and lossless.
mod payload_serde {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(payload: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(payload) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry(
                    "base64",
                    &base64::engine::general_purpose::STANDARD.encode(payload),
                )?;
                map.end()
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Binary { base64: String },
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Text(t) => Ok(t.into_bytes()),
            Repr::Binary { base64 } => base64::engine::general_purpose::STANDARD
                .decode(base64)
                .map_err(serde::de::Error::custom),
        }
    }
}
