//! Publish throughput of one plugin-driven QoS 1 session vs `mosquitto_pub -l` sending the same
//! messages, both over TLS with client certificates to the same local mosquitto:
//!
//!   cargo bench -p gatehost --bench mqtt_publish
//!
//! Needs `mosquitto` and `mosquitto_pub` (`.ci/install-deps`). Prints a table for BENCHMARKS.md.

use gatehost::caps::certs::{KeyAlgorithm, PrivateKey};
use gatehost::pki::x509::{self, CertificateAuthority, Subject};
use gatehost::plugins::registry::{PluginEnv, PluginHandle, Registry};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MESSAGES: usize = 5_000;
const PAYLOAD_BYTES: usize = 100;

/// CA, server certificate for 127.0.0.1 and a client certificate, written to `dir`.
fn pki(dir: &Path) {
    let ca_key = PrivateKey::generate(KeyAlgorithm::P256).unwrap();
    let ca_pem =
        x509::self_signed_ca(&ca_key, &Subject::parse("/CN=Bench CA").unwrap(), 2).unwrap();
    std::fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
    let ca = CertificateAuthority::new(&ca_pem, &ca_key, "ca.pem", "ca.key").unwrap();
    for (name, sans) in [
        ("server", vec!["127.0.0.1".to_string()]),
        ("client", vec![]),
    ] {
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
        std::fs::write(dir.join(format!("{name}.pem")), &cert).unwrap();
        std::fs::write(
            dir.join(format!("{name}_chain.pem")),
            format!("{cert}{ca_pem}"),
        )
        .unwrap();
    }
}

/// Kills the broker however the benchmark ends (a panic included).
struct Broker(std::process::Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let path = |f: &str| dir.join(f).display().to_string();
    pki(dir);

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.join("mosquitto.conf"),
        format!(
            "user root\npersistence false\nlistener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nuse_identity_as_username true\nallow_anonymous true\nmax_inflight_messages 0\nset_tcp_nodelay true\n",
            path("ca.pem"), path("server.pem"), path("server.key")
        ),
    )
    .unwrap();
    let _broker = Broker(
        Command::new("mosquitto")
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto"),
    );
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "mosquitto did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // gatehost: a Rhai flow publishes the messages over one session, QoS 1.
    std::fs::write(
        dir.join("publisher.rhai"),
        format!(
            r#"
fn onboard(p) {{
    let key = certs::load_key("{key}");
    // A client id per run: gatehost spaces CONNECTs of one client id a second apart.
    let id = "gatehost-bench-" + p.run;
    let s = mqtt::connect(#{{ host: "127.0.0.1", port: {port}, client_id: id,
        tls: #{{ ca_file: "{ca}", client_certificate: #{{ chain_file: "{chain}", key_ref: key.reference() }} }} }});
    let payload = "{payload}";
    if p.batch == "1" {{
        for i in 0..{MESSAGES} {{ s.publish(#{{ topic: "bench/gatehost", payload: payload, qos: 1 }}); }}
    }} else {{
        let size = parse_int(p.batch);
        let batch = [];
        for i in 0..size {{ batch.push(#{{ topic: "bench/gatehost", payload: payload, qos: 1 }}); }}
        for i in 0..({MESSAGES} / size) {{ s.publish_batch(batch); }}
    }}
    s.disconnect();
    #{{ host: "127.0.0.1", port: {port}, client_id: id, auth: #{{ kind: "none" }} }}
}}
fn refresh(c) {{ #{{}} }}
"#,
            key = path("client.key"),
            ca = path("ca.pem"),
            chain = path("client_chain.pem"),
            payload = "x".repeat(PAYLOAD_BYTES),
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("publisher.toml"),
        format!(
            "name = \"publisher\"\nversion = \"0.1.0\"\nkind = \"flow\"\napi = \"0.1\"\n[permissions]\nendpoints = [\"127.0.0.1:{port}\"]\nfile_roots = [\"{}\"]\n[limits]\ntimeout_ms = 600000\nmax_operations = 1000000000\n",
            dir.display()
        ),
    )
    .unwrap();
    let env = PluginEnv {
        state_dir: dir.join("state"),
        ..PluginEnv::ephemeral(vec![])
    };
    let PluginHandle::Flow(flow) = Registry::load_path(env, &dir.join("publisher.toml"))
        .unwrap()
        .handle
    else {
        unreachable!()
    };
    let runs = std::cell::Cell::new(0u32);
    let run_gatehost = |batch: &str| {
        runs.set(runs.get() + 1);
        let t = Instant::now();
        flow.onboard(&[
            ("batch".into(), batch.into()),
            ("run".into(), runs.get().to_string()),
        ])
        .expect("the publisher flow runs");
        t.elapsed()
    };

    // mosquitto_pub -l: one message per input line, same size, QoS 1, same TLS set-up.
    let lines = format!("{}\n", "x".repeat(PAYLOAD_BYTES)).repeat(MESSAGES);
    let run_mosquitto_pub = || {
        let t = Instant::now();
        let mut publisher = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--cafile",
                &path("ca.pem"),
                "--cert",
                &path("client.pem"),
                "--key",
                &path("client.key"),
                "-t",
                "bench/mosquitto_pub",
                "-q",
                "1",
                "-l",
                "-i",
                "mosquitto-pub-bench",
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("mosquitto_pub");
        use std::io::Write;
        publisher
            .stdin
            .take()
            .unwrap()
            .write_all(lines.as_bytes())
            .unwrap();
        assert!(publisher.wait().unwrap().success());
        t.elapsed()
    };

    // Alternate the two, three rounds each, and compare medians.
    let (mut single, mut batched, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..3 {
        if round % 2 == 0 {
            single.push(run_gatehost("1"));
            batched.push(run_gatehost("100"));
            theirs.push(run_mosquitto_pub());
        } else {
            theirs.push(run_mosquitto_pub());
            batched.push(run_gatehost("100"));
            single.push(run_gatehost("1"));
        }
    }
    for v in [&mut single, &mut batched, &mut theirs] {
        v.sort();
    }
    let (gatehost, gatehost_batched, mosquitto_pub) = (single[1], batched[1], theirs[1]);

    let rate = |d: Duration| MESSAGES as f64 / d.as_secs_f64();
    println!("| publisher ({MESSAGES} x {PAYLOAD_BYTES} B, QoS 1, TLS + client cert; median of 3) | time | msg/s | vs mosquitto_pub |");
    println!("|---|---|---|---|");
    println!(
        "| mosquitto_pub -l | {:.2} s | {:.0} | 1.00× |",
        mosquitto_pub.as_secs_f64(),
        rate(mosquitto_pub)
    );
    println!("| gatehost Rhai flow, one session, `publish` (waits for each PUBACK) | {:.2} s | {:.0} | {:.2}× |", gatehost.as_secs_f64(), rate(gatehost), rate(gatehost) / rate(mosquitto_pub));
    println!("| gatehost Rhai flow, one session, `publish_batch` of 100 (pipelined) | {:.2} s | {:.0} | {:.2}× |", gatehost_batched.as_secs_f64(), rate(gatehost_batched), rate(gatehost_batched) / rate(mosquitto_pub));
}
