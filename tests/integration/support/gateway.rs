//! gatehost as a user runs it: `gatehost run` as a child process (started, scraped,
//! stopped with SIGTERM or `kill -9`), `gatehost onboard`, and the local MQTT clients and the TCP
//! relay the bridge tests put around it.

use crate::support::mosquitto::{free_port, Pki};
use crate::support::{install_shipped_flows, repo_root};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `gatehost run` child process, killed when dropped.
pub struct Gatehost {
    pub child: Child,
    pub log: PathBuf,
    pub metrics: u16,
}

impl Gatehost {
    /// Run `gatehost run --config <dir>/gatehost.toml` from `dir`; wait until it serves.
    pub fn start(dir: &Path, metrics: u16) -> Gatehost {
        let log = dir.join(format!("gatehost-{}.log", free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_gatehost"))
            .args(["run", "--config", "gatehost.toml"])
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut g = Gatehost {
            child,
            log,
            metrics,
        };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", metrics)).is_err() {
            if let Ok(Some(status)) = g.child.try_wait() {
                panic!("gatehost run exited ({status}):\n{}", g.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "gatehost run did not start:\n{}",
                g.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        g
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET a path of the metrics endpoint; the body.
    pub fn http(&self, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or(out)
    }

    /// The value of the metric line starting with `series` (name and labels), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.http("/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Stop it as an operator does (SIGTERM) and wait until it exited.
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        eventually(30, "gatehost run exits after SIGTERM", || {
            self.child.try_wait().unwrap().is_some()
        });
    }

    pub fn kill9(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Gatehost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `gatehost run` in `dir` expecting it to refuse to start (exit code 1); its stderr.
pub fn run_refused(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gatehost"))
        .args(["run", "--config", "gatehost.toml"])
        .current_dir(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

/// Wait up to `secs` for `done`.
pub fn eventually(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Publish with `mosquitto_pub`; asserts it succeeded.
pub fn mosquitto_pub(port: u16, topic: &str, payload: &[u8]) {
    // `-s` (stdin) refuses empty input; `-n` sends an empty message.
    let source = if payload.is_empty() { "-n" } else { "-s" };
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            source,
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(payload).unwrap();
    assert!(child.wait().unwrap().success(), "mosquitto_pub to {topic}");
}

/// `mosquitto_sub` printing `topic hexpayload` lines into a file.
pub struct Sub {
    pub child: Child,
    pub out: PathBuf,
}

impl Sub {
    pub fn start(dir: &Path, args: &[String]) -> Sub {
        let out = dir.join(format!("sub-{}.txt", free_port()));
        let mut all: Vec<String> = vec!["-h".into(), "127.0.0.1".into(), "-q".into(), "1".into()];
        all.extend(args.iter().cloned());
        all.extend(["-F".into(), "%t %x".into()]);
        let child = Command::new("mosquitto_sub")
            .args(&all)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // mosquitto_sub has no "subscribed" signal; give it a moment.
        std::thread::sleep(Duration::from_millis(500));
        Sub { child, out }
    }

    /// (topic, payload) of every message so far.
    pub fn messages(&self) -> Vec<(String, Vec<u8>)> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (topic, hex) = l.rsplit_once(' ').unwrap_or((l, ""));
                Some((topic.to_string(), hex::decode(hex).ok()?))
            })
            .collect()
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay in front of a broker: cutting it is an upstream outage (connections reset,
/// new ones refused at once) without stopping the broker or its subscribers.
pub struct Relay {
    pub port: u16,
    pub up: Arc<AtomicBool>,
    pub open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    pub fn start(target: u16, up: bool) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let relay = Relay {
            port,
            up: Arc::new(AtomicBool::new(up)),
            open: Arc::new(Mutex::new(Vec::new())),
        };
        let (flag, open) = (relay.up.clone(), relay.open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !flag.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut kept = open.lock().unwrap();
                kept.push(client.try_clone().unwrap());
                kept.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        relay
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            for s in self.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// `gatehost onboard DEVICE --json --config CONFIG [extra]`.
pub fn gatehost_onboard(config: &Path, device: &str, extra: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_gatehost"))
        .args(["onboard", device, "--json", "--config"])
        .arg(config)
        .args(extra)
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The JSON of a successful `gatehost onboard`.
pub fn onboarded(config: &Path, device: &str, extra: &[&str]) -> serde_json::Value {
    let run = gatehost_onboard(config, device, extra);
    assert_eq!(run.code, Some(0), "{device}: {}", run.stderr);
    serde_json::from_str(run.stdout.trim()).unwrap()
}

/// A client certificate `name` (CN = name) from the test PKI's CA, as `<dir>/<name>.pem|.key`.
pub fn issue_device(pki: &Pki, dir: &Path, name: &str) {
    // As the providers' guides make device certificates (X.509 v1), chain in `<name>.pem`.
    let (ca_pem, ca_key) = (pki.dir.join("ca.pem"), pki.dir.join("ca.key"));
    crate::support::openssl::guide_leaf_by(dir, &ca_pem, &ca_key, name, name);
    std::fs::rename(
        dir.join(format!("{name}_chain.pem")),
        dir.join(format!("{name}.pem")),
    )
    .unwrap();
}

/// A gateway dir for devices `dev01`, `dev02` on a TLS mosquitto reached at `upstream_port`,
/// with the template rule `plant/{machine}/#` -> `dt/{machine}/{#}` and `extra` config.
pub fn tls_gateway(pki: &Pki, upstream_port: u16, extra: &str) -> (tempfile::TempDir, u16, u16) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    install_shipped_flows(d);
    std::fs::copy(pki.path("ca.pem"), d.join("ca.pem")).unwrap();
    for device in ["dev01", "dev02"] {
        issue_device(pki, d, device);
    }
    let (local, metrics) = (free_port(), free_port());
    let mut text = format!(
        "state_dir = \"state\"\nplugin_dirs = [\"plugins\", {rules:?}]\n[local]\nlisten = \"127.0.0.1:{local}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\n[[rules]]\nname = \"plant-to-dt\"\n[rules.template]\npattern = \"plant/{{machine}}/#\"\ndevice = \"{{machine}}\"\ntopic = \"dt/{{machine}}/{{#}}\"\n",
        rules = repo_root().join("scripts/rules").display().to_string(),
    );
    for device in ["dev01", "dev02"] {
        text.push_str(&format!(
            "\n[[devices]]\nname = \"{device}\"\nflow = \"aws-iot\"\n[devices.params]\nendpoint = \"localhost\"\nport = \"{upstream_port}\"\ncertificate = \"{d}/{device}.pem\"\nkey = \"{d}/{device}.key\"\nca_file = \"{d}/ca.pem\"\n",
            d = d.display()
        ));
    }
    text.push_str(extra);
    std::fs::write(d.join("gatehost.toml"), text).unwrap();
    (dir, local, metrics)
}

/// Subscribe to `dt/#` on the TLS mosquitto with a client certificate of its CA.
pub fn dt_subscriber(pki: &Pki, port: u16) -> Sub {
    Sub::start(
        &pki.dir,
        &[
            "-p".into(),
            port.to_string(),
            "-t".into(),
            "dt/#".into(),
            "--cafile".into(),
            pki.path("ca.pem"),
            "--cert".into(),
            pki.path("dev01_chain.pem"),
            "--key".into(),
            pki.path("dev01.key"),
            "-i".into(),
            "reader".into(),
        ],
    )
}

/// A folder with a `gatehost.toml` of no plugins, an embedded broker and metrics on free ports,
/// and `extra` appended; the folder and both ports.
pub fn bare_gateway(extra: &str) -> (tempfile::TempDir, u16, u16) {
    let dir = tempfile::tempdir().unwrap();
    let (local, metrics) = (free_port(), free_port());
    std::fs::write(
        dir.path().join("gatehost.toml"),
        format!(
            "state_dir = \"state\"\nplugin_dirs = []\n[local]\nlisten = \"127.0.0.1:{local}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n{extra}"
        ),
    )
    .unwrap();
    (dir, local, metrics)
}

/// A gateway with one Rhai rule `name` on the topics `from`, in `<dir>/plugins`: the config
/// (as [`bare_gateway`] writes it), the rule's manifest and `source`. Returns the folder, the
/// local broker's and the metrics' ports, and the plugin folder.
pub fn rhai_rule_gateway(
    name: &str,
    from: &str,
    source: &str,
) -> (tempfile::TempDir, u16, u16, PathBuf) {
    let (dir, local, metrics) = bare_gateway(&format!(
        "[[rules]]\nname = \"{name}\"\nrule = \"{name}\"\nfrom = [\"{from}\"]\n"
    ));
    let d = dir.path();
    let config = std::fs::read_to_string(d.join("gatehost.toml"))
        .unwrap()
        .replacen("plugin_dirs = []", "plugin_dirs = [\"plugins\"]", 1);
    std::fs::write(d.join("gatehost.toml"), config).unwrap();
    let plugins = d.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::write(plugins.join(format!("{name}.rhai")), source).unwrap();
    std::fs::write(
        plugins.join(format!("{name}.toml")),
        format!("name = \"{name}\"\nversion = \"1.0.0\"\nkind = \"rule\"\napi = \"0.1\"\n"),
    )
    .unwrap();
    (dir, local, metrics, plugins)
}

/// The payloads `sub` received so far, as text.
pub fn payloads(sub: &Sub) -> Vec<String> {
    sub.messages()
        .into_iter()
        .map(|(_, p)| String::from_utf8(p).unwrap())
        .collect()
}
