//! `gatehost plugin ...`: list plugins; create skeletons; pack, sign and verify bundles; install,
//! remove and sync them with the trust store and `gatehost.lock`.

use super::{print_json, ConfigArg};
use crate::plugins::bundle::archive::ArchiveLimits;
use crate::plugins::bundle::fetch::{fetch, FetchOptions};
use crate::plugins::bundle::format::{pack, sha256_hex, Bundle};
use crate::plugins::bundle::lock::Lock;
use crate::plugins::bundle::minisign::SecretKey;
use crate::plugins::bundle::skeleton;
use crate::plugins::bundle::trust::TrustStore;
use crate::plugins::bundle::write_atomic;
use crate::plugins::discovery::EngineKind;
use crate::plugins::manifest::PluginKind;
use crate::plugins::registry::PluginEnv;
use crate::plugins::registry::Registry;
use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// List the plugins found in the plugin directories and installed from bundles.
    #[command(after_help = "Example:\n  gatehost plugin list --json")]
    List(ListArgs),
    /// Create a working plugin skeleton (Rhai script, or a WASM component in Rust, JavaScript or Python).
    #[command(
        after_help = "Examples:\n  gatehost plugin new line-rule --kind rule --engine rhai --out scripts/rules/line-rule\n  gatehost plugin new line-rule-js --kind rule --engine wasm --lang js\n  gatehost plugin new vendor-flow --kind flow --engine wasm --lang python"
    )]
    New(NewArgs),
    /// Pack a plugin (its manifest, or the directory holding it) into a bundle.
    #[command(
        after_help = "Example:\n  gatehost plugin pack scripts/rules/line-rule --key acme.key"
    )]
    Pack(PackArgs),
    /// Create a publisher key pair in minisign's formats (PREFIX.key and PREFIX.pub).
    #[command(after_help = "Example:\n  gatehost plugin keygen --out acme")]
    Keygen(KeygenArgs),
    /// Sign a bundle (in place, or into --out).
    #[command(after_help = "Example:\n  gatehost plugin sign line-rule-0.1.0.ghp --key acme.key")]
    Sign(SignArgs),
    /// Check a bundle: layout, every hash, and the signature against the trust store.
    #[command(
        after_help = "Example:\n  gatehost plugin verify line-rule-0.1.0.ghp --trust acme.pub"
    )]
    Verify(VerifyArgs),
    /// Install or upgrade a plugin from a bundle file or URL; pins it in gatehost.lock.
    #[command(
        after_help = "Example:\n  gatehost plugin install https://plugins.example.com/line-rule-0.2.0.ghp --sha256 <hex>"
    )]
    Install(InstallArgs),
    /// Remove a plugin installed from a bundle (and its gatehost.lock entry).
    #[command(after_help = "Example:\n  gatehost plugin remove line-rule")]
    Remove(RemoveArgs),
    /// Make the installed plugins exactly what gatehost.lock pins, fetching
    /// <BASE>/<name>-<version>.ghp for each.
    #[command(
        after_help = "Example:\n  gatehost plugin sync --from https://plugins.example.com/site-a"
    )]
    Sync(SyncArgs),
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Print one JSON object per plugin.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    Rule,
    Flow,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EngineArg {
    Rhai,
    Wasm,
}

/// The language of a WASM plugin.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LangArg {
    Rust,
    Js,
    Python,
}

#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// Plugin name (a-z, 0-9, '-', '_').
    pub name: String,
    #[arg(long, value_enum)]
    pub kind: KindArg,
    #[arg(long, value_enum)]
    pub engine: EngineArg,
    /// The language of a WASM plugin: Rust (cargo), JavaScript (componentize-js) or Python
    /// (componentize-py) [default: rust].
    #[arg(long, value_enum)]
    pub lang: Option<LangArg>,
    /// Directory to create [default: ./NAME].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The gatehost SDK crate for WASM plugins [default: plugins/sdk of the gatehost source
    /// this binary was built from].
    #[arg(long, value_name = "DIR")]
    pub sdk: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct PackArgs {
    /// The plugin manifest, or the directory holding it.
    pub path: PathBuf,
    /// Bundle file to write [default: <name>-<version>.ghp].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Sign with this secret key right away.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Writes PREFIX.key (secret, mode 0600) and PREFIX.pub.
    #[arg(long, value_name = "PREFIX")]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct SignArgs {
    pub bundle: PathBuf,
    /// Secret key (minisign format, unencrypted).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "signature",
        conflicts_with = "signature"
    )]
    pub key: Option<PathBuf>,
    /// Attach this signature of the bundle's bundle.toml instead, as `minisign -Sm bundle.toml`
    /// made it (any options; the untrusted comment is kept and trusted for nothing).
    #[arg(long, value_name = "FILE")]
    pub signature: Option<PathBuf>,
    /// Write the signed bundle here instead of replacing BUNDLE.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    pub bundle: PathBuf,
    /// A publisher .pub file or a directory of them [default: the config's trust store].
    #[arg(long, value_name = "PATH")]
    pub trust: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// CA certificates (PEM) for https:// [default: [bundles] ca_file, else the system roots].
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Give up on a download after this many seconds.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub timeout_secs: u64,
}

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// A bundle file, file:// URL or https:// URL.
    pub source: String,
    /// Refuse the bundle unless its SHA-256 is this (hex).
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Accept an upgrade that asks for permissions the installed version did not have.
    #[arg(long)]
    pub approve_permissions: bool,
    #[command(flatten)]
    pub fetch: FetchArgs,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    pub name: String,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// A directory, file:// or https:// base holding <name>-<version>.ghp files.
    #[arg(long, value_name = "BASE")]
    pub from: String,
    #[command(flatten)]
    pub fetch: FetchArgs,
    #[command(flatten)]
    pub config: ConfigArg,
}

