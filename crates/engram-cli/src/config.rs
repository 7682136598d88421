//! Loading the config: built-in defaults, then the TOML file, then
//! `ENGRAM_*` environment variables (`__` separates levels, e.g.
//! `ENGRAM_SERVER__DATA_DIR=/var/lib/engram`), validated once.

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use std::path::Path;

use engram_core::config::EngramConfig;

pub fn load(path: &Path) -> anyhow::Result<EngramConfig> {
    if !path.exists() {
        anyhow::bail!("config file {} does not exist", path.display());
    }
    let config: EngramConfig = Figment::from(Serialized::defaults(EngramConfig::default()))
        .merge(Toml::file(path))
        // Only `SECTION__KEY` variables are config: ENGRAM_LOG and the
        // scripts' own ENGRAM_* variables are not.
        .merge(
            Env::prefixed("ENGRAM_")
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        )
        .extract()
        .with_context(|| format!("invalid config {}", path.display()))?;
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid config {}: {e}", path.display()))?;
    Ok(config)
}
