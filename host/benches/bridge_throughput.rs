//! The bridge against the setups it replaces, side by side in one run, QoS 1, 100-byte payloads,
//! load from 4 parallel `mosquitto_pub -l` publishers:
//!
//!   (a) publishers -> mosquitto -> mosquitto_sub                         (one plain hop: ceiling)
//!   (b) publishers -> gatehost run (embedded broker, rule, queue) -> mosquitto over TLS with
//!       client certificates -> mosquitto_sub; with the template, WASM and Rhai rule
//!   (c) publishers -> mosquitto -> Python paho translator (subscribe, rewrite the topic,
//!       republish over TLS) -> mosquitto -> mosquitto_sub
//!
//! then the latency of (b) at a paced 5 000 msg/s, and gatehost's idle RSS with 10 rules.
//!
//!   cargo bench -p gatehost --bench bridge_throughput [-- throughput|latency|rss ...]
//!
//! `BRIDGE_BENCH_SETUPS=template` (a comma list of `a`, `template`, `wasm`, `rhai`, `c`) runs only
//! those throughput setups, e.g. under `perf record`. `BENCH_INFLIGHT=N` sets the publishers'
//! `mosquitto_pub -M` (QoS 1 messages in flight each, default 20, mosquitto_pub's own default).
//! Throughput runs every setup `BENCH_ROUNDS` times (default 3), round after round, and reports
//! medians: this machine's speed drifts by a fifth within minutes, and interleaving moves (a) and
//! (b) alike. `BENCH_READER=plain` or `tls` runs (b) and (c) with only that reader hop (default: both):
//! `mosquitto_sub` reads the upstream mosquitto over plain TCP, the same measuring hop as (a),
//! or over TLS with a client certificate, which costs the upstream mosquitto and the reader CPU
//! that (a) does not spend.
//!
//! Needs mosquitto, mosquitto-clients and .venv with paho-mqtt (`.ci/install-deps`) and the WASM
//! plugins built (`cargo build --release --target wasm32-wasip2 --manifest-path
//! plugins/Cargo.toml`). Prints a table for BENCHMARKS.md.

use gatehost::caps::certs::{KeyAlgorithm, PrivateKey};
use gatehost::pki::x509::{self, CertificateAuthority, Subject};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PUBLISHERS: usize = 4;
const PER_PUBLISHER: usize = 25_000;
const PAYLOAD_BYTES: usize = 100;
const DEVICES: [&str; 4] = ["dev01", "dev02", "dev03", "dev04"];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// CA, server certificate (localhost, 127.0.0.1), a client certificate per device and one for
/// the readers, in `dir`.
fn pki(dir: &Path) {
    let ca_key = PrivateKey::generate(KeyAlgorithm::P256).unwrap();
    let ca_pem =
        x509::self_signed_ca(&ca_key, &Subject::parse("/CN=Bench CA").unwrap(), 2).unwrap();
    std::fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
    let ca = CertificateAuthority::new(&ca_pem, &ca_key, "ca.pem", "ca.key").unwrap();
    let mut names: Vec<(&str, Vec<String>)> = vec![
        ("server", vec!["localhost".into(), "127.0.0.1".into()]),
        ("reader", vec![]),
    ];
    names.extend(DEVICES.iter().map(|d| (*d, vec![])));
    for (name, sans) in names {
        let key = PrivateKey::generate(KeyAlgorithm::P256).unwrap();
        let csr = x509::create_csr(
            &key,
            &Subject::parse(&format!("/CN={name}")).unwrap(),
            &sans,
        )
        .unwrap();
        let cert = ca.issue(&csr, 2, "csr").unwrap();
        key.write_new_file(&dir.join(format!("{name}.key")))
            .unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), format!("{cert}{ca_pem}")).unwrap();
    }
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plain mosquitto: its process and port.
fn mosquitto(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let proc = mosquitto_with(dir, &format!("listener {port} 127.0.0.1\n"), port);
    (proc, port)
}

