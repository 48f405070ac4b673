//! Reading a tenant's files, which are written by someone we do not trust. Every read of a file under
//! a tenant directory goes through this module:
//!
//! - a file a tenant's config names (certificate, key, wasm, `read-config-file` data, `tenant.toml`
//!   itself) is opened first and checked after: `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` on
//!   the tenant root, so no symlink and no `..` is followed and nothing can be swapped between a check
//!   and the use (a per-component `openat(O_NOFOLLOW)` walk where the kernel has no `openat2`);
//!   `O_NONBLOCK`, so a FIFO cannot hang the open; then `fstat` for a regular file within the size cap;
//! - walking a tenant directory (for its digest and the file watcher) goes directory fd by directory
//!   fd, never follows a symlink (a link is hashed by its target text, never read through), reads
//!   only regular files, hashes them as a stream, and stops at the caps on bytes per file and per
//!   tenant, file count, depth and directories (each directory costs an inotify watch).
//!
//! The tenant root itself may be a symlink (a Kubernetes volume mount): the operator made it, so it
//! is followed once, when the root is opened.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

/// What one tenant directory may hold. Set by the operator (`[tenant_limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileCaps {
    /// Largest single file.
    pub max_file_bytes: u64,
    /// All regular files together.
    pub max_total_bytes: u64,
    /// Entries of any kind (files, links, directories).
    pub max_files: usize,
    /// Directory nesting below the tenant root.
    pub max_depth: usize,
    /// Directories, the root included: each one is an inotify watch.
    pub max_dirs: usize,
}

impl Default for FileCaps {
    fn default() -> Self {
        FileCaps {
            max_file_bytes: 32 << 20,
            max_total_bytes: 128 << 20,
            max_files: 1000,
            max_depth: 8,
            max_dirs: 64,
        }
    }
}

/// A tenant root that files are opened beneath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confined {
    pub root: PathBuf,
    pub max_file_bytes: u64,
}

impl Confined {
    /// Open `path` (relative to the root, or the root joined with a relative path) and read it whole.
    pub fn read(&self, path: &Path) -> Result<Vec<u8>, String> {
        read(&self.root, path, self.max_file_bytes)
    }

    /// Check that `path` opens as a regular file within the cap (validation; the use reads again).
    pub fn check(&self, path: &Path) -> Result<(), String> {
        open(&self.root, path, self.max_file_bytes).map(drop)
    }
}

/// `path` relative to `root`: a relative path as is, an absolute one only when it is under `root`.
fn relative<'a>(root: &Path, path: &'a Path) -> Result<&'a Path, String> {
    let rel = if path.is_absolute() {
        path.strip_prefix(root)
            .map_err(|_| format!("`{}` is outside the tenant's directory", path.display()))?
    } else {
        path
    };
    if rel.as_os_str().is_empty()
        || rel
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::RootDir))
    {
        return Err(format!(
            "`{}` is outside the tenant's directory",
            path.display()
        ));
    }
    Ok(rel)
}

fn cstr(s: &OsStr) -> Result<CString, String> {
    CString::new(s.as_bytes()).map_err(|_| "a path may not contain NUL".to_string())
}

fn os_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Open the (trusted) tenant root as a directory fd; a symlink here is followed.
fn open_root(root: &Path) -> Result<OwnedFd, String> {
    let c = cstr(root.as_os_str())?;
    // SAFETY: `c` is a valid NUL-terminated path; the returned fd is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!(
            "cannot open the tenant directory `{}`: {}",
            root.display(),
            os_err()
        ));
    }
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const FILE_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;

/// `openat2(dir, rel, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`; `None` when the kernel lacks it.
fn openat2(dir: RawFd, rel: &CStr) -> Option<std::io::Result<OwnedFd>> {
    // SAFETY: `open_how` is plain data; zeroed is a valid value that we then fill in.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = FILE_FLAGS as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid dir fd, NUL-terminated path, and a pointer to `how` with its exact size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let e = os_err();
        // ENOSYS: an old kernel; EPERM: a seccomp filter that does not know the call.
        return match e.raw_os_error() {
            Some(libc::ENOSYS) | Some(libc::EPERM) => None,
            _ => Some(Err(e)),
        };
    }
    // SAFETY: a new fd from the kernel, owned by nobody else.
    Some(Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
}

/// The same confinement without `openat2`: one `openat(O_NOFOLLOW)` per component, each relative to
/// the directory fd opened before it.
fn openat_walk(dir: RawFd, rel: &Path) -> std::io::Result<OwnedFd> {
    let parts: Vec<&OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let mut current: Option<OwnedFd> = None;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let c = CString::new(part.as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let flags = if last {
            FILE_FLAGS | libc::O_NOFOLLOW
        } else {
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC
        };
        let at = current.as_ref().map_or(dir, |f| f.as_raw_fd());
        // SAFETY: `at` is a live directory fd and `c` a NUL-terminated single component.
        let fd = unsafe { libc::openat(at, c.as_ptr(), flags) };
        if fd < 0 {
            return Err(os_err());
        }
        // SAFETY: a new fd from the kernel, owned by nobody else.
        current = Some(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    current.ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))
}

