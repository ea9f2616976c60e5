//! One rule call on a 256-byte JSON payload: a native Rust closure doing the same work vs the
//! example rule in Rhai vs the same rule as a WASM component (instance reused).
//!
//!   cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml
//!   cargo bench -p gatehost --bench rule_call
//!
//! The native contestant compiles the plugin's own `logic.rs`, so all three do the same work.

use criterion::{criterion_group, criterion_main, Criterion};
use gatehost::engine::RulePlugin;
use gatehost::model::{Destination, Message, Outbound};
use gatehost::plugins::registry::{PluginEnv, PluginHandle, Registry};
use gatehost::rules::template::{TemplateConfig, TemplateRule};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

/// The example rule's own logic, compiled natively: exactly the code inside the component.
#[path = "../../plugins/iothub-telemetry/src/logic.rs"]
mod logic;

/// The native baseline: the same logic and the same message model, no engine in between.
fn native_translate(msg: &Message) -> Result<Vec<Outbound>, String> {
    let t = logic::translate(&msg.topic, &msg.payload)?;
    Ok(vec![Outbound {
        destination: Destination::Upstream(t.device.to_string()),
        message: Message {
            topic: t.topic,
            payload: t.payload.unwrap_or_else(|| msg.payload.clone()),
            qos: msg.qos.min(1),
            retain: false,
            properties: msg.properties.clone(),
        },
    }])
}

fn payload_256() -> Vec<u8> {
    let mut p = String::from(
        r#"{"value":21.5,"unit":"degC","ts":"2026-11-23T14:00:00.000Z","status":"ok","line":4,"samples":[21.4,21.5,21.5,21.6,21.5],"note":""#,
    );
    while p.len() < 256 - 2 {
        p.push('x');
    }
    p.push_str("\"}");
    assert_eq!(p.len(), 256);
    p.into_bytes()
}

fn load(manifest: &Path) -> Arc<dyn RulePlugin> {
    let env = PluginEnv::ephemeral(vec![]);
    match Registry::load_path(env, manifest)
        .unwrap_or_else(|e| panic!("{e} (build plugins/ first: see the top of this file)"))
        .handle
    {
        PluginHandle::Rule(r) => r,
        PluginHandle::Flow(_) => unreachable!(),
    }
}

/// Run `call` `iters` times on each of two threads at once: the wall time (so a call that runs
/// as fast on two threads as on one shows the same time per iteration).
fn on_two_threads(iters: u64, call: impl Fn() + Sync) -> std::time::Duration {
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..iters {
                    call();
                }
            });
        }
    });
    started.elapsed()
}

fn rule_call(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let rhai = load(&root.join("scripts/rules/iothub-telemetry.toml"));
    let wasm = load(&root.join("plugins/dist/iothub-telemetry-wasm.toml"));
    // The built-in template rule configured to do the same translation of JSON objects.
    let template: TemplateConfig = toml::from_str(
        r#"pattern = "{site}/{device}/{measurement}"
device = "{device}"
properties = { "$.ct" = "application/json", "$.ce" = "utf-8" }
enrich = true"#,
    )
    .unwrap();
    let template = TemplateRule::new("bench", &template).unwrap();
    let msg = Message::new("plant1/press7/temperature", payload_256(), 1);

    // Same input, same output: the three contestants do the same work.
    let expected = native_translate(&msg).unwrap();
    assert_eq!(rhai.translate(&msg).unwrap(), expected);
    assert_eq!(wasm.translate(&msg).unwrap(), expected);
    assert_eq!(template.translate(&msg).unwrap(), expected);

    let mut group = c.benchmark_group("rule_call_256B_json");
    group.bench_function("native", |b| {
        b.iter(|| native_translate(black_box(&msg)).unwrap())
    });
    group.bench_function("rhai", |b| {
        b.iter(|| rhai.translate(black_box(&msg)).unwrap())
    });
    group.bench_function("wasm", |b| {
        b.iter(|| wasm.translate(black_box(&msg)).unwrap())
    });
    // The bridge bench's message: 100 bytes that are not JSON (the rule's property-bag branch).
    let plain = Message::new("plant1/dev01/m", vec![b'x'; 100], 1);
    group.bench_function("rhai_not_json_100B", |b| {
        b.iter(|| rhai.translate(black_box(&plain)).unwrap())
    });
    // The same on two threads at once, as the bridge's two local threads call it: the time is
    // per call on each thread, so it matches the line above unless the threads slow each other.
    group.bench_function("rhai_not_json_100B_2_threads", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, || {
                black_box(rhai.translate(black_box(&plain)).unwrap());
            })
        })
    });
    group.bench_function("template", |b| {
        b.iter(|| template.translate(black_box(&msg)).unwrap())
    });
    group.bench_function("native_2_threads", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, || {
                black_box(native_translate(black_box(&msg)).unwrap());
            })
        })
    });
    group.finish();
}

criterion_group!(benches, rule_call);
criterion_main!(benches);
