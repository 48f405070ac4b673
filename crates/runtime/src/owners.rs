//! Who owns a host: the record of owners that outlives the process. The rules claims are judged by
//! (`overlap`, `covers`) are in `config::hosts`.
//!
//! Hosts are compared as normalised patterns (lower case, no trailing dot, IDN as punycode; see
//! `config::hosts::normalise`) on every listener at once: a host is one name on the Internet, whichever
//! port serves it. `*.example.org` matches exactly one more label, as routing does, so it overlaps
//! `a.example.org` but not `example.org`, `a.b.example.org` nor `*.b.example.org`.
//!
//! The record (`<state_dir>/owners-<digest of the tenants directory>.json`) maps each tenant host to
//! its tenant. It is the operator's file — tenants cannot write there — and is replaced atomically
//! (a temporary file, then `rename`), so a crash leaves the old record or the new one, never half.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub type Owners = BTreeMap<String, String>;

fn file(state_dir: &Path, tenants_dir: &Path) -> PathBuf {
    let dir = tenants_dir
        .canonicalize()
        .unwrap_or_else(|_| tenants_dir.to_path_buf());
    let digest = Sha256::digest(dir.as_os_str().as_encoded_bytes());
    let tag: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    state_dir.join(format!("owners-{tag}.json"))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    tenants_dir: String,
    /// Host pattern → tenant.
    hosts: Owners,
}

/// The recorded owners for `tenants_dir`; none when there is no record yet. An unreadable record
/// is reported and treated as none: contested hosts then go to no one, never to the first in order.
pub fn load(state_dir: Option<&Path>, tenants_dir: &Path) -> Owners {
    let Some(state_dir) = state_dir else {
        return Owners::new();
    };
    let path = file(state_dir, tenants_dir);
    match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice::<Record>(&bytes) {
            Ok(r) => r.hosts,
            Err(e) => {
                tracing::warn!(file = %path.display(), "ignoring the unreadable record of tenant host owners: {e}");
                Owners::new()
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Owners::new(),
        Err(e) => {
            tracing::warn!(file = %path.display(), "cannot read the record of tenant host owners: {e}");
            Owners::new()
        }
    }
}

/// Replace the record with `owners`, atomically; nothing is written when it is unchanged.
pub fn save(state_dir: &Path, tenants_dir: &Path, owners: &Owners) -> std::io::Result<()> {
    let path = file(state_dir, tenants_dir);
    let record = Record {
        tenants_dir: tenants_dir.display().to_string(),
        hosts: owners.clone(),
    };
    let text = serde_json::to_vec_pretty(&record).map_err(std::io::Error::other)?;
    if std::fs::read(&path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    std::fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_survives_and_is_replaced_whole() {
        let state = tempfile::tempdir().unwrap();
        let tenants = tempfile::tempdir().unwrap();
        assert!(load(Some(state.path()), tenants.path()).is_empty());
        let mut o = Owners::new();
        o.insert("a.test".into(), "acme".into());
        save(state.path(), tenants.path(), &o).unwrap();
        assert_eq!(load(Some(state.path()), tenants.path()), o);
        // Another tenants directory has a record of its own.
        let other = tempfile::tempdir().unwrap();
        assert!(load(Some(state.path()), other.path()).is_empty());
        let files: Vec<_> = std::fs::read_dir(state.path()).unwrap().collect();
        assert_eq!(files.len(), 1, "no temporary file is left behind");
        std::fs::write(file(state.path(), tenants.path()), b"{garbage").unwrap();
        assert!(load(Some(state.path()), tenants.path()).is_empty());
    }
}
