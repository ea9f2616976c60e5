//! The Rhai engine: one `rhai::Engine` per plugin, with the host capabilities registered (bound
//! to that plugin's permissions), no module imports, no file or OS access, and limits on
//! operations, string/array/map sizes, call depth and wall-clock time per call.
//!
//! A rule script defines `fn translate(msg)`; a flow script defines `fn onboard(params)` and
//! `fn refresh(conn)`. Top-level statements are not run per call: keep state in `kv`.

use super::limits::Limits;
use super::{FlowPlugin, LoadError, RulePlugin};
use crate::caps::rhai_glue::{message_from_map, message_to_dynamic};
use crate::caps::{self, CapContext};
use crate::model::{
    validate_outbound, Connection, Credentials, Destination, ErrorKind, Message, Outbound, Pair,
    PluginError,
};
use rhai::module_resolvers::DummyModuleResolver;
use rhai::{
    Array, CallFnOptions, Dynamic, Engine, EvalAltResult, FuncArgs, Map, Position, Scope, AST,
};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::Instant;
use thread_local::ThreadLocal;

thread_local! {
    /// Deadline of the Rhai call running on this thread (checked by the progress callback).
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Ops between two wall-clock checks: cheap enough, and well under a millisecond of work.
const DEADLINE_CHECK_EVERY: u64 = 256;

/// A script compiled by its own engine.
struct Compiled {
    engine: Engine,
    ast: AST,
}

/// A script, compiled once per thread that calls it. Rhai shares a compiled script's strings
/// and modules through reference counts, so two threads running one copy keep taking the same
/// cache lines from each other: the example rule took 2.2x as long per call on two threads at
/// once as on one (`rule_call` bench, `rhai_not_json_100B_2_threads`). Each thread's copy is
/// compiled from the same source with an engine bound to the same capabilities (their state,
/// like `kv`, is shared through the [`CapContext`]).
struct Script {
    path: PathBuf,
    source: String,
    caps: CapContext,
    limits: Limits,
    per_thread: ThreadLocal<Compiled>,
}

impl Script {
    fn load(
        path: &Path,
        caps: &CapContext,
        limits: Limits,
        required: &[(&'static str, usize)],
        kind: &'static str,
    ) -> Result<Self, LoadError> {
        let source = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let script = Script {
            path: path.to_path_buf(),
            source,
            caps: caps.clone(),
            limits,
            per_thread: ThreadLocal::new(),
        };
        let compiled = script.per_thread.get_or_try(|| script.compile())?;
        for (function, arity) in required {
            let defined = compiled
                .ast
                .iter_functions()
                .any(|f| f.name == *function && f.params.len() == *arity);
            if !defined {
                return Err(LoadError::MissingFunction {
                    path: path.to_path_buf(),
                    function,
                    kind,
                });
            }
        }
        Ok(script)
    }

    fn compile(&self) -> Result<Compiled, LoadError> {
        let engine = new_engine(&self.caps, &self.limits);
        let ast = engine
            .compile(&self.source)
            .map_err(|e| LoadError::RhaiSyntax {
                path: self.path.clone(),
                line: e.1.line().unwrap_or(0),
                column: e.1.position().unwrap_or(0),
                message: e.0.to_string(),
            })?;
        Ok(Compiled { engine, ast })
    }

    fn call(&self, function: &str, args: impl FuncArgs) -> Result<Dynamic, PluginError> {
        // The source compiled at load, so this thread's copy compiles too.
        let compiled = self.per_thread.get_or_try(|| self.compile()).map_err(|e| {
            PluginError::new(ErrorKind::Plugin, format!("cannot compile the script: {e}"))
        })?;
        let previous = DEADLINE.replace(Some(Instant::now() + self.limits.timeout));
        let _host_calls = crate::caps::deadline::CallDeadline::start(self.limits.timeout);
        let options = CallFnOptions::new().eval_ast(false).rewind_scope(true);
        let result = compiled.engine.call_fn_with_options::<Dynamic>(
            options,
            &mut Scope::new(),
            &compiled.ast,
            function,
            args,
        );
        DEADLINE.set(previous);
        result.map_err(|e| classify(*e, &self.limits))
    }
}

fn new_engine(caps: &CapContext, limits: &Limits) -> Engine {
    let mut engine = Engine::new();
    engine.set_module_resolver(DummyModuleResolver::new());
    engine.set_max_operations(limits.max_operations);
    engine.set_max_string_size(limits.max_string_bytes);
    // Rhai has one size limit for arrays and blobs; the larger of the two applies to both (an
    // array that large is still bounded by the operations limit and the deadline).
    engine.set_max_array_size(limits.max_array_len.max(limits.max_blob_bytes));
    engine.set_max_map_size(limits.max_map_len);
    engine.set_max_call_levels(limits.max_call_depth);
    engine.set_max_expr_depths(64, 32);
    engine.set_strict_variables(true);
    engine.on_progress(|ops| {
        if ops % DEADLINE_CHECK_EVERY != 0 {
            return None;
        }
        match DEADLINE.get() {
            Some(deadline) if Instant::now() > deadline => Some("deadline".into()),
            _ => {
                crate::caps::deadline::long_call();
                None
            }
        }
    });
    caps::register_rhai(&mut engine, caps);
    engine
}

/// Turn a Rhai failure into the plugin error it means, with the same kinds the WASM engine uses.
fn classify(e: EvalAltResult, limits: &Limits) -> PluginError {
    match e {
        EvalAltResult::ErrorRuntime(value, pos) => thrown(value, pos),
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _) => classify(*inner, limits),
        EvalAltResult::ErrorTerminated(..) => PluginError::new(
            ErrorKind::Timeout,
            format!(
                "did not finish within {} ms and was stopped",
                limits.timeout.as_millis()
            ),
        ),
        EvalAltResult::ErrorTooManyOperations(pos) => PluginError::new(
            ErrorKind::LimitExceeded,
            format!(
                "exceeded its limit of {} operations and was stopped ({pos})",
                limits.max_operations
            ),
        ),
        EvalAltResult::ErrorDataTooLarge(what, pos) => {
            // Name the limit, and where (Rhai knows no position inside its built-ins).
            let limit = if what.contains("string") {
                format!("of {} bytes (max_string_kib)", limits.max_string_bytes)
            } else if what.contains("array") || what.contains("BLOB") {
                format!(
                    "of {} elements or bytes (max_blob_kib)",
                    limits.max_array_len.max(limits.max_blob_bytes)
                )
            } else if what.contains("map") {
                format!("of {} entries", limits.max_map_len)
            } else {
                String::new()
            };
            let at = if pos.is_none() {
                String::new()
            } else {
                format!(" ({pos})")
            };
            PluginError::new(
                ErrorKind::LimitExceeded,
                format!("{what} exceeds its limit {limit} and was stopped{at}"),
            )
        }
        EvalAltResult::ErrorStackOverflow(pos) => PluginError::new(
            ErrorKind::LimitExceeded,
            format!(
                "exceeded its call depth limit of {} and was stopped ({pos})",
                limits.max_call_depth
            ),
        ),
        other => PluginError::new(ErrorKind::Plugin, other.to_string()),
    }
}

/// A thrown value: `#{kind, message}` keeps its kind; a string or anything else is a plugin error.
fn thrown(value: Dynamic, pos: Position) -> PluginError {
    if let Some(map) = value.read_lock::<Map>() {
        let kind = map
            .get("kind")
            .and_then(|k| k.clone().into_string().ok())
            .and_then(|k| ErrorKind::parse(&k))
            .unwrap_or(ErrorKind::Plugin);
        if let Some(message) = map
            .get("message")
            .and_then(|m| m.clone().into_string().ok())
        {
            return PluginError::new(kind, message);
        }
    }
    match value.into_string() {
        Ok(text) => PluginError::new(ErrorKind::Plugin, text),
        Err(_) => PluginError::new(ErrorKind::Plugin, format!("script threw a value ({pos})")),
    }
}

/// A loaded Rhai rule.
pub(crate) struct RhaiRule {
    script: Script,
}

impl RhaiRule {
    pub fn load(path: &Path, caps: &CapContext, limits: Limits) -> Result<Self, LoadError> {
        let script = Script::load(path, caps, limits, &[("translate", 1)], "rule")?;
        Ok(RhaiRule { script })
    }
}

impl RulePlugin for RhaiRule {
    fn translate(&self, msg: &Message) -> Result<Vec<Outbound>, PluginError> {
        let result = self.script.call("translate", (message_to_dynamic(msg),))?;
        let out = outbounds_from_dynamic(result)?;
        validate_outbound(&out)?;
        Ok(out)
    }
}

/// A loaded Rhai flow.
pub(crate) struct RhaiFlow {
    script: Script,
}

impl RhaiFlow {
    pub fn load(path: &Path, caps: &CapContext, limits: Limits) -> Result<Self, LoadError> {
        let required = [("onboard", 1), ("refresh", 1)];
        let script = Script::load(path, caps, limits, &required, "flow")?;
        Ok(RhaiFlow { script })
    }
}

impl FlowPlugin for RhaiFlow {
    fn onboard(&self, params: &[Pair]) -> Result<Connection, PluginError> {
        let params: Map = params
            .iter()
            .map(|(k, v)| (k.as_str().into(), Dynamic::from(v.clone())))
            .collect();
        let result = self.script.call("onboard", (params,))?;
        from_script(result, "onboard", "a connection")
    }

    fn refresh(&self, conn: &Connection) -> Result<Credentials, PluginError> {
        let conn = rhai::serde::to_dynamic(conn)
            .map_err(|e| PluginError::new(ErrorKind::InvalidInput, format!("connection: {e}")))?;
        let result = self.script.call("refresh", (conn,))?;
        from_script(result, "refresh", "credentials")
    }
}

fn from_script<T: serde::de::DeserializeOwned>(
    value: Dynamic,
    function: &str,
    what: &str,
) -> Result<T, PluginError> {
    rhai::serde::from_dynamic(&value).map_err(|e| {
        PluginError::new(
            ErrorKind::Plugin,
            format!("`{function}` did not return {what}: {e}"),
        )
    })
}

/// What `translate` returned: an array of outbound maps, one map, or `()` for none. Each map is
/// `#{upstream: "<device>"` or `local: true`, `topic`, `payload` (blob or string), `qos`,
/// `retain`, `properties}`.
pub(crate) fn outbounds_from_dynamic(value: Dynamic) -> Result<Vec<Outbound>, PluginError> {
    if value.is_unit() {
        return Ok(Vec::new());
    }
    let items: Array = if value.is_map() {
        vec![value]
    } else {
        value.into_array().map_err(|t| {
            bad_output(format!(
                "`translate` must return an array of messages, a message map or (), not {t}"
            ))
        })?
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| outbound_from_dynamic(i + 1, item))
        .collect()
}

fn outbound_from_dynamic(n: usize, item: Dynamic) -> Result<Outbound, PluginError> {
    let type_name = item.type_name();
    let mut map = item
        .try_cast::<Map>()
        .ok_or_else(|| bad_output(format!("outbound message {n} is a {type_name}, not a map")))?;
    let err = |what: String| bad_output(format!("outbound message {n}: {what}"));

    for key in map.keys() {
        if ![
            "upstream",
            "local",
            "topic",
            "payload",
            "qos",
            "retain",
            "properties",
        ]
        .contains(&key.as_str())
        {
            return Err(err(format!("unknown field '{key}'")));
        }
    }
    let destination = match (map.remove("upstream"), map.remove("local")) {
        (Some(device), None) => Destination::Upstream(
            device
                .into_string()
                .map_err(|t| err(format!("'upstream' must be a device name, not {t}")))?,
        ),
        (None, Some(local)) if local.as_bool() == Ok(true) => Destination::Local,
        (None, Some(_)) => return Err(err("'local' must be true".into())),
        (None, None) => {
            return Err(err(
                "it needs 'upstream: \"<device>\"' or 'local: true'".into()
            ))
        }
        (Some(_), Some(_)) => return Err(err("it has both 'upstream' and 'local'".into())),
    };
    let message = message_from_map(map).map_err(err)?;
    Ok(Outbound {
        destination,
        message,
    })
}

fn bad_output(message: String) -> PluginError {
    PluginError::new(ErrorKind::Plugin, message)
}
