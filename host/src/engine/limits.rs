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
    /// Rhai: largest blob (a binary payload is one), in bytes.
    pub max_blob_bytes: usize,
    /// Rhai: most array elements / map entries.
    pub max_array_len: usize,
    pub max_map_len: usize,
    /// Rhai: deepest function call nesting.
    pub max_call_depth: usize,
    /// MQTT sessions the plugin may hold open at once, over all its concurrent calls (a flow
    /// onboarding 100 devices at once holds up to 100).
    pub max_sessions: usize,
}

pub(crate) const RULE_TIMEOUT: Duration = Duration::from_secs(1);
pub(crate) const FLOW_TIMEOUT: Duration = Duration::from_secs(120);
pub(crate) const MEMORY_BYTES: usize = 64 * 1024 * 1024;
/// Rhai's default string and blob limits: twice the local broker's default packet limit
/// (1 MiB), so a payload of the largest size and a re-encoding of it both fit.
pub(crate) const DATA_BYTES: usize = 2 * 1024 * 1024;

impl Limits {
    pub fn rule() -> Self {
        Limits {
            timeout: RULE_TIMEOUT,
            memory_bytes: MEMORY_BYTES,
            max_operations: 1_000_000,
            max_string_bytes: DATA_BYTES,
            max_blob_bytes: DATA_BYTES,
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

    /// Strings and blobs of twice `max_payload_bytes` at least: whatever payload the local broker
    /// takes passes through a Rhai rule.
    pub(crate) fn for_payloads(mut self, max_payload_bytes: usize) -> Self {
        let data = max_payload_bytes.saturating_mul(2);
        self.max_string_bytes = self.max_string_bytes.max(data);
        self.max_blob_bytes = self.max_blob_bytes.max(data);
        self
    }

    /// These limits in the units a `[limits]` table writes them (every field set).
    fn as_overrides(&self) -> LimitOverrides {
        LimitOverrides {
            timeout_ms: Some(self.timeout.as_millis() as u64),
            memory_mib: Some((self.memory_bytes >> 20) as u32),
            max_operations: Some(self.max_operations),
            max_sessions: Some(self.max_sessions),
            max_string_kib: Some(self.max_string_bytes / 1024),
            max_blob_kib: Some(self.max_blob_bytes / 1024),
        }
    }

    /// The limits a manifest asks for, within these (the operator's ceilings): a manifest may
    /// lower any limit, never raise one. Returns what was asked above a ceiling, to be said.
    pub fn within(self, asked: &LimitOverrides) -> (Self, Vec<String>) {
        let ceiling = self.as_overrides().entries();
        let mut allowed = LimitOverrides::default();
        let mut capped = Vec::new();
        for ((name, wanted), (_, most)) in asked.entries().into_iter().zip(ceiling) {
            match (wanted, most) {
                (Some(w), Some(m)) if w > m => {
                    capped.push(format!("{name} = {w} (the config allows {m})"))
                }
                (Some(w), _) => allowed.set(name, w),
                _ => {}
            }
        }
        (self.with_overrides(&allowed), capped)
    }

    /// Apply the overrides of the config's `[limits]` tables (the operator's word).
    pub(crate) fn with_overrides(mut self, o: &LimitOverrides) -> Self {
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
        if let Some(kib) = o.max_string_kib {
            self.max_string_bytes = kib.saturating_mul(1024);
        }
        if let Some(kib) = o.max_blob_kib {
            self.max_blob_bytes = kib.saturating_mul(1024);
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
    /// Rhai: longest string, in KiB.
    pub max_string_kib: Option<usize>,
    /// Rhai: largest blob, in KiB.
    pub max_blob_kib: Option<usize>,
}

impl LimitOverrides {
    /// Every limit by its name in a `[limits]` table, as written there: the one list that the
    /// ceilings ([`Limits::within`]) and the upgrade check (`bundle::store`) go through.
    pub fn entries(&self) -> [(&'static str, Option<u64>); 6] {
        [
            ("timeout_ms", self.timeout_ms),
            ("memory_mib", self.memory_mib.map(u64::from)),
            ("max_operations", self.max_operations),
            ("max_sessions", self.max_sessions.map(|n| n as u64)),
            ("max_string_kib", self.max_string_kib.map(|n| n as u64)),
            ("max_blob_kib", self.max_blob_kib.map(|n| n as u64)),
        ]
    }

    fn set(&mut self, name: &str, value: u64) {
        match name {
            "timeout_ms" => self.timeout_ms = Some(value),
            "memory_mib" => self.memory_mib = Some(value.min(u32::MAX as u64) as u32),
            "max_operations" => self.max_operations = Some(value),
            "max_sessions" => self.max_sessions = Some(value as usize),
            "max_string_kib" => self.max_string_kib = Some(value as usize),
            "max_blob_kib" => self.max_blob_kib = Some(value as usize),
            other => unreachable!("'{other}' is not among LimitOverrides::entries"),
        }
    }
}
