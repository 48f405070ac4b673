use super::*;
use std::time::Duration;

fn dir_with_certs() -> Dir {
    let d = Dir::new();
    d.write("certs/chat.crt", "x");
    d.write("certs/chat.key", "x");
    d
}

/// A tiny temp dir helper so the config tests need no extra crate.
mod tempdir {
    use std::path::{Path, PathBuf};
    pub struct Dir(pub PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("wasmgate-cfg-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn write(&self, rel: &str, text: &str) {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        pub fn path(&self, rel: &str) -> PathBuf {
            self.0.join(rel)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    #[allow(dead_code)]
    pub fn exists(p: &Path) -> bool {
        p.exists()
    }
}

const SEED: &str = r#"
[[listener]]
name = "tls"
bind = "127.0.0.1:8443"
tls = true

[[site]]
name = "chat"
listeners = ["tls"]
hosts = ["chat.example.org"]
tls = { cert = "certs/chat.crt", key = "certs/chat.key" }
preserve_host = true
timeout = "3600s"

[[site.route]]
path = "/"
backend = "http://127.0.0.1:3000/"
reverse = true
"#;

#[test]
fn the_seed_vhost_loads() {
    let d = dir_with_certs();
    let c = Config::parse(SEED, &d.path("wasmgate.toml")).unwrap();
    assert_eq!(c.listeners[0].bind.port(), 8443);
    let site = &c.sites[0];
    assert_eq!(site.hosts, vec!["chat.example.org"]);
    assert_eq!(site.tls.as_ref().unwrap().cert, d.path("certs/chat.crt"));
    let route = &site.routes[0];
    assert!(route.preserve_host && route.reverse);
    assert_eq!(route.timeouts.response, Duration::from_secs(3600));
    assert_eq!(route.timeouts.idle, Duration::from_secs(3600));
    assert_eq!(route.backend.authority, "127.0.0.1:3000");
    assert_eq!(route.backend.path, "/");
}

#[test]
fn every_error_is_reported_with_its_place() {
    let d = Dir::new();
    let text = r#"
[[listener]]
name = "web"
bind = "nonsense"

[[site]]
name = "a"
listeners = ["web", "nope"]
hosts = ["a.example", "bad host"]
timeout = "10"

[[site.route]]
path = "/"
backend = "ftp://x/"
"#;
    let errs = Config::parse(text, &d.path("w.toml")).unwrap_err().0;
    let all = ConfigErrors(errs.clone()).to_string();
    assert!(
        all.contains("w.toml:4:8: listener[0].bind: `nonsense` is not an IP:port"),
        "{all}"
    );
    assert!(
        all.contains("site[0].listeners: no listener is named `nope`"),
        "{all}"
    );
    assert!(all.contains("site[0].hosts[1]"), "{all}");
    assert!(all.contains("site[0].timeout: `10` has no unit"), "{all}");
    assert!(
        all.contains("w.toml:14:11: site[0].route[0].backend: `ftp://x/` must start with http://"),
        "{all}"
    );
    assert!(errs.len() >= 5, "{all}");
}

/// The access line's format follows `log_format` unless set; a format nobody reads is refused with
/// its place.
#[test]
fn access_log_format_defaults_to_log_format_and_names_a_bad_value() {
    let d = Dir::new();
    let base = "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n";
    let load = |top: &str| Config::parse(&format!("{top}\n{base}"), &d.path("w.toml"));
    assert_eq!(load("").unwrap().access_log_format, AccessLogFormat::Text);
    let json = load("log_format = \"json\"").unwrap();
    assert_eq!(json.access_log_format, AccessLogFormat::Json);
    let mixed = load("log_format = \"json\"\naccess_log_format = \"combined\"").unwrap();
    assert_eq!(
        (mixed.log_format, mixed.access_log_format),
        (LogFormat::Json, AccessLogFormat::Combined)
    );
    assert_eq!(
        load("access_log_format = \"common\"")
            .unwrap()
            .access_log_format,
        AccessLogFormat::Common
    );
    let err = load("access_log_format = \"w3c\"").unwrap_err().to_string();
    assert!(
        err.contains("w.toml:1:21: access_log_format: `w3c` is not one of"),
        "{err}"
    );
}

/// A request head is at most 64KiB (past it hyper's own URI limit would answer 414 for the 431
/// the log would claim); outside 8KiB–64KiB the value is refused with its place.
#[test]
fn max_header_bytes_is_between_8k_and_64k() {
    let d = Dir::new();
    let load = |v: &str| {
        let text = format!(
            "limits = {{ max_header_bytes = \"{v}\" }}\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n"
        );
        Config::parse(&text, &d.path("w.toml"))
    };
    if let Err(e) = load("64KiB") {
        panic!("{e}");
    }
    assert!(load("8KiB").is_ok());
    for bad in ["65KiB", "4KiB"] {
        let err = load(bad).unwrap_err().to_string();
        assert!(
            err.contains("limits.max_header_bytes: must be between 8KiB and 64KiB"),
            "{bad}: {err}"
        );
    }
}

use tempdir::Dir;

#[test]
fn unknown_fields_and_syntax_errors_name_line_and_column() {
    let d = Dir::new();
    let e = Config::parse(
        "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nport = 3\n",
        &d.path("x.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with(&format!("{}:4:1", d.path("x.toml").display())),
        "{e}"
    );
    assert!(e.contains("unknown field `port`"), "{e}");
}

#[test]
fn conflicting_hosts_and_missing_files_are_refused() {
    let d = Dir::new();
    let text = r#"
[[listener]]
name = "tls"
bind = "127.0.0.1:0"
tls = true
[[site]]
name = "a"
listeners = ["tls"]
hosts = ["x.example"]
tls = { cert = "missing.crt", key = "missing.key" }
[[site.route]]
path = "/"
backend = "http://127.0.0.1:1"
[[site]]
name = "b"
listeners = ["tls"]
hosts = ["X.example."]
tls = { cert = "missing.crt", key = "missing.key" }
[[site.route]]
path = "/"
backend = "http://127.0.0.1:1"
"#;
    let e = Config::parse(text, &d.path("x.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("site[0].tls.cert: file"), "{e}");
    assert!(e.contains("does not exist"), "{e}");
    assert!(
        e.contains("host `x.example` on listener `tls` is already claimed by site `a`"),
        "{e}"
    );
}

#[test]
fn route_timeouts_inherit_and_override() {
    let d = Dir::new();
    let text = r#"
timeouts = { connect = "1s" }
[[listener]]
name = "web"
bind = "127.0.0.1:0"
[[site]]
name = "a"
listeners = ["web"]
default = true
timeout = "30s"
[[site.route]]
path = "/ws"
backend = "ws://127.0.0.1:3000/socket"
timeouts = { idle = "2s" }
"#;
    let c = Config::parse(text, &d.path("x.toml")).unwrap();
    let t = c.sites[0].routes[0].timeouts;
    assert_eq!(t.connect, Duration::from_secs(1));
    assert_eq!(t.response, Duration::from_secs(30));
    assert_eq!(t.idle, Duration::from_secs(2));
    assert!(c.sites[0].routes[0].backend.websocket_scheme);
}

#[test]
fn route_paths_in_another_spelling_and_sni_options_are_checked() {
    let d = Dir::new();
    let text = r#"
[[listener]]
name = "web"
bind = "127.0.0.1:0"
tls_reject_unknown_sni = true

[[site]]
name = "a"
listeners = ["web"]
hosts = ["a.example"]

[[site.route]]
path = "/caf%c3%a9//x"
backend = "http://127.0.0.1:1/"

[[site.route]]
path = "/%C0%AE"
backend = "http://127.0.0.1:1/"

[[site.route]]
path = "/api"
backend = "http://127.0.0.1:1/"

[[site.route]]
path = "/Api"
backend = "http://127.0.0.1:1/"
case_insensitive = true
"#;
    let all = ConfigErrors(Config::parse(text, &d.path("w.toml")).unwrap_err().0).to_string();
    assert!(
        all.contains(
            "w.toml:5:26: listener[0].tls_reject_unknown_sni: only a listener with tls = true"
        ),
        "{all}"
    );
    assert!(
        all.contains(
            "site[0].route[0].path: requests are matched in normal form: write `/caf%C3%A9/x`"
        ),
        "{all}"
    );
    assert!(
        all.contains("site[0].route[1].path: the request path is not UTF-8"),
        "{all}"
    );
    assert!(
        all.contains("site[0].route[3].path: `/Api` and `/api` differ only in case"),
        "{all}"
    );
    // Written in normal form, and with case_insensitive on one route of each spelling, it loads.
    let ok = text
        .replace("tls_reject_unknown_sni = true\n", "")
        .replace("/caf%c3%a9//x", "/caf%C3%A9/x")
        .replace("/%C0%AE", "/ok")
        .replace("path = \"/Api\"", "path = \"/Docs\"");
    let cfg = Config::parse(&ok, &d.path("w.toml")).unwrap();
    let routes = &cfg.sites[0].routes;
    assert!(routes[3].case_insensitive && !routes[2].case_insensitive);
    assert!(!cfg.listeners[0].reject_unknown_sni);
}
