//! Keys, certificates, TLS and the cryptographic primitives of the whole host: the `certs` and
//! `crypto` capabilities hand them to plugins (by key handle, never the private half), and the
//! bridge, the embedded broker, the provider emulators and the `gatehost certs` commands use them
//! directly. Nothing here knows about plugins.
//!
//! - [`keys`]: private keys (RSA, P-256) from and to PEM, generated or loaded, zeroized.
//! - [`x509`]: parsing, checking and issuing certificates and CSRs (X.509 v1 and v3).
//! - [`tls`]: rustls trust anchors, certified keys, handshake-signature and client-certificate
//!   verification.
//! - [`crypto`]: hashes, HMAC, base64, SAS tokens, DPS derived keys, the clock.
//! - [`jwt`]: JWTs signed by a host-held key, the MindConnect token.
//! - [`pem`]: PEM written with LF, and what a text without a PEM block is.

pub mod crypto;
pub mod jwt;
pub mod keys;
pub mod pem;
pub mod tls;
pub mod x509;