fn open_beneath(dir: RawFd, rel: &Path, use_openat2: bool) -> std::io::Result<OwnedFd> {
    if use_openat2 {
        let c = CString::new(rel.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        if let Some(r) = openat2(dir, &c) {
            return r;
        }
    }
    openat_walk(dir, rel)
}

/// Open `path` beneath `root` as a regular file of at most `max` bytes.
pub fn open(root: &Path, path: &Path, max: u64) -> Result<File, String> {
    open_with(root, path, max, true)
}

fn open_with(root: &Path, path: &Path, max: u64, use_openat2: bool) -> Result<File, String> {
    let rel = relative(root, path)?;
    let shown = rel.display();
    let dir = open_root(root)?;
    let fd = open_beneath(dir.as_raw_fd(), rel, use_openat2).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => format!(
            "`{shown}` is or passes through a symbolic link: a tenant's files must be regular files inside its directory"
        ),
        Some(libc::ENOTDIR) => format!(
            "`{shown}`: a component on the way is not a directory (symbolic links are not followed)"
        ),
        Some(libc::EXDEV) => format!("`{shown}` is outside the tenant's directory"),
        Some(libc::ENOENT) => format!("file `{shown}` does not exist"),
        _ => format!("cannot open `{shown}`: {e}"),
    })?;
    let file = File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat `{shown}`: {e}"))?;
    if !meta.file_type().is_file() {
        return Err(format!(
            "`{shown}` is not a regular file (a FIFO, device, socket or directory is never read)"
        ));
    }
    if meta.len() > max {
        return Err(format!(
            "`{shown}` is {}; a tenant's file may be at most {}",
            bytes(meta.len()),
            bytes(max)
        ));
    }
    Ok(file)
}

/// Open and read `path` beneath `root` (see [`open`]); a file that grows past `max` while being read
/// is refused too.
pub fn read(root: &Path, path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let file = open(root, path, max)?;
    let mut out = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    if out.len() as u64 > max {
        return Err(format!(
            "`{}` grew past {} while being read",
            path.display(),
            bytes(max)
        ));
    }
    Ok(out)
}

fn bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size {
            return format!("{:.1} {unit}", n as f64 / size as f64);
        }
    }
    format!("{n} bytes")
}

/// A tenant directory as walked: its digest and its directories (for the watcher).
#[derive(Debug, Clone, Default)]
pub struct Walk {
    /// SHA-256 over every entry's relative path, kind and content (files) or target (links).
    pub digest: String,
    /// Every directory, the root first, as paths under the root given to [`walk`].
    pub dirs: Vec<PathBuf>,
    pub files: usize,
    pub bytes: u64,
}

/// Walk and hash `root` within `caps`; the first cap exceeded (or file that cannot be read) refuses
/// the whole directory with a message naming the file.
pub fn walk(root: &Path, caps: &FileCaps) -> Result<Walk, String> {
    let dir = open_root(root)?;
    let mut w = Walker {
        caps,
        hash: Sha256::new(),
        out: Walk::default(),
        buf: vec![0u8; 64 << 10],
    };
    w.dir(dir, root, Path::new(""), 0)?;
    w.out.digest = w
        .hash
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(w.out)
}

struct Walker<'a> {
    caps: &'a FileCaps,
    hash: Sha256,
    out: Walk,
    buf: Vec<u8>,
}