pub fn run(cmd: PluginCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PluginCommand::List(args) => list(args),
        PluginCommand::New(args) => new(args),
        PluginCommand::Pack(args) => pack_cmd(args),
        PluginCommand::Keygen(args) => keygen(args),
        PluginCommand::Sign(args) => sign(args),
        PluginCommand::Verify(args) => verify(args),
        PluginCommand::Install(args) => install(args),
        PluginCommand::Remove(args) => remove(args),
        PluginCommand::Sync(args) => sync(args),
    }
}

#[derive(serde::Serialize)]
struct Row<'a> {
    name: &'a str,
    version: &'a str,
    kind: String,
    engine: String,
    api: &'a str,
    publisher: Option<&'a str>,
    /// "local" for plugins in the plugin directories, else how the installed bundle is trusted.
    trust: String,
    endpoints: &'a [String],
    file_roots: &'a [String],
    /// The kv namespace, when the manifest names one (else it is the plugin's name).
    kv_namespace: Option<&'a str>,
    path: String,
    status: String,
}

fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let site = crate::plugins::bundle::store::Site::for_config(&config).ok();
    let registry = Registry::load(PluginEnv::of(&config, true));
    let rows: Vec<Row> = registry
        .plugins()
        .map(|p| {
            let m = &p.info.manifest;
            let trust = match &site {
                Some(site) if p.info.manifest_path.starts_with(&site.root) => site
                    .installed(&m.name)
                    .map(|i| i.trust.to_string())
                    .unwrap_or_else(|e| e.to_string()),
                _ => "local".into(),
            };
            Row {
                name: &m.name,
                version: &m.version,
                kind: m.kind.to_string(),
                engine: p.info.engine.to_string(),
                api: &m.api,
                publisher: m.publisher.as_deref(),
                trust,
                endpoints: &m.permissions.endpoints,
                file_roots: &m.permissions.file_roots,
                kv_namespace: m.permissions.kv_namespace.as_deref(),
                path: p.info.entry.display().to_string(),
                status: "loaded".into(),
            }
        })
        .collect();
    if args.json {
        for row in &rows {
            print_json(row);
        }
    } else {
        outln!(
            "{:<24} {:<9} {:<5} {:<6} {:<5} {:<12} {:<28} PERMISSIONS",
            "NAME",
            "VERSION",
            "KIND",
            "ENGINE",
            "API",
            "PUBLISHER",
            "TRUST"
        );
        for r in &rows {
            let mut perms: Vec<String> = r.endpoints.iter().map(|e| format!("net:{e}")).collect();
            perms.extend(r.file_roots.iter().map(|f| format!("files:{f}")));
            perms.extend(r.kv_namespace.map(|ns| format!("kv:{ns}")));
            let perms = if perms.is_empty() {
                "-".to_string()
            } else {
                perms.join(" ")
            };
            outln!(
                "{:<24} {:<9} {:<5} {:<6} {:<5} {:<12} {:<28} {perms}",
                r.name,
                r.version,
                r.kind,
                r.engine,
                r.api,
                r.publisher.unwrap_or("-"),
                r.trust
            );
        }
    }
    for e in registry.errors() {
        eprintln!("error: {e}");
    }
    Ok(if registry.errors().is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    let dir = args.out.unwrap_or_else(|| PathBuf::from(&args.name));
    let sdk = args
        .sdk
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk"));
    let (kind, engine) = (
        match args.kind {
            KindArg::Rule => PluginKind::Rule,
            KindArg::Flow => PluginKind::Flow,
        },
        match args.engine {
            EngineArg::Rhai => EngineKind::Rhai,
            EngineArg::Wasm => EngineKind::Wasm,
        },
    );
    let lang = match args.lang {
        None | Some(LangArg::Rust) => skeleton::Lang::Rust,
        Some(LangArg::Js) => skeleton::Lang::JavaScript,
        Some(LangArg::Python) => skeleton::Lang::Python,
    };
    let written = skeleton::create(&dir, &args.name, kind, engine, lang, &sdk)?;
    for path in &written {
        outln!("created {}", path.display());
    }
    let manifest = dir.join(format!("{}.toml", args.name));
    if engine == EngineKind::Wasm {
        let build = match lang {
            skeleton::Lang::Rust => "cargo build --release --target wasm32-wasip2",
            skeleton::Lang::JavaScript => "npm install && npm run build",
            skeleton::Lang::Python => {
                "./build.sh   (needs componentize-py: pip install componentize-py==0.25.1)"
            }
        };
        outln!("next: cd {} && {build}", dir.display());
    }
    match kind {
        PluginKind::Rule => outln!(
            "try:  gatehost rule test {} --topic plant1/press7/temperature --payload '{{\"value\":21.5}}'",
            manifest.display()
        ),
        PluginKind::Flow => outln!(
            "try:  add a device with flow = \"{}\" to gatehost.toml (plugin_dirs must include {}), then gatehost onboard <device>",
            args.name,
            dir.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn read_key(path: &Path) -> anyhow::Result<SecretKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read secret key {}", path.display()))?;
    SecretKey::parse(&text).with_context(|| format!("secret key {}", path.display()))
}

fn pack_cmd(args: PackArgs) -> anyhow::Result<ExitCode> {
    let mut bundle = pack(&args.path, &ArchiveLimits::default())?;
    if let Some(key) = &args.key {
        bundle.sign(&read_key(key)?)?;
    }
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(bundle.file_name()));
    let bytes = bundle.to_bytes();
    write_atomic(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    outln!(
        "packed {} {} ({} files, {}) into {}\nsha256 {}",
        bundle.description.name,
        bundle.description.version,
        bundle.payload.len(),
        if bundle.signature.is_some() {
            "signed"
        } else {
            "unsigned"
        },
        out.display(),
        sha256_hex(&bytes)
    );
    Ok(ExitCode::SUCCESS)
}

fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let prefix = args.out.display().to_string();
    let (key_path, pub_path) = (
        PathBuf::from(format!("{prefix}.key")),
        PathBuf::from(format!("{prefix}.pub")),
    );
    for p in [&key_path, &pub_path] {
        if p.exists() {
            bail!("{} already exists; keys are never overwritten", p.display());
        }
    }
    let key = SecretKey::generate();
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .with_context(|| format!("cannot create {}", key_path.display()))?;
        file.write_all(key.to_file().as_bytes())?;
    }
    std::fs::write(&pub_path, key.public().to_file())
        .with_context(|| format!("cannot write {}", pub_path.display()))?;
    outln!(
        "key {}: secret key {} (keep it secret), public key {}\ntrust it on a gateway: copy {} to <state_dir>/trust/<publisher>.pub",
        key.id,
        key_path.display(),
        pub_path.display(),
        pub_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn open_bundle(path: &Path) -> anyhow::Result<(Vec<u8>, Bundle)> {
    let bytes = fetch(&path.display().to_string(), &FetchOptions::default())?;
    let bundle = Bundle::open(&bytes, &ArchiveLimits::default())
        .with_context(|| format!("{}", path.display()))?;
    Ok((bytes, bundle))
}

fn sign(args: SignArgs) -> anyhow::Result<ExitCode> {
    let (_, mut bundle) = open_bundle(&args.bundle)?;
    let by = match (&args.key, &args.signature) {
        (Some(key), _) => {
            let key = read_key(key)?;
            bundle.sign(&key)?;
            format!("with key {}", key.id)
        }
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let signature = crate::plugins::bundle::minisign::Signature::parse(&text)
                .with_context(|| format!("{} is not a minisign signature", file.display()))?;
            let by = format!("with the signature of key {}", signature.key_id);
            bundle.attach(signature);
            by
        }
        (None, None) => unreachable!("clap requires --key or --signature"),
    };
    let out = args.out.unwrap_or(args.bundle);
    let bytes = bundle.to_bytes();
    write_atomic(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    outln!(
        "signed {} {} {by} into {}\nsha256 {}",
        bundle.description.name,
        bundle.description.version,
        out.display(),
        sha256_hex(&bytes)
    );
    Ok(ExitCode::SUCCESS)
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let (_, bundle) = open_bundle(&args.bundle)?;
    let trust = match &args.trust {
        Some(path) => TrustStore::from_path(path)?,
        None => crate::plugins::bundle::store::Site::for_config(&args.config.load()?)?.trust,
    };
    let verdict = trust
        .verify(&bundle)
        .with_context(|| format!("{}", args.bundle.display()))?;
    let d = &bundle.description;
    outln!(
        "ok: {} {} ({} {}, api {}), {}, {} files, sha256 {}",
        d.name,
        d.version,
        d.engine,
        d.kind,
        d.api,
        verdict,
        d.files.len(),
        bundle.sha256
    );
    Ok(ExitCode::SUCCESS)
}

fn fetch_options(args: &FetchArgs, config: &crate::config::Config) -> FetchOptions {
    FetchOptions {
        ca_file: args
            .ca
            .clone()
            .or_else(|| config.bundles.ca_file.as_ref().map(|f| config.resolve(f))),
        timeout: Duration::from_secs(args.timeout_secs),
        ..FetchOptions::default()
    }
}

fn install(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let site = crate::plugins::bundle::store::Site::for_config(&config)?;
    let bytes = fetch(&args.source, &fetch_options(&args.fetch, &config))?;
    if let Some(want) = &args.sha256 {
        let have = sha256_hex(&bytes);
        if !want.eq_ignore_ascii_case(have.trim()) {
            bail!(
                "{}: SHA-256 is {have}, not the expected {want}",
                args.source
            );
        }
    }
    let outcome = site
        .install(&bytes, &args.source, args.approve_permissions)
        .with_context(|| args.source.clone())?;
    let i = &outcome.installed;
    let d = &i.description;
    let what = match (&outcome.previous, outcome.unchanged) {
        (_, true) => "already installed:".to_string(),
        (Some(old), false) if *old == d.version => {
            "the installed copy was damaged; reinstalled".to_string()
        }
        (Some(old), false) => format!("upgraded from {old} to"),
        (None, false) => "installed".to_string(),
    };
    let mut perms: Vec<String> = d
        .permissions
        .endpoints
        .iter()
        .map(|e| format!("net:{e}"))
        .collect();
    perms.extend(
        d.permissions
            .file_roots
            .iter()
            .map(|f| format!("files:{f}")),
    );
    perms.extend(
        d.permissions
            .kv_namespace
            .as_ref()
            .map(|ns| format!("kv:{ns}")),
    );
    outln!(
        "{what} {} {} ({}), permissions: {}; pinned in {}",
        d.name,
        d.version,
        i.trust,
        if perms.is_empty() {
            "none".into()
        } else {
            perms.join(" ")
        },
        site.lock_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn remove(args: RemoveArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let site = crate::plugins::bundle::store::Site::for_config(&config)?;
    if !site.names()?.contains(&args.name) {
        let registry = Registry::load(PluginEnv::of(&config, false));
        if let Ok(p) = registry.get(&args.name) {
            bail!(
                "plugin '{}' is not installed from a bundle (it lives in {}); delete its files instead",
                args.name,
                p.info.manifest_path.display()
            );
        }
        bail!("plugin '{}' is not installed", args.name);
    }
    site.remove(&args.name)?;
    outln!(
        "removed {} (and its entry in {})",
        args.name,
        site.lock_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn sync(args: SyncArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let site = crate::plugins::bundle::store::Site::for_config(&config)?;
    let lock = Lock::read(&site.lock_path)?;
    let options = fetch_options(&args.fetch, &config);
    let installed = site.installed_entries()?;
    let base = args.from.trim_end_matches('/');
    let mut changed = 0;
    for want in &lock.plugins {
        if installed.iter().any(|i| i == want) && site.installed(&want.name).is_ok() {
            continue;
        }
        let source = format!("{base}/{}-{}.ghp", want.name, want.version);
        let bytes = fetch(&source, &options)?;
        let have = sha256_hex(&bytes);
        if have != want.sha256 {
            bail!(
                "{source}: SHA-256 is {have}, but {} pins {}",
                site.lock_path.display(),
                want.sha256
            );
        }
        // The lock is the approval: it was written when the permissions were approved.
        let outcome = site
            .install(&bytes, &source, true)
            .with_context(|| source.clone())?;
        let publisher = &outcome.installed.description.publisher;
        if *publisher != want.publisher {
            bail!(
                "{source}: the bundle's publisher is {publisher:?} but {} pins {:?}",
                site.lock_path.display(),
                want.publisher
            );
        }
        outln!(
            "installed {} {} ({})",
            want.name,
            want.version,
            outcome.installed.trust
        );
        changed += 1;
    }
    for have in &installed {
        if lock.get(&have.name).is_none() {
            site.remove(&have.name)?;
            outln!("removed {} {} (not in the lock)", have.name, have.version);
            changed += 1;
        }
    }
    outln!(
        "in sync with {}: {} plugins, {changed} changed",
        site.lock_path.display(),
        lock.plugins.len()
    );
    Ok(ExitCode::SUCCESS)
}
