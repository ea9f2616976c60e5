//! `gatehost plugin new`: a working plugin skeleton for either engine and kind, ready for
//! `gatehost check`, `gatehost rule test` (rules), `gatehost onboard` (flows) and
//! `gatehost plugin pack`. WASM plugins come in Rust (a crate on the gatehost SDK), JavaScript
//! (componentize-js) and Python (componentize-py); the JavaScript and Python skeletons carry a
//! copy of the WIT package (`wit/`) so that they build anywhere, offline. Their sources are the
//! files in `templates/`.

use crate::model::is_plugin_name;
use crate::plugins::discovery::EngineKind;
use crate::plugins::manifest::PluginKind;
use std::path::{Path, PathBuf};

/// The language of a WASM plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Rust,
    JavaScript,
    Python,
}

/// The WIT package every component is built against, as the JavaScript and Python skeletons
/// carry it in `wit/`.
const WIT: [(&str, &str); 10] = [
    ("certs.wit", include_str!("../../../../../wit/certs.wit")),
    ("crypto.wit", include_str!("../../../../../wit/crypto.wit")),
    ("http.wit", include_str!("../../../../../wit/http.wit")),
    ("json.wit", include_str!("../../../../../wit/json.wit")),
    ("kv.wit", include_str!("../../../../../wit/kv.wit")),
    ("log.wit", include_str!("../../../../../wit/log.wit")),
    ("mqtt.wit", include_str!("../../../../../wit/mqtt.wit")),
    ("time.wit", include_str!("../../../../../wit/time.wit")),
    ("types.wit", include_str!("../../../../../wit/types.wit")),
    ("worlds.wit", include_str!("../../../../../wit/worlds.wit")),
];

#[derive(Debug, thiserror::Error)]
pub enum SkeletonError {
    #[error("'{0}' is not a plugin name: use 1-64 of a-z, 0-9, '-' and '_', starting with a letter or digit")]
    BadName(String),
    #[error("{0} already exists; choose another --out or remove it")]
    Exists(PathBuf),
    #[error("a WASM plugin needs the gatehost SDK crate: pass --sdk <path to plugins/sdk of a gatehost checkout> ({0} does not exist)")]
    NoSdk(PathBuf),
    #[error(
        "--lang {0} is for WASM plugins: add --engine wasm, or leave --lang out for a Rhai script"
    )]
    LangWithoutWasm(&'static str),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The files of a new plugin, as (relative path, contents).
pub fn files(
    name: &str,
    kind: PluginKind,
    engine: EngineKind,
    lang: Lang,
    sdk: &Path,
) -> Vec<(String, String)> {
    let crate_name = name.replace('-', "_");
    let entry = match (engine, lang) {
        (EngineKind::Rhai, _) => format!("{name}.rhai"),
        (EngineKind::Wasm, Lang::Rust) => format!("target/wasm32-wasip2/release/{crate_name}.wasm"),
        (EngineKind::Wasm, _) => format!("{name}.wasm"),
    };
    let mut manifest = format!(
        "# The manifest of plugin {name}: what it is and everything it may use.\nname = \"{name}\"\nversion = \"0.1.0\"\nkind = \"{kind}\"\napi = \"{api}\"\ndescription = \"{what}\"\npublisher = \"my-company\"\nentry = \"{entry}\"\n\n[permissions]\n",
        api = "0.1",
        what = match kind {
            PluginKind::Rule => "<site>/<device>/<measurement> topics to IoT Hub telemetry",
            PluginKind::Flow => "Connects a device to an MQTT broker with a username and password",
        },
    );
    match kind {
        PluginKind::Rule => manifest.push_str("endpoints = []\n"),
        PluginKind::Flow => manifest.push_str(
            "# Only these host:port patterns can be dialled (`*` = one DNS label or any port).\nendpoints = [\"*:8883\"]\n\n[params]\nrequired = [\"host\", \"device_id\", \"password\"]\noptional = [\"port\", \"ca_file\"]\nnumbers = [\"port\"]\n",
        ),
    }
    let mut out = vec![(format!("{name}.toml"), manifest)];
    match engine {
        EngineKind::Rhai => out.push((
            format!("{name}.rhai"),
            match kind {
                PluginKind::Rule => RHAI_RULE.replace("{name}", name),
                PluginKind::Flow => RHAI_FLOW.replace("{name}", name),
            },
        )),
        EngineKind::Wasm if lang != Lang::Rust => {
            let fill = |t: &str| {
                t.replace("{name}", name)
                    .replace("{kind}", &kind.to_string())
            };
            let rule = kind == PluginKind::Rule;
            if lang == Lang::JavaScript {
                let source = if rule { RULE_JS } else { FLOW_JS };
                out.push((format!("{name}.js"), fill(source)));
                out.push(("package.json".into(), fill(PACKAGE_JSON)));
            } else {
                out.push(("app.py".into(), fill(if rule { RULE_PY } else { FLOW_PY })));
                out.push(("build.sh".into(), fill(BUILD_SH)));
            }
            for (file, text) in WIT {
                out.push((format!("wit/{file}"), text.to_string()));
            }
        }
        EngineKind::Wasm => {
            out.push((
                "Cargo.toml".into(),
                CARGO_TOML
                    .replace("{crate}", &crate_name)
                    .replace("{sdk}", &sdk.display().to_string()),
            ));
            out.push((
                "src/lib.rs".into(),
                match kind {
                    PluginKind::Rule => WASM_RULE.replace("{name}", name),
                    PluginKind::Flow => WASM_FLOW.replace("{name}", name),
                },
            ));
        }
    }
    out
}

/// Write the skeleton into `dir` (which must not exist yet). Returns the files written.
pub fn create(
    dir: &Path,
    name: &str,
    kind: PluginKind,
    engine: EngineKind,
    lang: Lang,
    sdk: &Path,
) -> Result<Vec<PathBuf>, SkeletonError> {
    if !is_plugin_name(name) {
        return Err(SkeletonError::BadName(name.to_string()));
    }
    if engine == EngineKind::Rhai && lang != Lang::Rust {
        return Err(SkeletonError::LangWithoutWasm(match lang {
            Lang::JavaScript => "js",
            _ => "python",
        }));
    }
    if dir.exists() {
        return Err(SkeletonError::Exists(dir.to_path_buf()));
    }
    if engine == EngineKind::Wasm && lang == Lang::Rust && !sdk.join("Cargo.toml").exists() {
        return Err(SkeletonError::NoSdk(sdk.to_path_buf()));
    }
    let sdk = sdk.canonicalize().unwrap_or_else(|_| sdk.to_path_buf());
    let mut written = Vec::new();
    for (rel, text) in files(name, kind, engine, lang, &sdk) {
        let path = dir.join(&rel);
        let write = || -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, text)
        };
        write().map_err(|source| SkeletonError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    #[cfg(unix)]
    if let Some(script) = written.iter().find(|p| p.ends_with("build.sh")) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o755)).map_err(
            |source| SkeletonError::Write {
                path: script.clone(),
                source,
            },
        )?;
    }
    Ok(written)
}

