//! The WASM engine: one wasmtime [`Engine`] per process, components compiled once and cached on
//! disk, an `InstancePre` per plugin, one `Store` per instance with WASI granted nothing (no
//! preopens, env, args or sockets; stdout/stderr go to tracing), an epoch deadline per call and a
//! memory cap per instance. A call that traps poisons its instance, which is then rebuilt from the
//! `InstancePre` on the next call, so one bad message never takes the plugin down.

use super::limits::Limits;
use super::{FlowPlugin, LoadError, RulePlugin};
use crate::caps::wasm::{CapsData, WasmCaps};
use crate::caps::wit::{flow, plugin::types as wit, rule};
use crate::caps::CapContext;
use crate::model::{
    validate_outbound, Connection, Credentials, ErrorKind, Message, Outbound, Pair, PluginError,
};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// `GATEHOST_WASM_PERFMAP=1` makes guest functions visible to `perf` by name.
pub(crate) const PERFMAP_ENV: &str = "GATEHOST_WASM_PERFMAP";

/// How often the epoch advances; deadlines are measured in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The data of one plugin instance's `Store`: its capabilities and its resources.
pub(crate) struct HostState {
    pub caps: CapContext,
    pub table: ResourceTable,
    wasi: WasiCtx,
    memory: MemoryCap,
    /// What the guest wrote to stderr during the current call: a trap's error quotes it.
    stderr_tail: StderrTail,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// What the capabilities' host impls see of a store's data.
fn caps_of(state: &mut HostState) -> WasmCaps<'_> {
    WasmCaps {
        caps: &mut state.caps,
        table: &mut state.table,
    }
}

/// Caps linear memory growth and remembers that the cap was hit, so the trap that follows (the
/// guest's allocator aborts) can be reported as what it is.
struct MemoryCap {
    max_bytes: usize,
    hit: bool,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// The process-wide WASM runtime: engine, linkers for both worlds, compiled-component cache.
pub(crate) struct WasmRuntime {
    engine: Engine,
    rule_linker: Linker<HostState>,
    flow_linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
}

impl WasmRuntime {
    /// `cache_dir`: where compiled components are kept so a restart does not recompile
    /// (normally `<state>/cache/wasm`); `None` disables the cache.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Arc<Self>, LoadError> {
        let engine_err = |e: wasmtime::Error| LoadError::Engine(format!("{e:#}"));
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        if std::env::var_os(PERFMAP_ENV).is_some_and(|v| v == "1") {
            // Names the guest's compiled functions for `perf report` (/tmp/perf-<pid>.map).
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(engine_err)?;

        let mut rule_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut rule_linker).map_err(engine_err)?;
        rule::Rule::add_to_linker::<_, CapsData>(&mut rule_linker, caps_of).map_err(engine_err)?;
        let mut flow_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut flow_linker).map_err(engine_err)?;
        flow::Flow::add_to_linker::<_, CapsData>(&mut flow_linker, caps_of).map_err(engine_err)?;

