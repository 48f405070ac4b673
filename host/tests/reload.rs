//! Revocation is never silently lost: a token removed from its file stops working within a second,
//! whichever way the change arrives — the watcher with a relative or absolute `--config`, a `SIGHUP`,
//! a Kubernetes ConfigMap `..data` swap, a file the operator names by absolute path outside the config
//! directory. Each test warms the decision cache with the token first, so a reload that left a cached
//! "yes" behind would fail it. Also: the operator may name absolute files, a tenant may not.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::{Running, BIN};
use wasmgate_tests::backend::Backend;
use wasmgate_tests::client::send;

/// A proxy for `app.test` whose `/` needs a token from `tokens_file`.
fn config(backend: &Backend, tokens_file: &str, top: &str) -> String {
    wasmgate_tests::proxy::app_config(
        top,
        &format!(
            r#"
[[site.route]]
path = "/"
backend = "{b}/"

[[site.route.plugin]]
builtin = "token-auth"
config = {{ tokens_file = "{tokens_file}" }}
"#,
            b = backend.url()
        ),
    )
}

async fn status_with(addr: SocketAddr, token: &str) -> u16 {
    let req = Request::get("/")
        .header("host", "app.test")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(addr, req).await.status.as_u16()
}

/// Both tokens work, `alice` twice (the second answer may come from the decision cache).
async fn both_work(addr: SocketAddr) {
    for token in ["alice", "alice", "bob"] {
        assert_eq!(status_with(addr, token).await, 200, "{token} before");
    }
}

/// Poll (every 20 ms, for 1 s at most) until `token` gets `want`; how long that took.
async fn within_a_second(addr: SocketAddr, token: &str, want: &[u16]) -> Duration {
    let start = Instant::now();
    loop {
        let status = status_with(addr, token).await;
        if want.contains(&status) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "`{token}` still gets {status} after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const REFUSED: &[u16] = &[401, 403];

/// Revoke `alice` by rewriting `tokens` (in place, as `echo bob > tokens.txt` does), and expect the
/// watcher to act on it.
async fn revoke_and_expect_refusal(run: &mut Running, tokens: &Path) {
    let addr = run.addrs[0].1;
    both_work(addr).await;
    std::fs::write(tokens, "bob\n").unwrap();
    let took = within_a_second(addr, "alice", REFUSED).await;
    eprintln!("revoked after {took:?}");
    assert_eq!(
        status_with(addr, "bob").await,
        200,
        "bob is still in the file"
    );
    run.wait_for("configuration reloaded").await;
}

#[tokio::test]
async fn a_token_revoked_under_a_relative_config_path_stops_working() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    std::fs::write(dir.path().join("conf/tokens.txt"), "alice\nbob\n").unwrap();
    std::fs::write(
        dir.path().join("conf/wasmgate.toml"),
        config(&backend, "tokens.txt", ""),
    )
    .unwrap();
    // `conf/wasmgate.toml` from `dir`: the watched directory is `conf`, events name `…/conf/tokens.txt`.
    let mut run = Running::start_in(dir.path(), Path::new("conf/wasmgate.toml")).await;
    run.wait_for("watching configuration").await;
    revoke_and_expect_refusal(&mut run, &dir.path().join("conf/tokens.txt")).await;
    drop(run);

    // `wasmgate.toml` in the working directory itself: its directory is "", watched as `.`.
    let conf = dir.path().join("conf");
    std::fs::write(conf.join("tokens.txt"), "alice\nbob\n").unwrap();
    let mut run = Running::start_in(&conf, Path::new("wasmgate.toml")).await;
    run.wait_for("watching configuration").await;
    revoke_and_expect_refusal(&mut run, &conf.join("tokens.txt")).await;
}

#[tokio::test]
async fn a_token_revoked_under_an_absolute_config_path_stops_working() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens.txt"), "alice\nbob\n").unwrap();
    let path = dir.path().join("wasmgate.toml");
    std::fs::write(&path, config(&backend, "tokens.txt", "")).unwrap();
    let mut run = Running::start_in(Path::new("/"), &path).await;
    run.wait_for("watching configuration").await;
    revoke_and_expect_refusal(&mut run, &dir.path().join("tokens.txt")).await;

    // An editor's save (write a temporary file, rename it over) revokes too.
    let addr = run.addrs[0].1;
    std::fs::write(dir.path().join(".tokens.txt.swp"), "carol\n").unwrap();
    std::fs::rename(
        dir.path().join(".tokens.txt.swp"),
        dir.path().join("tokens.txt"),
    )
    .unwrap();
    within_a_second(addr, "bob", REFUSED).await;
    assert_eq!(status_with(addr, "carol").await, 200);
}

