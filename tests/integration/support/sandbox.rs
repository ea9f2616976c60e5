//! The provider emulators (`gatehost sandbox`) as tests start them, with the keys and the
//! shipped and twin flows pointed at them.

use crate::support::openssl::{openssl_ca, openssl_leaf, openssl_leaf_valid_for};
use crate::support::{repo_root, wasm};
use gatehost::caps::mqtt::{connection_options, ConnectOptions, MqttSession};
use gatehost::caps::tls::TlsOptions;
use gatehost::caps::{CapContext, Permissions};
use gatehost::config::Config;
use gatehost::model::{Message, ProtocolVersion};
use gatehost::onboard::{self, Onboarded};
use gatehost::plugins::registry::{PluginEnv, Registry};
use gatehost::sandbox::config::SandboxConfig;
use gatehost::sandbox::{Sandbox, Service};
use std::path::{Path, PathBuf};

pub const DEVICE_KEY: &str = "c2FuZGJveCBkZXZpY2Uga2V5IGZvciBkZXYwMQ==";

pub const GROUP_KEY: &str = "c2FuZGJveCBncm91cCBrZXkgZm9yIHRoZSBsaW5l";

/// A sandbox in `dir` with a tenant CA, two device certificates, and one enrollment of each kind.
pub fn start_sandbox(dir: &Path, extra: &str) -> Sandbox {
    let pki = gatehost::sandbox::pki::SandboxPki::open(&dir.join("pki")).unwrap();
    pki.new_ca("tenant-ca", "Tenant CA").unwrap();
    pki.issue("tenant-ca", "x509-group-dev", "x509-group-dev", &[])
        .unwrap();
    pki.issue("tenant-ca", "x509-single", "x509-single", &[])
        .unwrap();
    let text = format!(
        r#"
pki_dir = "pki"
[dps]
assign_delay_ms = 300
[[dps.enrollments]]
attestation = "symmetric-key"
registration_id = "sym-dev"
primary_key = "{DEVICE_KEY}"
[[dps.enrollments]]
attestation = "group-symmetric-key"
group_key = "{GROUP_KEY}"
[[dps.enrollments]]
attestation = "group-x509"
ca = "pki/tenant-ca.pem"
[[dps.enrollments]]
attestation = "x509"
registration_id = "x509-single"
certificate = "pki/x509-single.pem"
{extra}
"#
    );
    let path = dir.join("sandbox.toml");
    std::fs::write(&path, &text).unwrap();
    Sandbox::start(&SandboxConfig::load(&path).unwrap()).unwrap()
}

/// A capability context for test clients: any localhost port, files under `dir`.
pub fn ctx(dir: &Path) -> CapContext {
    CapContext::ephemeral(
        "sandbox-test",
        Permissions {
            endpoints: vec!["localhost:*".into()],
            file_roots: vec![dir.display().to_string()],
            kv_namespace: None,
        },
    )
}

/// MQTT 3.1.1 over TLS to a sandbox service, verifying it with the sandbox CA.
pub fn options(
    sandbox: &Sandbox,
    port: u16,
    client_id: &str,
    username: &str,
    password: &str,
) -> ConnectOptions {
    ConnectOptions {
        host: "localhost".into(),
        port,
        client_id: client_id.into(),
        username: Some(username.into()),
        password: Some(password.into()),
        keep_alive_secs: 30,
        clean_session: true,
        protocol: ProtocolVersion::Mqtt311,
        tls: Some(TlsOptions {
            ca_file: Some(sandbox.ca_file().display().to_string()),
            ..Default::default()
        }),
        connect_timeout_ms: 5000,
    }
}

