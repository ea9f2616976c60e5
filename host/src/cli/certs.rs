//! `gatehost certs ...`: keys, CSRs and certificates, mirroring the providers' OpenSSL steps.
//! Each command prints a one-line summary (or `--json`).

use super::print_json;
use crate::caps::certs::{KeyAlgorithm, PrivateKey};
use crate::model::PluginError;
use crate::pki::x509::{self, CertificateAuthority, Subject};
use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Generate a private key (PKCS#8 PEM, mode 0600; never overwrites).
    #[command(after_help = "Example:\n  gatehost certs key --alg rsa2048 --out certs/press7.key")]
    Key(KeyArgs),
    /// Create a certificate signing request.
    #[command(
        after_help = "Example:\n  gatehost certs csr --key certs/press7.key --subject \"/C=DE/ST=Munich/O=Acme/OU=IT/CN=press7\" --out certs/press7.csr"
    )]
    Csr(CsrArgs),
    /// Issue a certificate from a CSR with a CA certificate and key.
    #[command(
        after_help = "Example:\n  gatehost certs issue --csr certs/press7.csr --ca certs/ca.pem --ca-key certs/ca.key --days 365 --out certs/press7.pem"
    )]
    Issue(IssueArgs),
    /// Create a self-signed CA certificate and its key.
    #[command(
        after_help = "Example:\n  gatehost certs ca --subject \"/O=Acme/CN=Acme Devices CA\" --out certs/ca.pem --key-out certs/ca.key"
    )]
    Ca(CaArgs),
    /// Write a chain file: the leaf certificate followed by its CA certificate.
    #[command(
        after_help = "Example:\n  gatehost certs chain certs/press7.pem certs/ca.pem --out certs/press7_chain.pem"
    )]
    Chain(ChainArgs),
    /// Create a DPS proof-of-possession certificate (CN = the verification code).
    #[command(
        after_help = "Example:\n  gatehost certs verification --ca certs/ca.pem --ca-key certs/ca.key --nonce 1A2B3C4D5E --out verification.pem"
    )]
    Verification(VerificationArgs),
    /// Show the certificates in a PEM file.
    #[command(after_help = "Example:\n  gatehost certs show certs/press7_chain.pem --json")]
    Show(ShowArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Alg {
    Rsa2048,
    Rsa3072,
    Rsa4096,
    P256,
}

impl From<Alg> for KeyAlgorithm {
    fn from(a: Alg) -> Self {
        match a {
            Alg::Rsa2048 => KeyAlgorithm::Rsa2048,
            Alg::Rsa3072 => KeyAlgorithm::Rsa3072,
            Alg::Rsa4096 => KeyAlgorithm::Rsa4096,
            Alg::P256 => KeyAlgorithm::P256,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    #[arg(long, value_enum, default_value = "rsa2048")]
    pub alg: Alg,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// A private key file and its passphrase (for encrypted PKCS#8).
#[derive(Debug, clap::Args)]
pub struct KeyFile {
    /// Private key file (PEM: PKCS#8, encrypted PKCS#8, PKCS#1 or SEC1).
    #[arg(long)]
    pub key: PathBuf,
    /// Passphrase of an encrypted key.
    #[arg(long, env = "GATEHOST_KEY_PASSPHRASE", hide_env_values = true)]
    pub passphrase: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct CsrArgs {
    #[command(flatten)]
    pub key: KeyFile,
    /// Subject as in OpenSSL's -subj: /C=DE/ST=Munich/O=Acme/OU=IT/CN=dev01
    #[arg(long)]
    pub subject: String,
    /// DNS subject alternative name (repeatable).
    #[arg(long = "dns")]
    pub dns_names: Vec<String>,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// A CA certificate and its key, as `issue` and `verification` take them.
#[derive(Debug, clap::Args)]
pub struct CaFiles {
    /// CA certificate (PEM).
    #[arg(long)]
    pub ca: PathBuf,
    /// CA private key (PEM).
    #[arg(long)]
    pub ca_key: PathBuf,
    /// Passphrase of an encrypted CA key.
    #[arg(long, env = "GATEHOST_KEY_PASSPHRASE", hide_env_values = true)]
    pub passphrase: Option<String>,
}

impl CaFiles {
    /// Load the key, then check it matches the certificate and that the CA is usable now.
    fn load(&self) -> anyhow::Result<(PrivateKey, String)> {
        let key = load_key(&self.ca_key, self.passphrase.as_deref())?;
        Ok((key, read(&self.ca)?))
    }

    fn authority<'a>(
        &self,
        key: &'a PrivateKey,
        pem: &str,
    ) -> anyhow::Result<CertificateAuthority<'a>> {
        plain(CertificateAuthority::new(
            pem,
            key,
            &name(&self.ca),
            &name(&self.ca_key),
        ))
    }
}

#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    #[arg(long)]
    pub csr: PathBuf,
    #[command(flatten)]
    pub ca: CaFiles,
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct CaArgs {
    #[arg(long)]
    pub subject: String,
    #[arg(long)]
    pub out: PathBuf,
    /// Where to write the new CA key.
    #[arg(long)]
    pub key_out: PathBuf,
    #[arg(long, value_enum, default_value = "rsa2048")]
    pub alg: Alg,
    #[arg(long, default_value_t = 3650)]
    pub days: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ChainArgs {
    pub leaf: PathBuf,
    pub ca: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct VerificationArgs {
    #[command(flatten)]
    pub ca: CaFiles,
    /// The verification code DPS shows for the CA.
    #[arg(long)]
    pub nonce: String,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    pub file: PathBuf,
    #[arg(long)]
    pub json: bool,
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn name(path: &Path) -> String {
    path.display().to_string()
}

/// Errors of the certificate functions already name the file: pass them on as they are.
fn plain<T>(r: Result<T, PluginError>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::anyhow!(e.message))
}

pub fn load_key(path: &Path, passphrase: Option<&str>) -> anyhow::Result<PrivateKey> {
    plain(PrivateKey::from_pem(&read(path)?, passphrase, &name(path)))
}

fn write_new(path: &Path, contents: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

#[derive(serde::Serialize)]
struct Written<'a> {
    file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    algorithm: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    certificates: Vec<x509::CertificateInfo>,
}

fn report(json: bool, written: Written, line: String) {
    if json {
        print_json(&written);
    } else {
        outln!("{line}");
    }
}

fn describe(i: &x509::CertificateInfo) -> String {
    format!(
        "'{}' issued by '{}', serial {}, valid {} to {}, SHA-256 {}",
        i.subject_cn,
        i.issuer_cn,
        i.serial_hex,
        x509::format_time(i.not_before),
        x509::format_time(i.not_after),
        i.sha256_thumbprint
    )
}

fn infos(pem: &str, source: &str) -> anyhow::Result<Vec<x509::CertificateInfo>> {
    Ok(plain(x509::parse_pem_certs(pem, source))?
        .iter()
        .map(|d| x509::info(d))
        .collect())
}

pub fn run(cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CertsCommand::Key(a) => {
            let alg = KeyAlgorithm::from(a.alg);
            let key = plain(PrivateKey::generate(alg))?;
            plain(key.write_new_file(&a.out))?;
            let w = Written {
                file: name(&a.out),
                algorithm: Some(alg.as_str()),
                certificates: vec![],
            };
            report(
                a.json,
                w,
                format!("wrote {alg} private key to {} (mode 0600)", a.out.display()),
            );
        }
        CertsCommand::Csr(a) => {
            let key = load_key(&a.key.key, a.key.passphrase.as_deref())?;
            let subject = plain(Subject::parse(&a.subject)).context("--subject")?;
            let csr = plain(x509::create_csr(&key, &subject, &a.dns_names))?;
            write_new(&a.out, &csr)?;
            let w = Written {
                file: name(&a.out),
                algorithm: Some(key.algorithm().as_str()),
                certificates: vec![],
            };
            report(
                a.json,
                w,
                format!(
                    "wrote CSR for '{}' to {}",
                    subject.common_name,
                    a.out.display()
                ),
            );
        }
        CertsCommand::Issue(a) => {
            let (ca_key, ca_pem) = a.ca.load()?;
            let ca = a.ca.authority(&ca_key, &ca_pem)?;
            let cert = plain(ca.issue(&read(&a.csr)?, a.days, &name(&a.csr)))?;
            write_new(&a.out, &cert)?;
            let certificates = infos(&cert, &name(&a.out))?;
            let line = format!("wrote {}: {}", a.out.display(), describe(&certificates[0]));
            report(
                a.json,
                Written {
                    file: name(&a.out),
                    algorithm: None,
                    certificates,
                },
                line,
            );
        }
        CertsCommand::Ca(a) => {
            let subject = plain(Subject::parse(&a.subject)).context("--subject")?;
            if a.out.exists() {
                anyhow::bail!("{} already exists; choose another --out", a.out.display());
            }
            let key = plain(PrivateKey::generate(a.alg.into()))?;
            let cert = plain(x509::self_signed_ca(&key, &subject, a.days))?;
            plain(key.write_new_file(&a.key_out))?;
            write_new(&a.out, &cert)?;
            let certificates = infos(&cert, &name(&a.out))?;
            let line = format!(
                "wrote CA {} and key {}: {}",
                a.out.display(),
                a.key_out.display(),
                describe(&certificates[0])
            );
            report(
                a.json,
                Written {
                    file: name(&a.out),
                    algorithm: Some(key.algorithm().as_str()),
                    certificates,
                },
                line,
            );
        }
        CertsCommand::Chain(a) => {
            let chain = plain(x509::chain_pem(
                &read(&a.leaf)?,
                &read(&a.ca)?,
                &name(&a.leaf),
                &name(&a.ca),
            ))?;
            write_new(&a.out, &chain)?;
            let certificates = infos(&chain, &name(&a.out))?;
            let line = format!(
                "wrote chain {} ({} certificates, leaf '{}')",
                a.out.display(),
                certificates.len(),
                certificates[0].subject_cn
            );
            report(
                a.json,
                Written {
                    file: name(&a.out),
                    algorithm: None,
                    certificates,
                },
                line,
            );
        }
        CertsCommand::Verification(a) => {
            let (ca_key, ca_pem) = a.ca.load()?;
            let ca = a.ca.authority(&ca_key, &ca_pem)?;
            let cert = plain(ca.verification_certificate(&a.nonce))?;
            write_new(&a.out, &cert)?;
            let certificates = infos(&cert, &name(&a.out))?;
            let line = format!(
                "wrote verification certificate {}: {}",
                a.out.display(),
                describe(&certificates[0])
            );
            report(
                a.json,
                Written {
                    file: name(&a.out),
                    algorithm: None,
                    certificates,
                },
                line,
            );
        }
        CertsCommand::Show(a) => {
            let certificates = infos(&read(&a.file)?, &name(&a.file))?;
            if a.json {
                print_json(&Written {
                    file: name(&a.file),
                    algorithm: None,
                    certificates,
                });
            } else {
                for (i, c) in certificates.iter().enumerate() {
                    outln!("{}: {}", i + 1, describe(c));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
