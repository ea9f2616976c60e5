//! `gatehost sign ...`: Azure SAS tokens and DPS derived device keys; each prints only the result.

use crate::pki::crypto;
use anyhow::bail;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum SignCommand {
    /// Mint an Azure SAS token and print it.
    #[command(after_help = "Examples:\n  \
        gatehost sign sas --resource 0ne00055505/registrations/press7 --key \"$KEY\" --policy registration --ttl 3600\n  \
        gatehost sign sas --resource myhub.azure-devices.net/devices/press7 --key \"$KEY\" --expiry 1893456000")]
    Sas(SasArgs),
    /// Derive a DPS group-enrollment device key and print it.
    #[command(
        after_help = "Example:\n  gatehost sign derive-key --group-key \"$GROUP_KEY\" --registration-id press7"
    )]
    DeriveKey(DeriveKeyArgs),
    /// Sign a JWT with a private key (RS256 for RSA keys, ES256 for P-256) and print it.
    #[command(after_help = "Example (MindConnect private cloud):\n  \
        gatehost sign jwt --key agent.key --chain agent_chain.pem --claims \"$(cat claims.json)\"")]
    Jwt(JwtArgs),
}

#[derive(Debug, clap::Args)]
pub struct JwtArgs {
    /// Private key (PEM).
    #[arg(long)]
    pub key: std::path::PathBuf,
    #[arg(long, env = "GATEHOST_KEY_PASSPHRASE", hide_env_values = true)]
    pub passphrase: Option<String>,
    /// Chain file whose certificates go into the `x5c` header (leaf first).
    #[arg(long)]
    pub chain: Option<std::path::PathBuf>,
    /// Claims as a JSON object.
    #[arg(long)]
    pub claims: String,
    /// Extra header fields as a JSON object.
    #[arg(long, default_value = "{}")]
    pub header: String,
    /// Refuse claims whose exp - iat exceeds this many seconds (MindConnect allows 3600).
    #[arg(long, default_value_t = crate::pki::jwt::MAX_JWT_LIFETIME_SECS)]
    pub max_lifetime: u64,
}

#[derive(Debug, clap::Args)]
pub struct SasArgs {
    /// `<idScope>/registrations/<registrationId>` (DPS) or `<hub-host>/devices/<deviceId>`.
    #[arg(long)]
    pub resource: String,
    /// The base64 symmetric key.
    #[arg(long, env = "GATEHOST_SAS_KEY", hide_env_values = true)]
    pub key: String,
    /// Policy name (`registration` for DPS; omit for a device token).
    #[arg(long)]
    pub policy: Option<String>,
    /// Expiry as unix seconds.
    #[arg(long, conflicts_with = "ttl", required_unless_present = "ttl")]
    pub expiry: Option<u64>,
    /// Expiry as seconds from now.
    #[arg(long)]
    pub ttl: Option<u64>,
    /// Print a token that has already expired (for testing a service's refusal).
    #[arg(long)]
    pub allow_expired: bool,
}

#[derive(Debug, clap::Args)]
pub struct DeriveKeyArgs {
    /// The base64 group enrollment key.
    #[arg(long, env = "GATEHOST_GROUP_KEY", hide_env_values = true)]
    pub group_key: String,
    #[arg(long)]
    pub registration_id: String,
}

pub fn run(cmd: SignCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SignCommand::Sas(a) => {
            let expiry = match (a.expiry, a.ttl) {
                (Some(e), None) => e,
                (None, Some(ttl)) => crypto::now_unix() + ttl,
                _ => bail!("give exactly one of --expiry and --ttl"),
            };
            if expiry <= crypto::now_unix() && !a.allow_expired {
                bail!(
                    "--expiry/--ttl: the token would have expired already (expiry {expiry} is not after now); give a later one, or --allow-expired"
                );
            }
            let token = crypto::sas_token(&a.resource, &a.key, a.policy.as_deref(), expiry)
                .map_err(|e| anyhow::anyhow!("--key/--resource: {e}"))?;
            outln!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        SignCommand::DeriveKey(a) => {
            let key = crypto::derive_device_key(&a.group_key, &a.registration_id)
                .map_err(|e| anyhow::anyhow!("--group-key/--registration-id: {e}"))?;
            outln!("{key}");
            Ok(ExitCode::SUCCESS)
        }
        SignCommand::Jwt(a) => {
            let key = super::certs::load_key(&a.key, a.passphrase.as_deref())?;
            let chain = match &a.chain {
                Some(path) => Some((
                    std::fs::read_to_string(path)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
                    path.display().to_string(),
                )),
                None => None,
            };
            let x5c = chain
                .as_ref()
                .map(|(text, name)| (text.as_str(), name.as_str()));
            let token =
                crate::pki::jwt::jwt_sign(&key, &a.header, &a.claims, x5c, Some(a.max_lifetime))
                    .map_err(|e| anyhow::anyhow!(e.message))?;
            outln!("{token}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