/// The sandbox: DPS (throttling each registration's first register), a hub with two directly
/// registered devices, both MindConnect brokers for tenant `acme`, and AWS IoT things by CA.
pub fn start(d: &Path) -> Sandbox {
    openssl_ca(d, "acme-ca");
    for (name, cn) in [
        ("agent1", "agent1"),
        ("agent2", "agent2"),
        ("agent3", "acme_agent3"),
        ("thing1", "thing1"),
        ("edge-leaf", "edge-leaf"),
        ("line7-dev9", "line7-dev9"),
        ("rest-leaf", "rest-leaf"),
    ] {
        openssl_leaf(d, "acme-ca", name, cn);
    }
    openssl_leaf_valid_for(d, "acme-ca", "expired", "thing2", "-1");
    let config = format!(
        r#"
pki_dir = "pki"
[dps]
assign_delay_ms = 300
retry_after_secs = 1
throttle_registers = 1
[[dps.enrollments]]
attestation = "group-x509"
ca = "acme-ca.pem"
[[dps.enrollments]]
attestation = "group-symmetric-key"
group_key = "{}"
[iothub]
[[iothub.devices]]
device_id = "direct01"
primary_key = "{DEVICE_KEY}"
[[iothub.devices]]
device_id = "edge-leaf"
certificate = "edge-leaf.pem"
[mindconnect]
provision_delay_ms = 1500
eu1 = {{ port = 0 }}
private = {{ port = 0 }}
[[mindconnect.tenants]]
name = "acme"
ca = "acme-ca.pem"
[aws_iot]
[[aws_iot.things]]
ca = "acme-ca.pem"
allow = ["dt/${{iot:ClientId}}/#"]
"#,
        crate::support::sandbox::GROUP_KEY
    );
    let path = d.join("sandbox.toml");
    std::fs::write(&path, config).unwrap();
    Sandbox::start(&SandboxConfig::load(&path).unwrap()).unwrap()
}

