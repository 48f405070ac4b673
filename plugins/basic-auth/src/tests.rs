use base64::Engine;
use serde_json::json;
use wasmgate_plugin_sdk::testing::{self, TestHost, TestPlugin, TestRequest};

use super::*;

/// A cheap bcrypt hash (cost 4) with a fixed salt, in the `$2y$` form `htpasswd -B` writes.
fn bcrypt_line(user: &str, password: &str) -> String {
    let parts = bcrypt::hash_with_salt(password, 4, [7u8; 16]).expect("hash");
    format!("{user}:{}", parts.format_for_version(bcrypt::Version::TwoY))
}

fn host() -> TestHost {
    let file = format!(
        "# users\n{}\nbob:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n\n",
        bcrypt_line("ann", "s3cret pw")
    );
    testing::with_file("users.htpasswd", file)
}

fn basic(user: &str, password: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b64}")
}

fn status(p: &mut TestPlugin<BasicAuth>, auth: Option<&str>) -> Option<u16> {
    let mut req = TestRequest::get("/");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    p.on_request(&req.build()).status()
}

#[test]
fn allow_and_deny() {
    let mut p = host().instantiate_toml::<BasicAuth>(
        r#"htpasswd = "users.htpasswd"
realm = "chat""#,
    );
    assert_eq!(p.hooks(), Hooks::REQUEST);
    assert_eq!(status(&mut p, Some(&basic("ann", "s3cret pw"))), None);
    assert_eq!(status(&mut p, Some(&basic("bob", "password"))), None);

    let d = p.on_request(&TestRequest::get("/").build());
    assert_eq!(d.status(), Some(401));
    assert_eq!(
        d.response_header("www-authenticate"),
        Some("Basic realm=\"chat\", charset=\"UTF-8\"")
    );
    assert_eq!(status(&mut p, Some(&basic("ann", "wrong"))), Some(401));
    assert_eq!(status(&mut p, Some(&basic("carl", "s3cret pw"))), Some(401));
    assert_eq!(status(&mut p, Some("Bearer abc")), Some(401));
    assert_eq!(status(&mut p, Some("Basic !!!")), Some(401));
    // The scheme is case-insensitive; the password may contain ':'.
    let mut p2 = testing::with_file("u", bcrypt_line("c", "a:b"))
        .instantiate::<BasicAuth>(json!({"htpasswd": "u"}));
    assert_eq!(
        status(&mut p2, Some(&basic("c", "a:b").replace("Basic", "bAsIc"))),
        None
    );
}

#[test]
fn successful_checks_are_cached() {
    let mut p = host().instantiate::<BasicAuth>(json!({"htpasswd": "users.htpasswd"}));
    assert!(p.plugin().verified.is_empty());
    assert_eq!(status(&mut p, Some(&basic("ann", "s3cret pw"))), None);
    assert_eq!(p.plugin().verified.len(), 1);
    assert_eq!(status(&mut p, Some(&basic("ann", "s3cret pw"))), None);
    assert_eq!(p.plugin().verified.len(), 1);
    // Failures are not cached (they would let a client fill the cache).
    assert_eq!(status(&mut p, Some(&basic("ann", "nope"))), Some(401));
    assert_eq!(p.plugin().verified.len(), 1);
}

#[test]
fn forward_user_and_default_realm() {
    let mut p = host().instantiate::<BasicAuth>(
        json!({"htpasswd": "users.htpasswd", "forward_user": "X-Remote-User"}),
    );
    let req = TestRequest::get("/")
        .header("authorization", &basic("bob", "password"))
        .build();
    assert_eq!(
        p.on_request(&req),
        Decision::allow().set_header("x-remote-user", "bob")
    );
    let d = p.on_request(&TestRequest::get("/").site("wiki").build());
    assert_eq!(
        d.response_header("www-authenticate"),
        Some("Basic realm=\"wiki\", charset=\"UTF-8\"")
    );
}

#[test]
fn config_errors() {
    let err = |h: TestHost, c| h.try_instantiate::<BasicAuth>(c).err().expect("must fail");
    assert_eq!(
        err(TestHost::new(), json!({"htpasswd": "none"})),
        "cannot read config file `none`: no such file"
    );
    assert_eq!(
        err(testing::with_file("u", "a:$apr1$abc$def"), json!({"htpasswd": "u"})),
        "u line 1: user `a`: Apache MD5 (`$apr1$`) is not supported; use bcrypt (`htpasswd -B`) or `{SHA}` (`htpasswd -s`)"
    );
    assert_eq!(
        err(
            testing::with_file("u", "# nobody\n"),
            json!({"htpasswd": "u"})
        ),
        "`u` has no users"
    );
    assert_eq!(
        err(
            host(),
            json!({"htpasswd": "users.htpasswd", "forward_user": "a b"})
        ),
        "`forward_user`: `a b` is not a valid header name"
    );
    assert_eq!(
        err(host(), json!({})),
        "invalid config: missing field `htpasswd`"
    );
    assert!(
        err(host(), json!({"htpasswd": "users.htpasswd", "relm": "x"}))
            .contains("unknown field `relm`")
    );
}
