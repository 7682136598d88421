//! `engram token`: mints a scoped token offline, with the signing key the
//! coordinators verify it with (docs/security.md, "Scoped tokens").

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engram_coordinator::token::{Claims, sign};

#[derive(clap::Args)]
pub struct TokenArgs {
    /// A collection the token may reach; repeat for several.
    #[arg(long = "collection", required = true)]
    collections: Vec<String>,
    /// Also write (add, delete and curate items, run jobs) in them; never
    /// administration.
    #[arg(long)]
    write: bool,
    /// How long the token is valid, e.g. `15m`, `24h`, `7d`.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// The servers' `[security] token_signing_key`.
    #[arg(
        long,
        env = "ENGRAM_SECURITY__TOKEN_SIGNING_KEY",
        hide_env_values = true
    )]
    signing_key: String,
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    if args.signing_key.len() < engram_core::config::MIN_API_KEY_BYTES {
        anyhow::bail!(
            "the signing key is shorter than {} bytes: no server would take it",
            engram_core::config::MIN_API_KEY_BYTES
        );
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let claims = Claims {
        collections: args.collections,
        write: args.write,
        expires: (now + args.ttl).as_secs(),
    };
    println!("{}", sign(&claims, args.signing_key.as_bytes()));
    Ok(())
}
