//! Resource limits applied to every plugin call, in both engines.

use serde::Deserialize;
use std::time::Duration;

/// Limits for one plugin. Rules get a short deadline, flows (which talk to the network) a long one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock deadline of one call (WASM: epoch deadline; Rhai: progress callback).
    pub timeout: Duration,
    /// Linear memory cap of one WASM instance.
    pub memory_bytes: usize,
    /// Rhai: operations per call.
    pub max_operations: u64,
    /// Rhai: longest string, in bytes.
    pub max_string_bytes: usize,
    /// Rhai: most array elements / map entries.
    pub max_array_len: usize,
    pub max_map_len: usize,
    /// Rhai: deepest function call nesting.
    pub max_call_depth: usize,
    /// MQTT sessions the plugin may hold open at once, over all its concurrent calls (a flow
    /// onboarding 100 devices at once holds up to 100).
    pub max_sessions: usize,
}

pub const RULE_TIMEOUT: Duration = Duration::from_secs(1);
pub const FLOW_TIMEOUT: Duration = Duration::from_secs(120);
pub const MEMORY_BYTES: usize = 64 * 1024 * 1024;

impl Limits {
    pub fn rule() -> Self {
        Limits {
            timeout: RULE_TIMEOUT,
            memory_bytes: MEMORY_BYTES,
            max_operations: 1_000_000,
            max_string_bytes: 1024 * 1024,
            max_array_len: 65_536,
            max_map_len: 16_384,
            max_call_depth: 64,
            max_sessions: crate::caps::MAX_SESSIONS,
        }
    }

    pub fn flow() -> Self {
        Limits {
            timeout: FLOW_TIMEOUT,
            max_operations: 50_000_000,
            max_sessions: 256,
            ..Limits::rule()
        }
    }

    /// Apply the overrides of a manifest's or the config's `[limits]` table.
    pub fn with_overrides(mut self, o: &LimitOverrides) -> Self {
        if let Some(ms) = o.timeout_ms {
            self.timeout = Duration::from_millis(ms);
        }
        if let Some(mib) = o.memory_mib {
            self.memory_bytes = mib as usize * 1024 * 1024;
        }
        if let Some(ops) = o.max_operations {
            self.max_operations = ops;
        }
        if let Some(n) = o.max_sessions {
            self.max_sessions = n;
        }
        self
    }
}

/// Optional limit overrides, as written in TOML (`[limits]` in the config or a manifest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// Deadline of one call, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Memory cap of one WASM instance, in MiB.
    pub memory_mib: Option<u32>,
    /// Rhai operations per call.
    pub max_operations: Option<u64>,
    /// MQTT sessions open at once.
    pub max_sessions: Option<usize>,
}