#[tokio::test]
async fn a_token_revoked_then_sighup_stops_working() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens.txt"), "alice\nbob\n").unwrap();
    let path = dir.path().join("wasmgate.toml");
    // Watching off: only the signal can reload, so the test shows the signal did.
    std::fs::write(&path, config(&backend, "tokens.txt", "watch = false")).unwrap();
    let mut run = Running::start_in(dir.path(), Path::new("wasmgate.toml")).await;
    run.wait_for("file watching is off").await;
    let addr = run.addrs[0].1;
    both_work(addr).await;
    std::fs::write(dir.path().join("tokens.txt"), "bob\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        status_with(addr, "alice").await,
        200,
        "nothing watches the file"
    );
    run.signal("-HUP");
    within_a_second(addr, "alice", REFUSED).await;
    assert_eq!(status_with(addr, "bob").await, 200);
    let line = run.wait_for("configuration reloaded").await;
    assert!(line.contains("SIGHUP"), "{line}");
}

#[tokio::test]
async fn a_token_revoked_behind_a_symlinked_directory_stops_working_and_so_does_repointing_it() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config(&backend, "tokens.txt", "");
    for (release, tokens) in [("1", "alice\nbob\n"), ("2", "carol\n")] {
        let r = dir.path().join("releases").join(release);
        std::fs::create_dir_all(&r).unwrap();
        std::fs::write(r.join("wasmgate.toml"), &toml).unwrap();
        std::fs::write(r.join("tokens.txt"), tokens).unwrap();
    }
    std::os::unix::fs::symlink("releases/1", dir.path().join("current")).unwrap();
    let mut run = Running::start_in(dir.path(), Path::new("current/wasmgate.toml")).await;
    run.wait_for("watching configuration").await;
    // Edited where it really is.
    revoke_and_expect_refusal(&mut run, &dir.path().join("releases/1/tokens.txt")).await;

    // `ln -sfn releases/2 current`: a new link renamed over the old one.
    let addr = run.addrs[0].1;
    std::os::unix::fs::symlink("releases/2", dir.path().join("current.tmp")).unwrap();
    std::fs::rename(dir.path().join("current.tmp"), dir.path().join("current")).unwrap();
    within_a_second(addr, "bob", REFUSED).await;
    assert_eq!(status_with(addr, "carol").await, 200);
}

/// A ConfigMap volume as the kubelet writes it: `..<timestamp>/` holds the files, `..data` points at
/// it, and each file is a symlink through `..data`. An update is a new timestamped directory, a new
/// `..data` renamed over the old one, and the old directory deleted.
struct ConfigMap<'a> {
    dir: &'a Path,
    version: u32,
}

impl ConfigMap<'_> {
    fn publish(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let old = format!(
            "..2026_12_01_00_00_{:02}.{}",
            self.version - 1,
            self.version - 1
        );
        let new = format!("..2026_12_01_00_00_{:02}.{}", self.version, self.version);
        std::fs::create_dir(self.dir.join(&new)).unwrap();
        for (name, text) in files {
            std::fs::write(self.dir.join(&new).join(name), text).unwrap();
        }
        std::os::unix::fs::symlink(&new, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
        for (name, _) in files {
            let link = self.dir.join(name);
            if link.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), link).unwrap();
            }
        }
        if self.version > 1 {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}

