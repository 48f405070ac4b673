//! Configuration: file → raw serde types (`raw`) → validated [`Config`] (`validate`), with every error
//! reported at once as `file:line:col: field: reason`.

/// The names of the built-in plugins a config may use (`builtin = "…"`), the one list of them: the
/// plugins crate's build script builds and embeds exactly these.
pub mod builtins;
pub mod egress;
mod error;
mod files;
pub mod hosts;
pub mod lifetimes;
pub mod limits;
mod model;
mod raw;
pub mod tenant_fs;
pub mod units;
mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use files::{read_resolved, FileRefused, FileScope};
pub use model::*;
pub use validate::check_name;

use std::path::Path;

impl Config {
    /// Read and validate a config file. Relative paths inside it resolve against its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::single(path, "", format!("cannot read the file: {e}")))?;
        Config::parse(&text, path)
    }

    /// Validate config text as if it had been read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
            let loc = error::Locator::new(path, text);
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                position: e.span().map(|s| loc.position(s.start)),
                field: String::new(),
                message: e.message().trim().to_string(),
            }])
        })?;
        let mut v = validate::Validator::new(path, text);
        let config = v.config(raw);
        let errors = v.finish();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

impl Config {
    /// Read and validate tenant `name`'s `tenant.toml` in `dir` against the operator's config.
    pub fn load_tenant(&self, dir: &Path, name: &str) -> Result<Vec<SiteConfig>, ConfigErrors> {
        self.load_tenant_with(dir, name, &egress::OwnAddrs::default())
    }

    /// [`Config::load_tenant`] for a running server, whose bound sockets (`own`) no tenant backend
    /// may name.
    pub fn load_tenant_with(
        &self,
        dir: &Path,
        name: &str,
        own: &egress::OwnAddrs,
    ) -> Result<Vec<SiteConfig>, ConfigErrors> {
        let path = dir.join("tenant.toml");
        let caps = self
            .tenants
            .as_ref()
            .map(|t| t.limits_for(name))
            .unwrap_or_default();
        // The tenant's own file is opened like every other file of its: beneath its directory.
        let bytes = tenant_fs::read(dir, Path::new("tenant.toml"), caps.files.max_file_bytes)
            .map_err(|e| ConfigErrors::single(&path, "", e))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| ConfigErrors::single(&path, "", "the file is not UTF-8"))?;
        let raw: raw::RawTenant = toml::from_str(&text).map_err(|e| {
            let loc = error::Locator::new(&path, &text);
            ConfigErrors(vec![ConfigError {
                file: path.clone(),
                position: e.span().map(|s| loc.position(s.start)),
                field: String::new(),
                message: e.message().trim().to_string(),
            }])
        })?;
        let mut v = validate::Validator::for_tenant(&path, &text, name, &caps);
        let sites = v.tenant_sites(raw, self, &caps, own);
        let errors = v.finish();
        if errors.is_empty() {
            Ok(sites)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

#[cfg(test)]
mod tests;