        spawn_epoch_ticker(&engine);
        Ok(Arc::new(WasmRuntime {
            engine,
            rule_linker,
            flow_linker,
            cache_dir,
        }))
    }

    pub fn load_rule(
        self: &Arc<Self>,
        path: &Path,
        caps: CapContext,
        limits: Limits,
    ) -> Result<WasmRule, LoadError> {
        let component = self.component(path)?;
        let mismatch =
            |e: wasmtime::Error| world_mismatch(path, "rule", &self.engine, &component, e);
        let pre = self
            .rule_linker
            .instantiate_pre(&component)
            .map_err(mismatch)?;
        let pre = rule::RulePre::new(pre).map_err(mismatch)?;
        let slot = InstanceSlot::new(self.clone(), path, caps, limits, move |store| {
            pre.instantiate(store)
        })?;
        Ok(WasmRule { slot })
    }

    pub fn load_flow(
        self: &Arc<Self>,
        path: &Path,
        caps: CapContext,
        limits: Limits,
    ) -> Result<WasmFlow, LoadError> {
        let component = self.component(path)?;
        let mismatch =
            |e: wasmtime::Error| world_mismatch(path, "flow", &self.engine, &component, e);
        let pre = self
            .flow_linker
            .instantiate_pre(&component)
            .map_err(mismatch)?;
        let pre = flow::FlowPre::new(pre).map_err(mismatch)?;
        let slot = InstanceSlot::new(self.clone(), path, caps, limits, move |store| {
            pre.instantiate(store)
        })?;
        Ok(WasmFlow { slot })
    }

    /// Read, check and compile a component, through the on-disk cache.
    fn component(&self, path: &Path) -> Result<Component, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        check_component_header(path, &bytes)?;

        let cached = self.cache_path(&bytes);
        // The artifact is read into memory rather than mapped: a file rewritten in place under
        // a live mapping would crash the process (SIGBUS).
        if let Some((cached, artifact)) = cached
            .as_deref()
            .and_then(|p| std::fs::read(p).ok().map(|bytes| (p, bytes)))
        {
            // SAFETY: the cache directory lives in gatehost's state directory and holds only
            // files this function wrote with `Component::serialize`; wasmtime also checks the
            // engine compatibility header and refuses mismatched or foreign artifacts.
            match unsafe { Component::deserialize(&self.engine, &artifact) } {
                Ok(component) => return Ok(component),
                Err(e) => tracing::debug!(cache = %cached.display(), "recompiling: {e}"),
            }
        }
        let component =
            Component::from_binary(&self.engine, &bytes).map_err(|e| LoadError::Compile {
                path: path.to_path_buf(),
                reason: format!("{e:#}"),
            })?;
        if let Some(cached) = cached {
            if let Err(e) = write_cache(&cached, &component) {
                tracing::warn!(cache = %cached.display(), "cannot cache the compiled component: {e}");
            }
        }
        Ok(component)
    }

    fn cache_path(&self, bytes: &[u8]) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut engine_hash);
        let digest = hex::encode(Sha256::digest(bytes));
        Some(dir.join(format!("{digest}-{:016x}.cwasm", engine_hash.finish())))
    }
}

fn write_cache(path: &Path, component: &Component) -> Result<(), String> {
    let bytes = component.serialize().map_err(|e| e.to_string())?;
    let dir = path.parent().ok_or("cache path has no parent")?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

/// A component starts with `\0asm` and layer 1 (`0d 00 01 00`); a core module has version 1.
fn check_component_header(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    let not = |reason: &str| LoadError::NotAComponent {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
        return Err(not(
            "the file does not start with the WebAssembly magic bytes",
        ));
    }
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(not(
            "it is a core WebAssembly module; build plugins with `--target wasm32-wasip2` so that \
             cargo produces a component",
        ));
    }
    Ok(())
}

fn world_mismatch(
    path: &Path,
    world: &'static str,
    engine: &Engine,
    component: &Component,
    e: wasmtime::Error,
) -> LoadError {
    let reason = match foreign_import(engine, component) {
        Some(why) => why,
        None => format!("{e:#}"),
    };
    LoadError::WorldMismatch {
        path: path.to_path_buf(),
        world,
        version: super::WORLD_VERSION,
        reason,
    }
}

/// The cause behind a link error that the component's imports show better than wasmtime's
/// message does: a gatehost API of another version (an old or newer WIT), or `wasi:http`,
/// which gatehost does not give plugins (componentize-js adds it unless told not to).
fn foreign_import(engine: &Engine, component: &Component) -> Option<String> {
    let ty = component.component_type();
    let names: Vec<&str> = ty.imports(engine).map(|(name, _)| name).collect();
    if let Some(other) = names.iter().find_map(|name| {
        let (package, version) = name.split_once('@')?;
        (package.starts_with("gatehost:plugin/") && version != super::WORLD_VERSION)
            .then_some(version)
    }) {
        return Some(format!(
            "it was built against gatehost API {other} (it imports gatehost:plugin/...@{other}); \
             this gatehost implements {}: rebuild it with this gatehost's WIT files",
            super::WORLD_VERSION
        ));
    }
    if let Some(http) = names.iter().find(|name| name.starts_with("wasi:http/")) {
        return Some(format!(
            "it imports {http}, which gatehost does not give plugins (they have \
             gatehost:plugin/http); a componentize-js build needs `--disable http fetch-event`"
        ));
    }
    None
}

/// Advance the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        })
        .expect("spawning the epoch thread");
}

type Instantiate<B> = Box<dyn Fn(&mut Store<HostState>) -> wasmtime::Result<B> + Send + Sync>;

/// One live instance of a plugin (or none, after a trap), rebuilt on demand.
struct InstanceSlot<B> {
    runtime: Arc<WasmRuntime>,
    caps: CapContext,
    limits: Limits,
    instantiate: Instantiate<B>,
    live: Mutex<Option<(Store<HostState>, B)>>,
}