/// How the `mosquitto_sub` of (b) and (c) reads from the upstream mosquitto.
#[derive(Clone, Copy, PartialEq)]
enum Reader {
    /// Plain TCP, as in (a): every setup ends with the same measuring hop, so the ratios compare
    /// only what sits between the publishers and that hop.
    Plain,
    /// TLS with a client certificate, like gatehost's hop: the upstream mosquitto encrypts
    /// every message twice and the reader decrypts it.
    Tls,
}

impl Reader {
    /// `BENCH_READER=plain|tls`; both when unset.
    fn wanted() -> Vec<Reader> {
        match std::env::var("BENCH_READER").as_deref() {
            Ok("plain") => vec![Reader::Plain],
            Ok("tls") => vec![Reader::Tls],
            _ => vec![Reader::Plain, Reader::Tls],
        }
    }

    fn label(self) -> &'static str {
        match self {
            Reader::Plain => "mosquitto_sub",
            Reader::Tls => "mosquitto_sub over TLS",
        }
    }
}

/// The "cloud" of (b) and (c): mosquitto with a TLS listener that requires client certificates,
/// where gatehost or the translator publish, and the listener its `mosquitto_sub` reads from.
struct Upstream {
    _proc: Proc,
    tls_port: u16,
    reader_port: u16,
    reader: Reader,
    dir: PathBuf,
}

fn upstream(dir: &Path, reader: Reader) -> Upstream {
    let tls_port = free_port();
    let tls = format!(
        "listener {tls_port} 127.0.0.1\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nrequire_certificate true\nuse_identity_as_username true\n",
        dir.display()
    );
    let (conf, reader_port) = match reader {
        Reader::Tls => (tls, tls_port),
        Reader::Plain => {
            let plain = free_port();
            (format!("listener {plain} 127.0.0.1\n{tls}"), plain)
        }
    };
    Upstream {
        _proc: mosquitto_with(dir, &conf, tls_port),
        tls_port,
        reader_port,
        reader,
        dir: dir.to_path_buf(),
    }
}

impl Upstream {
    /// Its `mosquitto_sub` on `devices/#`.
    fn subscribe(&self) -> (Proc, mpsc::Receiver<(Instant, String)>) {
        let tls = (self.reader == Reader::Tls).then_some(self.dir.as_path());
        subscriber(self.reader_port, "devices/#", tls)
    }
}

/// mosquitto with `listeners`, once `port` answers.
fn mosquitto_with(dir: &Path, listeners: &str, port: u16) -> Proc {
    let mut conf = format!("user root\npersistence false\nlog_type none\nmax_inflight_messages 0\nmax_queued_messages 0\n{listeners}");
    conf.push_str("allow_anonymous true\n");
    let path = dir.join(format!("mosquitto-{port}.conf"));
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto is installed");
    wait_port(port);
    Proc(child)
}

fn tls_args(dir: &Path, name: &str) -> Vec<String> {
    vec![
        "--cafile".into(),
        format!("{}/ca.pem", dir.display()),
        "--cert".into(),
        format!("{}/{name}.pem", dir.display()),
        "--key".into(),
        format!("{}/{name}.key", dir.display()),
    ]
}

