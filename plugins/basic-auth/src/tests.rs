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

/// Every hash kind htpasswd and crypt(3) write is checked (by the host; natively by the double).
#[test]
fn apr1_crypt_and_sha_hashes() {
    let file = "apr:$apr1$hZ3lWQ1N$l3hlBtp6A/IH5Yl8u6YYE/\n\
                des:aZGJuE6EXrjEE\n\
                md5:$1$5pZSV9va$azfrPr6af3Fc7dLblQXVa0\n\
                s512:$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1\n";
    let host = testing::with_file("u", file);
    let mut p = host.instantiate::<BasicAuth>(json!({"htpasswd": "u"}));
    assert!(
        host.config_problems().is_empty(),
        "{:?}",
        host.config_problems()
    );
    for (user, good) in [
        ("apr", "secret"),
        ("des", "test"),
        ("md5", "password"),
        ("s512", "secret"),
    ] {
        assert_eq!(status(&mut p, Some(&basic(user, good))), None, "{user}");
        assert_eq!(
            status(&mut p, Some(&basic(user, "wrong"))),
            Some(401),
            "{user}"
        );
    }
}

/// A throttled address gets 429 with `retry-after`, not another hash.
#[test]
fn throttled_checks_answer_429() {
    let mut p = host()
        .throttle_passwords(Some(42))
        .instantiate::<BasicAuth>(json!({"htpasswd": "users.htpasswd"}));
    let d = p.on_request(
        &TestRequest::get("/")
            .header("authorization", &basic("bob", "password"))
            .build(),
    );
    assert_eq!(d.status(), Some(429));
    assert_eq!(d.response_header("retry-after"), Some("42"));
}

/// A bad line is reported with its number and grants nothing; the other users still log in.
#[test]
fn a_bad_line_is_refused_alone() {
    let file = format!(
        "{}\ncarl:plaintext\nbob:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
        bcrypt_line("ann", "pw")
    );
    let host = testing::with_file("u", file);
    let mut p = host.instantiate::<BasicAuth>(json!({"htpasswd": "u", "forward_user": "x-user"}));
    let problems = host.config_problems();
    assert_eq!(problems.len(), 1);
    assert_eq!((problems[0].0.as_str(), problems[0].1), ("u", 2));
    assert!(
        problems[0]
            .2
            .starts_with("user `carl`: not a supported hash"),
        "{problems:?}"
    );
    assert_eq!(status(&mut p, Some(&basic("ann", "pw"))), None);
    assert_eq!(status(&mut p, Some(&basic("bob", "password"))), None);
    assert_eq!(status(&mut p, Some(&basic("carl", "plaintext"))), Some(401));
    assert_eq!(p.registration().identity_headers, ["x-user"]);
    // No usable line at all: everyone is refused, and that is reported.
    let host = testing::with_file("u", "# nobody\n");
    let mut p = host.instantiate::<BasicAuth>(json!({"htpasswd": "u"}));
    assert_eq!(host.config_problems()[0].1, 0);
    assert_eq!(status(&mut p, Some(&basic("ann", "pw"))), Some(401));
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