const RULE_JS: &str = include_str!("templates/rule.js");
const FLOW_JS: &str = include_str!("templates/flow.js");
const PACKAGE_JSON: &str = include_str!("templates/package.json");
const RULE_PY: &str = include_str!("templates/rule.py");
const FLOW_PY: &str = include_str!("templates/flow.py");
const BUILD_SH: &str = include_str!("templates/build.sh");

const RHAI_RULE: &str = r#"// {name}: a gatehost rule (Rhai). `translate(msg)` receives one local MQTT message
// (msg.topic, msg.payload as a blob, msg.qos, msg.retain, msg.properties) and returns the
// messages to send: to a device's upstream session (`upstream: "<device>"`) or back to the
// local broker (`local: true`). Throw #{ kind, message } to reject a message.
//
// Try it:  gatehost rule test {name} --topic plant1/press7/temperature --payload '{"value":21.5}'

fn translate(msg) {
    let levels = msg.topic.split("/");
    if levels.len() < 3 || levels[1] == "" {
        throw #{
            kind: "invalid-input",
            message: `topic '${msg.topic}' does not have the form <site>/<device>/<measurement>`
        };
    }
    let device = levels[1];
    [#{
        upstream: device,
        topic: `devices/${device}/messages/events/measurement=${crypto::percent_encode(levels[2])}`,
        payload: msg.payload,
        qos: if msg.qos > 1 { 1 } else { msg.qos },
        retain: false,
        properties: msg.properties
    }]
}
"#;

const RHAI_FLOW: &str = r#"// {name}: a gatehost onboarding flow (Rhai). `onboard(params)` returns the connection a
// device uses (host, port, client id, username, how to authenticate); `refresh(conn)` returns
// fresh credentials before they expire. Params come from the device's [devices.params].
//
// Try it: add a device with `flow = "{name}"` to gatehost.toml, then `gatehost onboard <device>`.