/// `mosquitto_sub` on `filter`; a receiver of (arrival, payload line) for every message.
fn subscriber(
    port: u16,
    filter: &str,
    tls: Option<&Path>,
) -> (Proc, mpsc::Receiver<(Instant, String)>) {
    let mut args: Vec<String> = [
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-q",
        "1",
        "-t",
        filter,
        "-i",
        "bench-reader",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(dir) = tls {
        args.extend(tls_args(dir, "reader"));
    }
    // Line-buffered: a pipe would otherwise hold lines back and add to the measured latency.
    let mut child = Command::new("stdbuf")
        .arg("-oL")
        .arg("mosquitto_sub")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    (Proc(child), rx)
}

/// 4 `mosquitto_pub -l` publishers, one per device topic `plant1/<device>/m`; the time it took
/// until `rx` saw every message (msg/s).
fn run_load(port: u16, rx: &mpsc::Receiver<(Instant, String)>) -> f64 {
    let total = PUBLISHERS * PER_PUBLISHER;
    let line = "x".repeat(PAYLOAD_BYTES);
    let input: String = std::iter::repeat_n(format!("{line}\n"), PER_PUBLISHER).collect();
    let started = Instant::now();
    let mut pubs = Vec::new();
    for device in DEVICES.iter().take(PUBLISHERS) {
        let mut child = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-q",
                "1",
                "-M",
                &std::env::var("BENCH_INFLIGHT").unwrap_or("20".into()),
                "-l",
                "-t",
            ])
            .arg(format!("plant1/{device}/m"))
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let text = input.clone();
        std::thread::spawn(move || {
            let _ = stdin.write_all(text.as_bytes());
        });
        pubs.push(Proc(child));
    }
    let mut got = 0;
    let mut last = started;
    while got < total {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok((at, _)) => {
                got += 1;
                last = at;
            }
            Err(_) => panic!("only {got} of {total} messages arrived"),
        }
    }
    total as f64 / last.duration_since(started).as_secs_f64()
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of /proc/pid/stat (utime, stime), counted from after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A gatehost config in `dir` for the devices on the TLS mosquitto at `upstream`, with `rules`.
fn gatehost_config(dir: &Path, upstream: u16, rules: &str) -> (u16, u16) {
    let (local, metrics) = (free_port(), free_port());
    let mut text = format!(
        "state_dir = \"state\"\nplugin_dirs = [\"{flows}\", \"{rules_dir}\", \"{dist}\"]\n[local]\nlisten = \"127.0.0.1:{local}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n[permissions.aws-iot]\nfile_roots = [\"{d}\"]\n{rules}\n",
        flows = dir.join("flows").display(),
        rules_dir = repo().join("scripts/rules").display(),
        dist = repo().join("plugins/dist").display(),
        d = dir.display(),
    );
    for device in DEVICES {
        text.push_str(&format!(
            "[[devices]]\nname = \"{device}\"\nflow = \"aws-iot\"\n[devices.params]\nendpoint = \"localhost\"\nport = \"{upstream}\"\ncertificate = \"{d}/{device}.pem\"\nkey = \"{d}/{device}.key\"\nca_file = \"{d}/ca.pem\"\n",
            d = dir.display()
        ));
    }
    // `BENCH_STORE="sync_interval_ms = 0"` and the like: [store] settings to compare.
    if let Ok(store) = std::env::var("BENCH_STORE") {
        text.push_str(&format!("[store]\n{}\n", store.replace(';', "\n")));
    }
    let _ = std::fs::remove_dir_all(dir.join("state"));
    std::fs::write(dir.join("gatehost.toml"), text).unwrap();
    (local, metrics)
}

/// The aws-iot flow with its file roots opened to `dir` (the shipped manifest names `certs`).
fn install_flow(dir: &Path) {
    let flows = dir.join("flows");
    std::fs::create_dir_all(&flows).unwrap();
    for ext in ["rhai", "toml"] {
        let text =
            std::fs::read_to_string(repo().join(format!("scripts/flows/aws-iot.{ext}"))).unwrap();
        let text = text.replace(
            r#"file_roots = ["certs", "state"]"#,
            &format!("file_roots = [{:?}]", dir.display().to_string()),
        );
        std::fs::write(flows.join(format!("aws-iot.{ext}")), text).unwrap();
    }
}

fn start_gatehost(dir: &Path, metrics: u16) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_gatehost"))
        .args(["run", "--config", "gatehost.toml"])
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(metrics);
    // Let every device onboard and connect.
    std::thread::sleep(Duration::from_secs(2));
    Proc(child)
}

const TEMPLATE_RULE: &str = "[[rules]]\nname = \"bench\"\n[rules.template]\npattern = \"plant1/{machine}/#\"\ndevice = \"{machine}\"\nproperties = { \"$.ct\" = \"application/json\" }\n";
const WASM_RULE: &str =
    "[[rules]]\nname = \"bench\"\nrule = \"iothub-telemetry-wasm\"\nfrom = [\"plant1/#\"]\n";