/// `gatehost.toml` with one device per flow (and the bad ones).
pub fn write_config(d: &Path, sandbox: &Sandbox) -> PathBuf {
    let port = |s| sandbox.port(s).unwrap();
    let ca = sandbox.ca_file().display().to_string();
    let cert = |name: &str| {
        format!(
            "certificate = \"{}\"\nkey = \"{}\"\n",
            d.join(format!("{name}_chain.pem")).display(),
            d.join(format!("{name}.key")).display()
        )
    };
    let device = |name: &str, flow: &str, params: String| {
        format!("[[devices]]\nname = \"{name}\"\nflow = \"{flow}\"\ndeadline_secs = 20\n[devices.params]\nca_file = \"{ca}\"\n{params}\n")
    };
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = [
        "state_dir = \"state\"\nplugin_dirs = [\"plugins\"]\n".to_string(),
        device(
            "hub-sas",
            "azure-iothub",
            format!(
                "hub_host = \"localhost\"\nport = \"{}\"\ndevice_id = \"direct01\"\nsymmetric_key = \"{DEVICE_KEY}\"\n",
                port(Service::IotHub)
            ),
        ),
        device(
            "hub-edge",
            "azure-iothub",
            format!(
                "hub_host = \"localhost\"\ngateway_host = \"127.0.0.1\"\nport = \"{}\"\ndevice_id = \"edge-leaf\"\n{}",
                port(Service::IotHub),
                cert("edge-leaf")
            ),
        ),
        device(
            "eu1",
            "mindconnect-eu1",
            format!(
                "tenant = \"acme\"\nbroker_host = \"localhost\"\nport = \"{}\"\n{}",
                port(Service::MindConnectEu1),
                cert("agent1")
            ),
        ),
        device(
            "private",
            "mindconnect-private",
            format!(
                "tenant = \"acme\"\nbroker_host = \"localhost\"\nport = \"{}\"\n{}",
                port(Service::MindConnectPrivate),
                cert("agent2")
            ),
        ),
        device(
            "eu2",
            "mindconnect-eu2",
            format!(
                "id_scope = \"0ne00SANDBOX\"\ndps_host = \"localhost\"\ndps_port = \"{}\"\nhub_port = \"{}\"\n{}",
                port(Service::Dps),
                port(Service::IotHub),
                cert("agent3")
            ),
        ),
        device(
            "rest-group",
            "azure-dps-rest",
            format!(
                "id_scope = \"0ne00SANDBOX\"\nregistration_id = \"rest-dev1\"\ngroup_key = \"{}\"\ndps_host = \"localhost\"\ndps_port = \"{}\"\nhub_port = \"{}\"\n",
                crate::support::sandbox::GROUP_KEY,
                port(Service::DpsRest),
                port(Service::IotHub)
            ),
        ),
        device(
            "rest-x509",
            "azure-dps-rest",
            format!(
                "id_scope = \"0ne00SANDBOX\"\ndps_host = \"localhost\"\ndps_port = \"{}\"\nhub_port = \"{}\"\n{}",
                port(Service::DpsRest),
                port(Service::IotHub),
                cert("rest-leaf")
            ),
        ),
        device(
            "aws",
            "aws-iot",
            format!(
                "endpoint = \"localhost\"\nport = \"{}\"\n{}",
                port(Service::AwsIot),
                cert("thing1")
            ),
        ),
        device(
            "aws-expired",
            "aws-iot",
            format!(
                "endpoint = \"localhost\"\nport = \"{}\"\n{}",
                port(Service::AwsIot),
                cert("expired")
            ),
        ),
        device(
            "incomplete",
            "mindconnect-eu1",
            "tenant = \"acme\"\nbrokr_host = \"localhost\"\n".into(),
        ),
        device(
            "bad-port",
            "mindconnect-eu1",
            "tenant = \"acme\"\nbroker_host = \"localhost\"\ncertificate = \"a.pem\"\nkey = \"a.key\"\nport = \"eighty\"\n".into(),
        ),
        device(
            "two-ways",
            "azure-iothub",
            format!(
                "hub_host = \"localhost\"\ndevice_id = \"direct01\"\nsymmetric_key = \"{DEVICE_KEY}\"\n{}",
                cert("edge-leaf")
            ),
        )
        .replace("deadline_secs = 20", ""),
        device(
            "nowhere",
            "azure-iothub",
            format!(
                "hub_host = \"localhost\"\nport = \"{closed_port}\"\ndevice_id = \"direct01\"\nsymmetric_key = \"{DEVICE_KEY}\"\n"
            ),
        )
        .replace("deadline_secs = 20", "deadline_secs = 2"),
        format!(
            "[[device_templates]]\nmatch = \"line7-*\"\nflow = \"azure-dps\"\n[device_templates.params]\nid_scope = \"0ne00SANDBOX\"\nregistration_id = \"{{device}}\"\ngroup_key = \"{}\"\ndps_host = \"localhost\"\ndps_port = \"{}\"\nhub_port = \"{}\"\nca_file = \"{ca}\"\n",
            crate::support::sandbox::GROUP_KEY,
            port(Service::Dps),
            port(Service::IotHub)
        ),
    ]
    .concat();
    let path = d.join("gatehost.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Connect with the kept connection and fresh credentials from the flow's `refresh`, and
/// publish `payload` on `topic`.
pub fn publish_over(d: &Path, config_path: &Path, device: &str, topic: &str, payload: &str) {
    let config = Config::load(config_path, true).unwrap();
    let kept: Onboarded = serde_json::from_str(
        &std::fs::read_to_string(onboard::state_path(&config, device)).unwrap(),
    )
    .unwrap();
    let device_config = onboard::device(&config, device).unwrap();
    let registry = Registry::load(PluginEnv::for_device(&config, &device_config, true));
    let credentials = registry
        .flow(&device_config.flow)
        .unwrap()
        .refresh(&kept.connection)
        .unwrap();
    let ctx = CapContext::ephemeral(
        "provider-flows-test",
        gatehost::caps::Permissions {
            endpoints: vec!["localhost:*".into(), "127.0.0.1:*".into()],
            file_roots: vec![d.display().to_string()],
            kv_namespace: None,
        },
    );
    let options = connection_options(&ctx, &kept.connection, &credentials).unwrap();
    let mut session = MqttSession::connect(&ctx, &options).unwrap();
    session.publish(&Message::new(topic, payload, 1)).unwrap();
}

/// The twins' manifests from `plugins/dist` (Rust) and `plugins/js`, `plugins/python` (azure-dps),
/// pointing at the built components, file roots `d`.
pub fn install_twins(d: &Path) {
    for (manifest, component) in [
        ("azure-dps-wasm.toml", "azure_dps"),
        ("mindconnect-private-wasm.toml", "mindconnect_private"),
    ] {
        let text = std::fs::read_to_string(repo_root().join("plugins/dist").join(manifest))
            .unwrap()
            .replace(
                &format!("../target/wasm32-wasip2/release/{component}.wasm"),
                &wasm(component).display().to_string(),
            )
            .replace(
                r#"file_roots = ["certs", "state"]"#,
                &format!("file_roots = [{:?}]", d.display().to_string()),
            );
        assert!(text.contains(&d.display().to_string()));
        std::fs::write(d.join("plugins").join(manifest), text).unwrap();
    }
    // azure-dps in JavaScript and Python, from plugins/js and plugins/python.
    for lang in crate::support::languages::Lang::BOTH {
        let source = crate::support::languages::manifest(lang, "azure-dps", "azure-dps");
        let component = source.with_extension("wasm");
        let name = source.file_name().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&source)
            .unwrap()
            .replace(
                &format!(
                    "entry = \"{}\"",
                    component.file_name().unwrap().to_str().unwrap()
                ),
                &format!("entry = {:?}", component.display().to_string()),
            )
            .replace(
                r#"file_roots = ["certs", "state"]"#,
                &format!("file_roots = [{:?}]", d.display().to_string()),
            );
        assert!(text.contains(&component.display().to_string()), "{name}");
        std::fs::write(d.join("plugins").join(name), text).unwrap();
    }
}