impl Walker<'_> {
    fn dir(&mut self, fd: OwnedFd, abs: &Path, rel: &Path, depth: usize) -> Result<(), String> {
        self.out.dirs.push(abs.to_path_buf());
        if self.out.dirs.len() > self.caps.max_dirs {
            return Err(format!(
                "more than {} directories (each one is a file watch): `{}` is one too many",
                self.caps.max_dirs,
                rel.display()
            ));
        }
        for (name, kind) in
            list(&fd).map_err(|e| format!("cannot list `{}`: {e}", rel.display()))?
        {
            let child = rel.join(OsStr::from_bytes(name.as_bytes()));
            self.out.files += 1;
            if self.out.files > self.caps.max_files {
                return Err(format!(
                    "more than {} files: `{}` is one too many",
                    self.caps.max_files,
                    child.display()
                ));
            }
            self.hash.update(child.as_os_str().as_bytes());
            self.hash.update([0]);
            match kind {
                Kind::Dir => {
                    if depth + 1 > self.caps.max_depth {
                        return Err(format!(
                            "`{}` is nested deeper than {} directories",
                            child.display(),
                            self.caps.max_depth
                        ));
                    }
                    self.hash.update(b"dir");
                    // SAFETY: valid dir fd and NUL-terminated single component.
                    let sub = unsafe {
                        libc::openat(
                            fd.as_raw_fd(),
                            name.as_ptr(),
                            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                        )
                    };
                    if sub < 0 {
                        return Err(format!("cannot open `{}`: {}", child.display(), os_err()));
                    }
                    // SAFETY: a new fd from the kernel, owned by nobody else.
                    let sub = unsafe { OwnedFd::from_raw_fd(sub) };
                    let sub_abs = abs.join(OsStr::from_bytes(name.as_bytes()));
                    self.dir(sub, &sub_abs, &child, depth + 1)?;
                }
                Kind::File => self.file(&fd, &name, &child)?,
                Kind::Link => {
                    // Hashed by where it points, so a changed link is a change; never read through.
                    let mut target = [0u8; 4096];
                    // SAFETY: valid dir fd, NUL-terminated name, buffer of the given length.
                    let n = unsafe {
                        libc::readlinkat(
                            fd.as_raw_fd(),
                            name.as_ptr(),
                            target.as_mut_ptr().cast(),
                            target.len(),
                        )
                    };
                    self.hash.update(b"link");
                    self.hash.update(&target[..n.max(0) as usize]);
                }
                Kind::Other => self.hash.update(b"special"),
            }
            self.hash.update([0]);
        }
        Ok(())
    }

    fn file(&mut self, dir: &OwnedFd, name: &CStr, child: &Path) -> Result<(), String> {
        // SAFETY: valid dir fd and NUL-terminated single component.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                FILE_FLAGS | libc::O_NOFOLLOW,
            )
        };
        if fd < 0 {
            // Gone since it was listed (or swapped for a link): the next walk sees the new state.
            self.hash.update(b"vanished");
            return Ok(());
        }
        // SAFETY: a new fd from the kernel, owned by nobody else.
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot stat `{}`: {e}", child.display()))?;
        if !meta.file_type().is_file() {
            self.hash.update(b"special");
            return Ok(());
        }
        let max = self.caps.max_file_bytes;
        if meta.len() > max {
            return Err(format!(
                "`{}` is {}; a tenant's file may be at most {}",
                child.display(),
                bytes(meta.len()),
                bytes(max)
            ));
        }
        self.hash.update(b"file");
        let mut seen = 0u64;
        loop {
            let n = file
                .read(&mut self.buf)
                .map_err(|e| format!("cannot read `{}`: {e}", child.display()))?;
            if n == 0 {
                break;
            }
            seen += n as u64;
            self.out.bytes += n as u64;
            if seen > max {
                return Err(format!(
                    "`{}` grew past {} while being read",
                    child.display(),
                    bytes(max)
                ));
            }
            if self.out.bytes > self.caps.max_total_bytes {
                return Err(format!(
                    "the tenant's files add up to more than {} (at `{}`)",
                    bytes(self.caps.max_total_bytes),
                    child.display()
                ));
            }
            self.hash.update(&self.buf[..n]);
        }
        Ok(())
    }
}

enum Kind {
    Dir,
    File,
    Link,
    Other,
}