#[tokio::test]
async fn configmap_swaps_revoke_one_after_another() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config(&backend, "tokens.txt", "");
    let mut cm = ConfigMap {
        dir: dir.path(),
        version: 0,
    };
    cm.publish(&[("wasmgate.toml", &toml), ("tokens.txt", "alice\nbob\n")]);
    let mut run = Running::start_in(dir.path(), Path::new("wasmgate.toml")).await;
    run.wait_for("watching configuration").await;
    let addr = run.addrs[0].1;
    both_work(addr).await;

    cm.publish(&[("wasmgate.toml", &toml), ("tokens.txt", "bob\n")]);
    within_a_second(addr, "alice", REFUSED).await;
    assert_eq!(status_with(addr, "bob").await, 200);
    run.wait_for("configuration reloaded").await;

    // A swap that changes nothing of ours (another key of the ConfigMap): no reload; the files now
    // really live in a third directory, and the next swap is still seen.
    cm.publish(&[
        ("wasmgate.toml", &toml),
        ("tokens.txt", "bob\n"),
        ("other", "x"),
    ]);
    // Past the debounce and a flush of the log's batch.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let reloaded: Vec<String> = run
        .drain()
        .into_iter()
        .filter(|l| l.contains("configuration reloaded"))
        .collect();
    assert!(reloaded.is_empty(), "a swap without a change: {reloaded:?}");
    cm.publish(&[("wasmgate.toml", &toml), ("tokens.txt", "alice\n")]);
    within_a_second(addr, "bob", REFUSED).await;
    assert_eq!(status_with(addr, "alice").await, 200, "granted again");
}

#[tokio::test]
async fn the_operator_names_a_file_anywhere_and_it_is_watched_there() {
    let backend = Backend::start().await;
    let conf = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let tokens = secrets.path().join("tokens.txt");
    std::fs::write(&tokens, "alice\nbob\n").unwrap();
    let path = conf.path().join("wasmgate.toml");
    std::fs::write(&path, config(&backend, &tokens.display().to_string(), "")).unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut run = Running::start_in(conf.path(), &path).await;
    run.wait_for("watching configuration").await;
    revoke_and_expect_refusal(&mut run, &tokens).await;
}

#[tokio::test]
async fn a_tenant_may_not_name_files_outside_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("tokens.txt");
    std::fs::write(&outside, "alice\n").unwrap();
    std::fs::write(
        dir.path().join("wasmgate.toml"),
        "tenants_dir = \"tenants\"\n\n[tenant_limits.default]\nbackends = [\"127.0.0.1:9\"]\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let tenant = |name: &str, tokens_file: &str| {
        let t = dir.path().join("tenants").join(name);
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(t.join("tokens.txt"), "alice\n").unwrap();
        std::fs::write(
            t.join("tenant.toml"),
            format!(
                "[[site]]\nname = \"s\"\nlisteners = [\"web\"]\nhosts = [\"{name}.test\"]\n\n\
                 [[site.plugin]]\nbuiltin = \"token-auth\"\nconfig = {{ tokens_file = \"{tokens_file}\" }}\n\n\
                 [[site.route]]\npath = \"/\"\nbackend = \"http://127.0.0.1:9/\"\n"
            ),
        )
        .unwrap();
    };
    tenant("own", "tokens.txt");
    tenant("absolute", &outside.display().to_string());
    tenant("dotdot", "../../tokens.txt");
    let out = tokio::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(dir.path().join("wasmgate.toml"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("own.test"),
        "the well-behaved tenant loads:\n{stdout}"
    );
    assert!(stderr.contains("2 tenant(s) refused"), "{stderr}");
    for (name, why) in [
        (
            "absolute",
            "outside the tenant's directory (an absolute path)",
        ),
        (
            "dotdot",
            "outside the tenant's directory (`..` is not allowed)",
        ),
    ] {
        let file = dir.path().join("tenants").join(name).join("tenant.toml");
        let place = format!("{}:6:1", file.display());
        let block = stderr
            .split("tenant `")
            .find(|b| b.starts_with(&format!("{name}`")))
            .unwrap_or_else(|| panic!("no error for {name}:\n{stderr}"));
        assert!(
            block.contains(&place) && block.contains(why),
            "{name}: want {place} and {why}:\n{block}"
        );
    }
}
