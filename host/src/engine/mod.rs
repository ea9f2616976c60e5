//! The plugin engines: WASM components (wasmtime) and Rhai scripts, behind one pair of traits
//! ([`RulePlugin`], [`FlowPlugin`]) so the rest of gatehost never knows which engine runs a plugin.

pub mod limits;
pub mod rhai;
pub mod wasm;

use crate::model::{Connection, Credentials, Message, Outbound, Pair, PluginError};
use std::path::PathBuf;

/// A topic-translation rule: one message in, zero or more outbound messages out.
pub trait RulePlugin: Send + Sync {
    fn translate(&self, msg: &Message) -> Result<Vec<Outbound>, PluginError>;
}

/// An onboarding flow: register a device and describe its connection; refresh its credentials.
pub trait FlowPlugin: Send + Sync {
    fn onboard(&self, params: &[Pair]) -> Result<Connection, PluginError>;
    fn refresh(&self, conn: &Connection) -> Result<Credentials, PluginError>;
}

/// Why a plugin could not be loaded. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a WebAssembly component: {reason}")]
    NotAComponent { path: PathBuf, reason: String },
    #[error("{path} does not compile: {reason}")]
    Compile { path: PathBuf, reason: String },
    #[error("{path} does not implement the gatehost:plugin/{world}@{version} world: {reason}")]
    WorldMismatch {
        path: PathBuf,
        world: &'static str,
        version: &'static str,
        reason: String,
    },
    #[error("{path} failed to start: {reason}")]
    Instantiate { path: PathBuf, reason: String },
    #[error("{path}:{line}:{column}: syntax error: {message}")]
    RhaiSyntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path} does not define `fn {function}` (a {kind} script must)")]
    MissingFunction {
        path: PathBuf,
        function: &'static str,
        kind: &'static str,
    },
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

/// The WIT package version this host implements (`wit/worlds.wit`).
pub(crate) const WORLD_VERSION: &str = "0.1.0";