fn onboard(p) {
    let port = if "port" in p { parse_int(p.port) } else { 8883 };
    if type_of(port) != "i64" || port < 1 || port > 65535 {
        throw #{ kind: "invalid-input", message: `port '${p.port}' must be a number from 1 to 65535` };
    }
    let conn = #{
        host: p.host,
        port: port,
        client_id: p.device_id,
        username: p.device_id,
        auth: #{ kind: "password", password: p.password },
        keep_alive_secs: 60,
        attributes: [["device-id", p.device_id]]
    };
    if "ca_file" in p { conn.ca_file = p.ca_file; }
    conn
}

fn refresh(conn) {
    // A fixed password does not expire: nothing to renew.
    #{}
}
"#;

const CARGO_TOML: &str = r#"# A gatehost WASM plugin. Build:
#   cargo build --release --target wasm32-wasip2
[package]
name = "{crate}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
gatehost-sdk = { path = "{sdk}" }

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
panic = "abort"
strip = true

# Not part of any other workspace.
[workspace]
"#;

const WASM_RULE: &str = r#"//! {name}: a gatehost rule (WASM). `translate` receives one local MQTT message and returns
//! the messages to send: to a device's upstream session or back to the local broker.
//!
//! Build: `cargo build --release --target wasm32-wasip2`, then
//! `gatehost rule test {name}.toml --topic plant1/press7/temperature --payload '{"value":21.5}'`.

use gatehost_sdk::rule::{Destination, ErrorKind, Guest, Message, Outbound};
use gatehost_sdk::{error, Error};

struct Rule;

impl Guest for Rule {
    fn translate(msg: Message) -> Result<Vec<Outbound>, Error> {
        let levels: Vec<&str> = msg.topic.split('/').collect();
        if levels.len() < 3 || levels[1].is_empty() {
            return Err(error(
                ErrorKind::InvalidInput,
                format!(
                    "topic '{}' does not have the form <site>/<device>/<measurement>",
                    msg.topic
                ),
            ));
        }
        let device = levels[1].to_string();
        let measurement = gatehost_sdk::host::crypto::percent_encode(levels[2]);
        Ok(vec![Outbound {
            destination: Destination::Upstream(device.clone()),
            message: Message {
                topic: format!("devices/{device}/messages/events/measurement={measurement}"),
                payload: msg.payload,
                qos: msg.qos.min(1),
                retain: false,
                properties: msg.properties,
            },
        }])
    }
}

gatehost_sdk::export_rule!(Rule);

/// Everything a call allocates is freed when it ends: a bump arena serves it (faster than malloc).
#[global_allocator]
static ALLOC: gatehost_sdk::CallArena = gatehost_sdk::CallArena::new();
"#;

const WASM_FLOW: &str = r#"//! {name}: a gatehost onboarding flow (WASM). `onboard` returns the connection a device
//! uses; `refresh` returns fresh credentials before they expire.
//!
//! Build: `cargo build --release --target wasm32-wasip2`; add a device with
//! `flow = "{name}"` to gatehost.toml, then `gatehost onboard <device>`.

use gatehost_sdk::flow::{Auth, Connection, Credentials, ErrorKind, Guest, ProtocolVersion};
use gatehost_sdk::{error, param, Error};

struct Flow;

impl Guest for Flow {
    fn onboard(params: Vec<(String, String)>) -> Result<Connection, Error> {
        let port = match params.iter().find(|(k, _)| k == "port") {
            Some((_, p)) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                error(
                    ErrorKind::InvalidInput,
                    format!("port '{p}' must be a number from 1 to 65535"),
                )
            })?,
            None => 8883,
        };
        let device = param(&params, "device_id").to_string();
        Ok(Connection {
            host: param(&params, "host").to_string(),
            port,
            client_id: device.clone(),
            username: Some(device.clone()),
            auth: Auth::Password(param(&params, "password").to_string()),
            ca_file: params
                .iter()
                .find(|(k, _)| k == "ca_file")
                .map(|(_, v)| v.clone()),
            server_name: None,
            alpn: vec![],
            protocol: ProtocolVersion::Mqtt311,
            keep_alive_secs: 60,
            attributes: vec![("device-id".into(), device)],
            expires_at: None,
        })
    }

    fn refresh(_conn: Connection) -> Result<Credentials, Error> {
        // A fixed password does not expire: nothing to renew.
        Ok(Credentials {
            username: None,
            password: None,
            expires_at: None,
        })
    }
}

gatehost_sdk::export_flow!(Flow);
"#;