impl<B> InstanceSlot<B> {
    /// Instantiate once right away, so a plugin that fails to start fails at load time.
    fn new(
        runtime: Arc<WasmRuntime>,
        path: &Path,
        caps: CapContext,
        limits: Limits,
        instantiate: impl Fn(&mut Store<HostState>) -> wasmtime::Result<B> + Send + Sync + 'static,
    ) -> Result<Self, LoadError> {
        let slot = InstanceSlot {
            runtime,
            caps,
            limits,
            instantiate: Box::new(instantiate),
            live: Mutex::new(None),
        };
        let first = slot.start().map_err(|e| LoadError::Instantiate {
            path: path.to_path_buf(),
            reason: e.message,
        })?;
        *slot.live.lock().unwrap_or_else(|e| e.into_inner()) = Some(first);
        Ok(slot)
    }

    fn start(&self) -> Result<(Store<HostState>, B), PluginError> {
        let plugin = self.caps.plugin.clone();
        let stderr_tail = StderrTail::default();
        let wasi = WasiCtxBuilder::new()
            .stdout(LogStream {
                plugin: plugin.clone(),
                stream: "stdout",
                tail: None,
            })
            .stderr(LogStream {
                plugin,
                stream: "stderr",
                tail: Some(stderr_tail.clone()),
            })
            .build();
        let state = HostState {
            caps: self.caps.clone(),
            table: ResourceTable::new(),
            wasi,
            memory: MemoryCap {
                max_bytes: self.limits.memory_bytes,
                hit: false,
            },
            stderr_tail,
        };
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.memory);
        // At each deadline the callback checks the call's own deadline (`caps::deadline`):
        // past it, the call traps; before it (a first check after HAND_OFF_AFTER), a long call
        // gives up its runtime worker and runs on. Outside a call (instantiation) the
        // instance's whole limit applies.
        let whole = self.deadline_ticks();
        store.epoch_deadline_callback(move |_| match crate::caps::deadline::remaining() {
            None => Err(Trap::Interrupt.into()),
            Some(left) if left.is_zero() => Err(Trap::Interrupt.into()),
            Some(left) => {
                crate::caps::deadline::long_call();
                let ticks = (left.as_millis() / EPOCH_TICK.as_millis()) as u64 + 1;
                Ok(wasmtime::UpdateDeadline::Continue(ticks.min(whole)))
            }
        });
        store.set_epoch_deadline(whole);
        let bindings = (self.instantiate)(&mut store).map_err(|e| self.trap_error(&store, e))?;
        Ok((store, bindings))
    }

    fn deadline_ticks(&self) -> u64 {
        (self.limits.timeout.as_millis() / EPOCH_TICK.as_millis()) as u64 + 1
    }

    /// Run one export call under the deadline; a trap drops the instance.
    fn call<R>(
        &self,
        f: impl FnOnce(&mut Store<HostState>, &B) -> wasmtime::Result<Result<R, wit::Error>>,
    ) -> Result<R, PluginError> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.is_none() {
            *live = Some(self.start()?);
        }
        let (store, bindings) = live.as_mut().expect("instance was just started");
        // The first check comes early, so a long call can give up its runtime worker.
        let first =
            (crate::caps::deadline::HAND_OFF_AFTER.as_millis() / EPOCH_TICK.as_millis()) as u64 + 1;
        store.set_epoch_deadline(first.min(self.deadline_ticks()));
        let _host_calls = crate::caps::deadline::CallDeadline::start(self.limits.timeout);
        store.data_mut().memory.hit = false;
        store.data().stderr_tail.clear();
        // A panic in a host call (blocking WASI code on a runtime worker) leaves the guest
        // half-way through a call: the instance is rebuilt before the panic goes on.
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut *store, bindings)));
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(panic) => {
                *live = None;
                std::panic::resume_unwind(panic)
            }
        };
        match outcome {
            Ok(result) => result.map_err(PluginError::from),
            Err(trap) => {
                let err = self.trap_error(store, trap);
                *live = None;
                Err(err)
            }
        }
    }

    fn trap_error(&self, store: &Store<HostState>, e: wasmtime::Error) -> PluginError {
        if store.data().memory.hit {
            return PluginError::new(
                ErrorKind::LimitExceeded,
                format!(
                    "exceeded its memory limit of {} MiB and was stopped",
                    self.limits.memory_bytes / (1024 * 1024)
                ),
            );
        }
        if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return PluginError::new(
                ErrorKind::Timeout,
                format!(
                    "did not finish within {} ms and was stopped",
                    self.limits.timeout.as_millis()
                ),
            );
        }
        let reason = match e.downcast_ref::<Trap>() {
            Some(Trap::StackOverflow) => {
                return PluginError::new(
                    ErrorKind::LimitExceeded,
                    "exceeded the WASM call stack (recursion too deep) and was stopped",
                )
            }
            // A guest's own stack lives in its linear memory: running off it is this trap.
            Some(Trap::MemoryOutOfBounds) => format!(
                "{} (a bad pointer, or the guest's stack, which lives in its linear memory, overflowed)",
                Trap::MemoryOutOfBounds
            ),
            Some(trap) => trap.to_string(),
            None => format!("{e}"),
        };
        let said = store.data().stderr_tail.summary();
        let said = if said.is_empty() {
            String::new()
        } else {
            format!("; its stderr said: {said}")
        };
        PluginError::new(ErrorKind::Plugin, format!("trapped: {reason}{said}"))
    }
}

