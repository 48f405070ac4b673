//! Where the files a config names may be. The operator is trusted: a relative name resolves against
//! the config's directory and an absolute one (`/etc/apache2/.htpasswd`, a certificate managed by
//! certbot) is taken as written. A tenant is not: its names stay inside its own directory. Every
//! file a config names — certificates, CA bundles, wasm, and what plugins read with
//! `read-config-file` — goes through [`FileScope::resolve`], the one confinement check.

use std::path::{Component, Path, PathBuf};

/// Who named a file, and so which files it may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileScope {
    /// The operator's config in `dir`.
    Operator { dir: PathBuf },
    /// A tenant's `tenant.toml` in `dir`; `root` is `dir` canonicalised (symlinks resolved), the
    /// boundary a name may not cross.
    Tenant { dir: PathBuf, root: PathBuf },
}

/// Why a tenant's file name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileRefused {
    #[error("`{0}` is outside the tenant's directory (an absolute path)")]
    Absolute(String),
    #[error("`{0}` is outside the tenant's directory (`..` is not allowed)")]
    ParentDir(String),
    #[error("`{0}` is outside the tenant's directory (a symlink leads out)")]
    Symlink(String),
}

impl FileScope {
    pub fn operator(dir: &Path) -> FileScope {
        FileScope::Operator {
            dir: dir.to_path_buf(),
        }
    }

    pub fn tenant(dir: &Path) -> FileScope {
        FileScope::Tenant {
            dir: dir.to_path_buf(),
            root: dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()),
        }
    }

    /// The directory relative names resolve against.
    pub fn dir(&self) -> &Path {
        match self {
            FileScope::Operator { dir } | FileScope::Tenant { dir, .. } => dir,
        }
    }

    /// The path `name` stands for, or why this scope may not name it. A file that does not exist is
    /// not refused here (the caller says "does not exist" or "cannot read").
    pub fn resolve(&self, name: &str) -> Result<PathBuf, FileRefused> {
        let named = Path::new(name);
        let path = self.dir().join(named);
        let FileScope::Tenant { root, .. } = self else {
            return Ok(path);
        };
        if named.is_absolute() {
            return Err(FileRefused::Absolute(name.to_string()));
        }
        if named
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(FileRefused::ParentDir(name.to_string()));
        }
        match path.canonicalize() {
            Ok(real) if !real.starts_with(root) => Err(FileRefused::Symlink(name.to_string())),
            _ => Ok(path),
        }
    }

    /// Read the file `name` stands for: the path it was read from and its bytes, or a reason.
    pub fn read(&self, name: &str) -> Result<(PathBuf, Vec<u8>), String> {
        let path = self.resolve(name).map_err(|e| e.to_string())?;
        let bytes = read_resolved(&path)?;
        Ok((path, bytes))
    }
}

/// A path [`FileScope::resolve`] already judged, read; the error says which file.
pub fn read_resolved(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_may_name_any_file_and_a_tenant_only_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("acme");
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        std::fs::write(dir.join("certs/a.pem"), "x").unwrap();
        std::fs::write(tmp.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), dir.join("link")).unwrap();
        std::os::unix::fs::symlink(dir.join("certs/a.pem"), dir.join("inner")).unwrap();

        let op = FileScope::operator(&dir);
        assert_eq!(op.resolve("/etc/hosts"), Ok(PathBuf::from("/etc/hosts")));
        assert_eq!(op.resolve("../secret"), Ok(dir.join("../secret")));
        assert_eq!(op.read("link").unwrap().1, b"s");

        let t = FileScope::tenant(&dir);
        assert_eq!(t.resolve("certs/a.pem"), Ok(dir.join("certs/a.pem")));
        assert_eq!(t.resolve("inner"), Ok(dir.join("inner")), "a link inside");
        assert_eq!(
            t.resolve("missing.txt"),
            Ok(dir.join("missing.txt")),
            "missing is the caller's message"
        );
        for (name, refused) in [
            ("/etc/hosts", FileRefused::Absolute("/etc/hosts".into())),
            ("../secret", FileRefused::ParentDir("../secret".into())),
            (
                "certs/../../secret",
                FileRefused::ParentDir("certs/../../secret".into()),
            ),
            ("link", FileRefused::Symlink("link".into())),
        ] {
            assert_eq!(t.resolve(name), Err(refused), "{name}");
        }
        let why = t.read("/etc/hosts").unwrap_err();
        assert!(why.contains("outside the tenant's directory"), "{why}");
    }
}