/// The entries of an open directory (no `.`/`..`), sorted by name, with their kind as the directory
/// says (an `lstat` when it does not).
fn list(dir: &OwnedFd) -> std::io::Result<Vec<(CString, Kind)>> {
    // SAFETY: fcntl on a live fd; the duplicate is handed to fdopendir, which owns it from then on.
    let dup = unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(os_err());
    }
    // SAFETY: `dup` is a directory fd we own; on success `closedir` below closes it.
    let d = unsafe { libc::fdopendir(dup) };
    if d.is_null() {
        let e = os_err();
        // SAFETY: fdopendir failed, so `dup` is still ours to close.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    let mut out = Vec::new();
    loop {
        // SAFETY: `d` is an open DIR*; the entry is valid until the next readdir on it.
        let ent = unsafe { libc::readdir(d) };
        if ent.is_null() {
            break;
        }
        // SAFETY: `ent` is non-null and d_name is NUL-terminated.
        let (name, ty) = unsafe {
            (
                CStr::from_ptr((*ent).d_name.as_ptr()).to_owned(),
                (*ent).d_type,
            )
        };
        if name.as_bytes() == b"." || name.as_bytes() == b".." {
            continue;
        }
        let kind = match ty {
            libc::DT_DIR => Kind::Dir,
            libc::DT_REG => Kind::File,
            libc::DT_LNK => Kind::Link,
            libc::DT_UNKNOWN => lstat_kind(dir, &name),
            _ => Kind::Other,
        };
        out.push((name, kind));
    }
    // SAFETY: `d` came from fdopendir and is closed once.
    unsafe { libc::closedir(d) };
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn lstat_kind(dir: &OwnedFd, name: &CStr) -> Kind {
    // SAFETY: `st` is plain data filled by the kernel; valid dir fd and NUL-terminated name.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Kind::Other;
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFREG => Kind::File,
        libc::S_IFLNK => Kind::Link,
        _ => Kind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("t/sub")).unwrap();
        std::fs::write(d.path().join("t/a.txt"), b"hello").unwrap();
        std::fs::write(d.path().join("t/sub/b.txt"), b"world").unwrap();
        std::fs::write(d.path().join("secret"), b"operator's").unwrap();
        d
    }

    #[test]
    fn opens_regular_files_beneath_the_root_only() {
        let d = tree();
        let root = d.path().join("t");
        symlink(d.path().join("secret"), root.join("out")).unwrap();
        symlink("a.txt", root.join("in")).unwrap();
        symlink("/proc/self/pagemap", root.join("pagemap")).unwrap();
        unsafe {
            let c = CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
            assert_eq!(libc::mkfifo(c.as_ptr(), 0o600), 0);
        }
        for use_openat2 in [true, false] {
            let open = |p: &str| open_with(&root, Path::new(p), 1 << 20, use_openat2);
            assert!(open("a.txt").is_ok());
            assert!(open("sub/b.txt").is_ok());
            for (p, why) in [
                ("out", "symbolic link"),
                ("in", "symbolic link"),
                ("pagemap", "symbolic link"),
                ("../secret", "outside"),
                ("/etc/hostname", "outside"),
                ("fifo", "not a regular file"),
                ("sub", "not a regular file"),
                ("nope", "does not exist"),
            ] {
                let e = open(p).unwrap_err();
                assert!(e.contains(why), "{p} ({use_openat2}): {e}");
            }
        }
        // An absolute path under the root is fine; the root itself may be a symlink.
        assert_eq!(read(&root, &root.join("a.txt"), 10).unwrap(), b"hello");
        symlink(&root, d.path().join("mounted")).unwrap();
        assert_eq!(
            read(&d.path().join("mounted"), Path::new("a.txt"), 10).unwrap(),
            b"hello"
        );
        assert!(read(&root, Path::new("a.txt"), 4)
            .unwrap_err()
            .contains("at most 4 bytes"));
    }

    #[test]
    fn a_huge_sparse_file_is_refused_unread() {
        let d = tree();
        let f = File::create(d.path().join("t/huge")).unwrap();
        f.set_len(10 << 30).unwrap();
        let started = std::time::Instant::now();
        let e = walk(&d.path().join("t"), &FileCaps::default()).unwrap_err();
        assert!(e.contains("`huge` is 10.0 GiB"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let e = read(&d.path().join("t"), Path::new("huge"), 1 << 20).unwrap_err();
        assert!(e.contains("at most 1.0 MiB"), "{e}");
    }

    #[test]
    fn the_walk_hashes_links_without_following_them_and_keeps_to_its_caps() {
        let d = tree();
        let root = d.path().join("t");
        let before = walk(&root, &FileCaps::default()).unwrap();
        assert_eq!((before.files, before.dirs.len(), before.bytes), (3, 2, 10));
        symlink("/proc/self/pagemap", root.join("pagemap")).unwrap();
        symlink(d.path(), root.join("up")).unwrap();
        let linked = walk(&root, &FileCaps::default()).unwrap();
        assert_ne!(before.digest, linked.digest);
        assert_eq!(
            (linked.dirs.len(), linked.bytes),
            (2, 10),
            "no link was followed"
        );
        std::fs::write(d.path().join("secret"), b"changed").unwrap();
        assert_eq!(
            walk(&root, &FileCaps::default()).unwrap().digest,
            linked.digest
        );
        std::fs::write(root.join("sub/b.txt"), b"World").unwrap();
        assert_ne!(
            walk(&root, &FileCaps::default()).unwrap().digest,
            linked.digest
        );

        let caps = |f: fn(&mut FileCaps)| {
            let mut c = FileCaps::default();
            f(&mut c);
            walk(&root, &c).unwrap_err()
        };
        assert!(caps(|c| c.max_files = 2).contains("more than 2 files"));
        assert!(caps(|c| c.max_dirs = 1).contains("more than 1 directories"));
        assert!(caps(|c| c.max_depth = 0).contains("nested deeper than 0"));
        assert!(caps(|c| c.max_total_bytes = 7).contains("add up to more than 7 bytes"));
        assert!(caps(|c| c.max_file_bytes = 4).contains("at most 4 bytes"));
    }
}