const RHAI_RULE: &str =
    "[[rules]]\nname = \"bench\"\nrule = \"iothub-telemetry\"\nfrom = [\"plant1/#\"]\n";

/// The Python paho translator of (c): plant1/<device>/<m> -> devices/<device>/messages/events/.
const TRANSLATOR: &str = r#"
import sys, ssl, paho.mqtt.client as mqtt
local_port, cloud_port, d = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
cloud = mqtt.Client(client_id="translator-up")
cloud.tls_set(ca_certs=f"{d}/ca.pem", certfile=f"{d}/dev01.pem", keyfile=f"{d}/dev01.key")
cloud.max_inflight_messages_set(1000)
cloud.max_queued_messages_set(0)
cloud.connect("localhost", cloud_port)
cloud.loop_start()
def on_message(client, userdata, msg):
    device = msg.topic.split("/")[1]
    cloud.publish(f"devices/{device}/messages/events/$.ct=application%2Fjson", msg.payload, qos=1)
local = mqtt.Client(client_id="translator-down")
local.on_message = on_message
local.on_connect = lambda c, u, f, rc: c.subscribe("plant1/#", qos=1)
local.connect("127.0.0.1", local_port)
print("ready", flush=True)
local.loop_forever()
"#;

fn main() {
    // `cargo bench` passes --bench; run only when benchmarks are asked for.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // Sections to run: `throughput`, `latency`, `rss` after `--`; all when none is named.
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |section: &str| named.is_empty() || named.iter().any(|n| n == section);
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    pki(dir);
    install_flow(dir);
    if wanted("throughput") {
        throughput(dir);
    }
    if wanted("latency") {
        latencies(dir);
    }
    if wanted("rss") {
        idle_rss(dir);
    }
}

/// (a), (b) with each rule kind and (c), `BENCH_ROUNDS` times (default 3) one after another, so a
/// machine that speeds up or slows down during the run moves every setup alike: the median
/// msg/s, its range, each round's ratio to that round's (a), and CPU per message.
fn throughput(dir: &Path) {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    // Per setup, in the order of the first round: its result in each round.
    let mut results: Vec<(String, Vec<Measured>)> = Vec::new();
    for round in 1..=rounds {
        eprintln!("throughput round {round} of {rounds}");
        for (label, rate, cpu) in throughput_round(dir) {
            match results.iter_mut().find(|(l, _)| *l == label) {
                Some((_, runs)) => runs.push((rate, cpu)),
                None => results.push((label, vec![(rate, cpu)])),
            }
        }
    }
    println!(
        "\n| setup ({PUBLISHERS} x {PER_PUBLISHER} QoS 1 messages of {PAYLOAD_BYTES} bytes, {rounds} rounds) | msg/s median (min-max) | vs (a), medians | vs (a), each round | CPU µs/msg median (gatehost / translator) |"
    );
    println!("|---|---:|---:|---:|---:|");
    let ceiling: Option<Vec<f64>> = results
        .iter()
        .find(|(l, _)| l.starts_with("(a)"))
        .map(|(_, runs)| runs.iter().map(|r| r.0).collect());
    for (label, runs) in &results {
        let rates: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let (lo, hi) = rates
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        let (vs_median, vs_rounds) = match &ceiling {
            Some(a) => (
                format!("{:.2}x", median(&rates) / median(a)),
                rates
                    .iter()
                    .zip(a)
                    .map(|(r, a)| format!("{:.2}", r / a))
                    .collect::<Vec<_>>()
                    .join(" / "),
            ),
            None => ("-".into(), "-".into()),
        };
        let cpus: Vec<f64> = runs.iter().filter_map(|r| r.1).collect();
        let cpu = if cpus.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}", median(&cpus))
        };
        println!(
            "| {label} | {:.0} ({lo:.0}-{hi:.0}) | {vs_median} | {vs_rounds} | {cpu} |",
            median(&rates)
        );
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// msg/s, and CPU µs per message of gatehost or the translator.
type Measured = (f64, Option<f64>);