/// A loaded WASM rule.
pub(crate) struct WasmRule {
    slot: InstanceSlot<rule::Rule>,
}

impl RulePlugin for WasmRule {
    fn translate(&self, msg: &Message) -> Result<Vec<Outbound>, PluginError> {
        let msg = wit::Message::from(msg);
        let out = self
            .slot
            .call(|store, rule| rule.call_translate(store, &msg))?;
        let out: Vec<Outbound> = out.into_iter().map(Outbound::from).collect();
        validate_outbound(&out)?;
        Ok(out)
    }
}

/// A loaded WASM flow.
pub(crate) struct WasmFlow {
    slot: InstanceSlot<flow::Flow>,
}

impl FlowPlugin for WasmFlow {
    fn onboard(&self, params: &[Pair]) -> Result<Connection, PluginError> {
        let conn = self
            .slot
            .call(|store, flow| flow.call_onboard(store, params))?;
        Ok(conn.into())
    }

    fn refresh(&self, conn: &Connection) -> Result<Credentials, PluginError> {
        let conn = wit::Connection::from(conn);
        let creds = self
            .slot
            .call(|store, flow| flow.call_refresh(store, &conn))?;
        Ok(creds.into())
    }
}

/// Guest stdout/stderr: complete lines go to tracing, tagged with the plugin.
#[derive(Clone)]
struct LogStream {
    plugin: Arc<str>,
    stream: &'static str,
    /// stderr also keeps its last lines for the error of a trap.
    tail: Option<StderrTail>,
}

/// The last lines a guest wrote to stderr in one call, without the language runtimes'
/// boilerplate around them: what a Python traceback, a JavaScript exception or a Rust panic says
/// just before the trap that ends it.
#[derive(Clone, Default)]
struct StderrTail(Arc<Mutex<std::collections::VecDeque<String>>>);

impl StderrTail {
    const LINES: usize = 3;
    const CHARS: usize = 400;

    fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn push(&self, line: &str) {
        let line = line.trim();
        // Frames and banners of the runtimes (CPython, StarlingMonkey, Rust's panic handler).
        let boilerplate = line.is_empty()
            || line.starts_with("Traceback (most recent call last)")
            || line.starts_with("File \"")
            || line.starts_with("note: run with `RUST_BACKTRACE")
            || line.starts_with("Redirecting call to abort()")
            || line == "Stack:"
            || (line.starts_with("thread '") && line.contains("panicked at"))
            || (line.contains('@') && line.contains(".js:"));
        if boilerplate {
            return;
        }
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == Self::LINES {
            lines.pop_front();
        }
        lines.push_back(line.chars().take(Self::CHARS).collect());
    }

    fn summary(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join(" | ")
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineLogger {
            stream: self.clone(),
            pending: Vec::new(),
        })
    }
}

struct LineLogger {
    stream: LogStream,
    pending: Vec<u8>,
}

impl LineLogger {
    const MAX_LINE: usize = 8 * 1024;

    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = crate::redact::redact(&text);
        if let Some(tail) = &self.stream.tail {
            tail.push(&text);
        }
        tracing::info!(
            plugin = &*self.stream.plugin,
            stream = self.stream.stream,
            "{}",
            text.trim_end()
        );
    }
}

impl tokio::io::AsyncWrite for LineLogger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.pending.extend_from_slice(buf);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.emit(&line);
        }
        if self.pending.len() > Self::MAX_LINE {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
        Poll::Ready(Ok(()))
    }
}
