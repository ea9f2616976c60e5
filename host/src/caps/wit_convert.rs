//! Conversions between the WIT-generated types (`caps::wit::plugin::types`) and the host model.

use super::wit::plugin::types as wit;
use crate::model::{self, ErrorKind, PluginError};

impl From<PluginError> for wit::Error {
    fn from(e: PluginError) -> Self {
        wit::Error {
            kind: e.kind.into(),
            message: e.message,
        }
    }
}

impl From<wit::Error> for PluginError {
    fn from(e: wit::Error) -> Self {
        PluginError::new(e.kind.into(), e.message)
    }
}

macro_rules! error_kinds {
    ($($name:ident),* $(,)?) => {
        impl From<ErrorKind> for wit::ErrorKind {
            fn from(k: ErrorKind) -> Self {
                match k { $(ErrorKind::$name => wit::ErrorKind::$name,)* }
            }
        }
        impl From<wit::ErrorKind> for ErrorKind {
            fn from(k: wit::ErrorKind) -> Self {
                match k { $(wit::ErrorKind::$name => ErrorKind::$name,)* }
            }
        }
    };
}
error_kinds!(
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
);

impl From<&model::Message> for wit::Message {
    fn from(m: &model::Message) -> Self {
        wit::Message {
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            qos: m.qos,
            retain: m.retain,
            properties: m.properties.clone(),
        }
    }
}

impl From<wit::Message> for model::Message {
    fn from(m: wit::Message) -> Self {
        model::Message {
            topic: m.topic,
            payload: m.payload,
            qos: m.qos,
            retain: m.retain,
            properties: m.properties,
        }
    }
}

impl From<wit::Outbound> for model::Outbound {
    fn from(o: wit::Outbound) -> Self {
        model::Outbound {
            destination: match o.destination {
                wit::Destination::Upstream(device) => model::Destination::Upstream(device),
                wit::Destination::Local => model::Destination::Local,
            },
            message: o.message.into(),
        }
    }
}

impl From<wit::ClientCertificate> for model::ClientCertificate {
    fn from(c: wit::ClientCertificate) -> Self {
        model::ClientCertificate {
            chain_file: c.chain_file,
            key_ref: c.key_ref,
        }
    }
}

impl From<model::ClientCertificate> for wit::ClientCertificate {
    fn from(c: model::ClientCertificate) -> Self {
        wit::ClientCertificate {
            chain_file: c.chain_file,
            key_ref: c.key_ref,
        }
    }
}

impl From<wit::Connection> for model::Connection {
    fn from(c: wit::Connection) -> Self {
        model::Connection {
            host: c.host,
            port: c.port,
            client_id: c.client_id,
            username: c.username,
            auth: match c.auth {
                wit::Auth::None => model::Auth::None,
                wit::Auth::Password(password) => model::Auth::Password { password },
                wit::Auth::ClientCertificate(cert) => model::Auth::ClientCertificate(cert.into()),
                wit::Auth::CertificateAndPassword((cert, password)) => {
                    model::Auth::CertificateAndPassword {
                        certificate: cert.into(),
                        password,
                    }
                }
            },
            ca_file: c.ca_file,
            server_name: c.server_name,
            alpn: c.alpn,
            protocol: match c.protocol {
                wit::ProtocolVersion::Mqtt311 => model::ProtocolVersion::Mqtt311,
                wit::ProtocolVersion::Mqtt5 => model::ProtocolVersion::Mqtt5,
            },
            keep_alive_secs: c.keep_alive_secs,
            attributes: c.attributes,
            expires_at: c.expires_at,
        }
    }
}

impl From<&model::Connection> for wit::Connection {
    fn from(c: &model::Connection) -> Self {
        let c = c.clone();
        wit::Connection {
            host: c.host,
            port: c.port,
            client_id: c.client_id,
            username: c.username,
            auth: match c.auth {
                model::Auth::None => wit::Auth::None,
                model::Auth::Password { password } => wit::Auth::Password(password),
                model::Auth::ClientCertificate(cert) => wit::Auth::ClientCertificate(cert.into()),
                model::Auth::CertificateAndPassword {
                    certificate,
                    password,
                } => wit::Auth::CertificateAndPassword((certificate.into(), password)),
            },
            ca_file: c.ca_file,
            server_name: c.server_name,
            alpn: c.alpn,
            protocol: match c.protocol {
                model::ProtocolVersion::Mqtt311 => wit::ProtocolVersion::Mqtt311,
                model::ProtocolVersion::Mqtt5 => wit::ProtocolVersion::Mqtt5,
            },
            keep_alive_secs: c.keep_alive_secs,
            attributes: c.attributes,
            expires_at: c.expires_at,
        }
    }
}

impl From<wit::Credentials> for model::Credentials {
    fn from(c: wit::Credentials) -> Self {
        model::Credentials {
            username: c.username,
            password: c.password,
            expires_at: c.expires_at,
        }
    }
}