/// [`run_load`] on `port`, and the CPU µs per message `process` spent meanwhile.
fn load_measuring(process: &Proc, port: u16, rx: &mpsc::Receiver<(Instant, String)>) -> (f64, f64) {
    let before = cpu_secs(process.0.id());
    let rate = run_load(port, rx);
    let cpu = cpu_secs(process.0.id()) - before;
    (rate, cpu / (PUBLISHERS * PER_PUBLISHER) as f64 * 1e6)
}

/// One round of every selected setup: (label, msg/s, CPU µs/msg of gatehost or the translator).
fn throughput_round(dir: &Path) -> Vec<(String, f64, Option<f64>)> {
    let only = std::env::var("BRIDGE_BENCH_SETUPS").unwrap_or_default();
    let setup = |name: &str| only.is_empty() || only.split(',').any(|s| s.trim() == name);
    let mut rows: Vec<(String, f64, Option<f64>)> = Vec::new();

    // (a) one plain hop.
    if setup("a") {
        let (_broker, port) = mosquitto(dir);
        let (_sub, rx) = subscriber(port, "plant1/#", None);
        rows.push((
            "(a) publishers -> mosquitto -> mosquitto_sub".into(),
            run_load(port, &rx),
            None,
        ));
    }

    for reader in Reader::wanted() {
        // (b) through gatehost, each rule kind.
        for (label, rule) in [
            ("template", TEMPLATE_RULE),
            ("WASM", WASM_RULE),
            ("Rhai", RHAI_RULE),
        ] {
            if !setup(&label.to_lowercase()) {
                continue;
            }
            let cloud = upstream(dir, reader);
            let (_sub, rx) = cloud.subscribe();
            let (local, metrics) = gatehost_config(dir, cloud.tls_port, rule);
            let g = start_gatehost(dir, metrics);
            let (rate, cpu) = load_measuring(&g, local, &rx);
            rows.push((
                format!(
                    "(b) publishers -> gatehost ({label} rule, queue) -> TLS mosquitto -> {}",
                    reader.label()
                ),
                rate,
                Some(cpu),
            ));
        }

        // (c) the Python translator.
        if setup("c") {
            let (_local, local_port) = mosquitto(dir);
            let cloud = upstream(dir, reader);
            let (_sub, rx) = cloud.subscribe();
            let script = dir.join("translator.py");
            std::fs::write(&script, TRANSLATOR).unwrap();
            let mut child = Command::new(repo().join(".venv/bin/python"))
                .arg(&script)
                .args([
                    local_port.to_string(),
                    cloud.tls_port.to_string(),
                    dir.display().to_string(),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect(".venv with paho-mqtt (.ci/install-deps)");
            let mut ready = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut ready)
                .unwrap();
            std::thread::sleep(Duration::from_millis(500));
            let translator = Proc(child);
            let (rate, cpu) = load_measuring(&translator, local_port, &rx);
            rows.push((
                format!(
                    "(c) publishers -> mosquitto -> Python paho translator -> TLS mosquitto -> {}",
                    reader.label()
                ),
                rate,
                Some(cpu),
            ));
        }
    }

    rows
}

/// Latency at a paced 5 000 msg/s for 5 s: the plain hop, then through gatehost.
fn latencies(dir: &Path) {
    {
        let (_broker, port) = mosquitto(dir);
        let (_sub, rx) = subscriber(port, "plant1/#", None);
        latency("publisher -> mosquitto -> mosquitto_sub", port, &rx);
    }
    for reader in Reader::wanted() {
        let cloud = upstream(dir, reader);
        let (_sub, rx) = cloud.subscribe();
        let (local, metrics) = gatehost_config(dir, cloud.tls_port, TEMPLATE_RULE);
        let _g = start_gatehost(dir, metrics);
        latency(
            &format!(
                "publisher -> gatehost (template rule, queue) -> TLS mosquitto -> {}",
                reader.label()
            ),
            local,
            &rx,
        );
    }
}

/// Idle RSS with 10 rules loaded (4 template, 3 WASM, 3 Rhai).
fn idle_rss(dir: &Path) {
    {
        let cloud = upstream(dir, Reader::Plain);
        let mut rules = String::new();
        for i in 0..4 {
            rules.push_str(&format!("[[rules]]\nname = \"t{i}\"\n[rules.template]\npattern = \"site{i}/{{machine}}/#\"\ndevice = \"{{machine}}\"\n"));
        }
        for i in 0..3 {
            rules.push_str(&format!("[[rules]]\nname = \"w{i}\"\nrule = \"iothub-telemetry-wasm\"\nfrom = [\"w{i}/#\"]\n"));
            rules.push_str(&format!(
                "[[rules]]\nname = \"r{i}\"\nrule = \"iothub-telemetry\"\nfrom = [\"r{i}/#\"]\n"
            ));
        }
        let (_local, metrics) = gatehost_config(dir, cloud.tls_port, &rules);
        let g = start_gatehost(dir, metrics);
        std::thread::sleep(Duration::from_secs(3));
        println!(
            "\nIdle RSS of gatehost run with 10 rules (4 template, 3 WASM, 3 Rhai) and 4 connected devices: {:.1} MiB",
            rss_mib(g.0.id())
        );
    }
}

/// Publish 25 000 messages at 5 000 msg/s (QoS 1, send time in the payload) to `port` and print
/// the latency percentiles `rx` sees. The publisher writes ready-made MQTT 3.1.1 packets on a
/// plain socket (one `write` per message; a second thread reads and drops the PUBACKs): a full
/// client library cost about half a core at this rate, on the same 2 cores as the path being
/// measured.
fn latency(label: &str, port: u16, rx: &mpsc::Receiver<(Instant, String)>) {
    let epoch = Instant::now();
    let count = 25_000usize;
    let publisher = std::thread::spawn(move || {
        let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
        socket.set_nodelay(true).unwrap();
        socket.write_all(&mqtt_connect("latency")).unwrap();
        let mut connack = [0u8; 4];
        std::io::Read::read_exact(&mut socket, &mut connack).unwrap();
        assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
        let mut acks = socket.try_clone().unwrap();
        // Drains the PUBACKs until the connection closes.
        std::thread::spawn(move || std::io::copy(&mut acks, &mut std::io::sink()));
        for n in 0..count {
            let due = epoch + Duration::from_micros(200 * n as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let sent = epoch.elapsed().as_micros();
            let payload = format!("{sent:0>20}{}", "x".repeat(PAYLOAD_BYTES - 20));
            let packet_id = (n % 65_535 + 1) as u16;
            socket
                .write_all(&mqtt_publish(
                    "plant1/dev01/m",
                    packet_id,
                    payload.as_bytes(),
                ))
                .unwrap();
        }
        // Stay connected until the last PUBACKs are in.
        std::thread::sleep(Duration::from_secs(1));
    });
    let mut latencies = Vec::with_capacity(count);
    while latencies.len() < count {
        let (at, line) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("latency messages");
        let sent: u128 = line[..20].parse().unwrap_or(0);
        latencies.push(at.duration_since(epoch).as_micros().saturating_sub(sent) as f64 / 1000.0);
    }
    publisher.join().unwrap();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "\nLatency at 5 000 msg/s, {count} messages, {label}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50),
        pct(0.99),
        latencies[latencies.len() - 1]
    );
}

/// An MQTT 3.1.1 CONNECT (clean session, 60 s keep-alive).
fn mqtt_connect(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    mqtt_packet(0x10, &body)
}

/// An MQTT 3.1.1 QoS 1 PUBLISH.
fn mqtt_publish(topic: &str, packet_id: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(topic.len() + payload.len() + 4);
    body.extend((topic.len() as u16).to_be_bytes());
    body.extend(topic.as_bytes());
    body.extend(packet_id.to_be_bytes());
    body.extend(payload);
    mqtt_packet(0x32, &body)
}

/// Fixed header (packet type and flags, remaining length as a variable-length integer) + body.
fn mqtt_packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend(body);
    out
}
