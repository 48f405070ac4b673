use serde_json::json;
use wasmgate_plugin_sdk::testing::{self, TestPlugin, TestRequest};

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const NOW_MS: u64 = 1_700_000_000_000;

fn plugin(config: serde_json::Value) -> TestPlugin<TokenAuth> {
    testing::instantiate(config)
}

fn status(p: &mut TestPlugin<TokenAuth>, req: TestRequest) -> Option<u16> {
    p.on_request(&req.build()).status()
}

#[test]
fn bearer_header_allow_and_deny() {
    let mut p = plugin(json!({"tokens": ["s3cret", "other"], "realm": "chat"}));
    assert_eq!(p.hooks(), Hooks::REQUEST);
    let ok = p.on_request(
        &TestRequest::get("/")
            .header("Authorization", "Bearer s3cret")
            .build(),
    );
    assert_eq!(ok, Decision::allow());
    assert_eq!(
        status(
            &mut p,
            TestRequest::get("/").header("authorization", "bearer  other ")
        ),
        None
    );

    let missing = p.on_request(&TestRequest::get("/").build());
    assert_eq!(missing.status(), Some(401));
    assert_eq!(
        missing.response_header("www-authenticate"),
        Some("Bearer realm=\"chat\"")
    );
    // Another scheme is no bearer token at all.
    assert_eq!(
        status(
            &mut p,
            TestRequest::get("/").header("authorization", "Basic czNjcmV0")
        ),
        Some(401)
    );
    assert_eq!(
        status(
            &mut p,
            TestRequest::get("/").header("authorization", "Bearer nope")
        ),
        Some(403)
    );
    assert_eq!(
        status(
            &mut p,
            TestRequest::get("/").header("authorization", "Bearer s3cre")
        ),
        Some(403)
    );
}

#[test]
fn realm_defaults_to_site_and_is_quoted() {
    let mut p = plugin(json!({"tokens": ["t"]}));
    let d = p.on_request(&TestRequest::get("/").site("my \"site\"").build());
    assert_eq!(
        d.response_header("www-authenticate"),
        Some(r#"Bearer realm="my \"site\"""#)
    );
}

#[test]
fn tokens_file() {
    let host = testing::with_file("tokens.txt", "# team tokens\n\n  alpha  \nbeta\n");
    let mut p =
        host.instantiate::<TokenAuth>(json!({"tokens": ["s3cret"], "tokens_file": "tokens.txt"}));
    for t in ["alpha", "beta", "s3cret"] {
        let req = TestRequest::get("/").header("authorization", &format!("Bearer {t}"));
        assert_eq!(status(&mut p, req), None, "{t}");
    }
    let req = TestRequest::get("/").header("authorization", "Bearer # team tokens");
    assert_eq!(status(&mut p, req), Some(403));
    assert_eq!(host.files_read(), ["tokens.txt"]);
}

#[test]
fn custom_header_raw_value() {
    let mut p = plugin(json!({"tokens": ["k1"], "header": "X-Api-Key", "strip": true}));
    let d = p.on_request(&TestRequest::get("/").header("x-api-key", "k1").build());
    assert_eq!(d, Decision::allow().remove_header("x-api-key"));
    assert_eq!(
        status(
            &mut p,
            TestRequest::get("/").header("x-api-key", "Bearer k1")
        ),
        Some(403)
    );
    assert_eq!(
        status(
            &mut p,
            TestRequest::get("/").header("authorization", "Bearer k1")
        ),
        Some(401)
    );
}

#[test]
fn query_only_for_websockets_unless_always() {
    let mut p = plugin(json!({"tokens": ["a+b/c"], "query": "token"}));
    let ws = TestRequest::get("/socket?token=a%2Bb%2Fc").websocket(true);
    assert_eq!(status(&mut p, ws), None);
    assert_eq!(
        status(&mut p, TestRequest::get("/socket?token=a%2Bb%2Fc")),
        Some(401)
    );
    assert_eq!(
        status(&mut p, TestRequest::get("/socket?token=x").websocket(true)),
        Some(403)
    );

    let mut p =
        plugin(json!({"tokens": ["t1"], "query": "token", "query_always": true, "strip": true}));
    let d = p.on_request(&TestRequest::get("/api?a=1&token=t1&b=%20").build());
    assert_eq!(d, Decision::allow().rewrite_path("/api?a=1&b=%20"));
    let d = p.on_request(&TestRequest::get("/api?token=t1").build());
    assert_eq!(d, Decision::allow().rewrite_path("/api"));
}

#[test]
fn websocket_subprotocol() {
    let mut p = plugin(json!({"tokens": ["t1"], "subprotocol": true, "strip": true}));
    let req = TestRequest::get("/socket")
        .websocket(true)
        .header("sec-websocket-protocol", "chat, bearer.t1");
    let d = p.on_request(&req.build());
    assert_eq!(
        d,
        Decision::allow().set_header("sec-websocket-protocol", "chat")
    );

    let req = TestRequest::get("/socket")
        .websocket(true)
        .header("sec-websocket-protocol", "bearer.t1");
    let d = p.on_request(&req.build());
    assert_eq!(d, Decision::allow().remove_header("sec-websocket-protocol"));

    let req = TestRequest::get("/socket")
        .websocket(true)
        .header("sec-websocket-protocol", "chat, bearer.x");
    assert_eq!(status(&mut p, req), Some(403));
    // Not a WebSocket: the subprotocol is not looked at.
    let req = TestRequest::get("/socket").header("sec-websocket-protocol", "bearer.t1");
    assert_eq!(status(&mut p, req), Some(401));
}

#[test]
fn hmac_tokens_expiry_and_subject() {
    let host = testing::TestHost::new().wall_clock_ms(NOW_MS);
    let mut p = host.instantiate::<TokenAuth>(json!({
        "hmac": {"secret": SECRET},
        "forward_subject": "x-auth-subject",
    }));
    let now = NOW_MS / 1000;
    let good = secret::sign(SECRET.as_bytes(), "ann", now + 60);
    let d = p.on_request(
        &TestRequest::get("/")
            .header("authorization", &format!("Bearer {good}"))
            .build(),
    );
    assert_eq!(d, Decision::allow().set_header("x-auth-subject", "ann"));
    // Its acceptance may be reused from the host's cache only until the token expires.
    assert_eq!(
        p.last_cache_limit(),
        Some(std::time::Duration::from_secs(60))
    );
    assert_eq!(p.registration().identity_headers, ["x-auth-subject"]);

    let old = secret::sign(SECRET.as_bytes(), "ann", now);
    let d = p.on_request(
        &TestRequest::get("/")
            .header("authorization", &format!("Bearer {old}"))
            .build(),
    );
    assert_eq!(d.status(), Some(403));
    assert_eq!(p.last_cache_limit(), None, "a refusal stays true");
    assert!(host
        .logs()
        .iter()
        .any(|(_, m)| m.contains("expired token for subject `ann`")));

    let forged = secret::sign(b"another secret, 32 bytes long!!!", "ann", now + 60);
    let req = TestRequest::get("/").header("authorization", &format!("Bearer {forged}"));
    assert_eq!(status(&mut p, req), Some(403));

    // The token stays valid until the clock passes its expiry.
    p.set_wall_clock_ms((now + 61) * 1000);
    let req = TestRequest::get("/").header("authorization", &format!("Bearer {good}"));
    assert_eq!(status(&mut p, req), Some(403));
}

#[test]
fn static_token_clears_spoofed_subject() {
    let mut p = plugin(json!({"tokens": ["t"], "forward_subject": "x-auth-subject"}));
    let req = TestRequest::get("/")
        .header("authorization", "Bearer t")
        .header("x-auth-subject", "admin");
    let d = p.on_request(&req.build());
    assert_eq!(d, Decision::allow().remove_header("x-auth-subject"));
}

#[test]
fn hmac_secret_file() {
    let host = testing::with_file("hmac.key", format!("{SECRET}\n")).wall_clock_ms(NOW_MS);
    let mut p = host.instantiate::<TokenAuth>(json!({"hmac": {"secret_file": "hmac.key"}}));
    let t = secret::sign(SECRET.as_bytes(), "svc", NOW_MS / 1000 + 1);
    assert_eq!(
        status(
            &mut p,
            TestRequest::get("/").header("authorization", &format!("Bearer {t}"))
        ),
        None
    );
}

#[test]
fn config_errors() {
    let err = |c| {
        testing::try_instantiate::<TokenAuth>(c)
            .err()
            .expect("must fail")
    };
    assert_eq!(
        err(json!({})),
        "configure `tokens`, `tokens_file` or `hmac`"
    );
    assert_eq!(
        err(json!({"tokens": []})),
        "configure `tokens`, `tokens_file` or `hmac`"
    );
    assert_eq!(
        err(json!({"tokens": ["ok", "a b"]})),
        "tokens[1]: a token must be non-empty, without spaces or control characters"
    );
    assert_eq!(
        err(json!({"tokens_file": "missing.txt"})),
        "cannot read config file `missing.txt`: no such file"
    );
    assert_eq!(
        err(json!({"hmac": {"secret": "short"}})),
        "`hmac` secret is 5 bytes; at least 16 are required (32 random bytes recommended)"
    );
    assert_eq!(
        err(json!({"hmac": {}})),
        "`hmac` needs exactly one of `secret` and `secret_file`"
    );
    assert_eq!(
        err(json!({"tokens": ["t"], "header": "x key"})),
        "`header`: `x key` is not a valid header name"
    );
    assert_eq!(
        err(json!({"tokens": ["t"], "query": ""})),
        "`query` must name a query parameter"
    );
    assert!(
        err(json!({"tokens": ["t"], "hmac": {"secret": SECRET, "secert": 1}}))
            .contains("unknown field `secert`")
    );
    assert!(err(json!({"token": ["t"]})).contains("unknown field `token`"));
}

/// A tokens file applies line by line: a bad line is reported and grants nothing, the others work.
#[test]
fn a_bad_line_in_the_tokens_file_is_refused_alone() {
    let host = testing::with_file("tokens.txt", "a\nb c\n\u{7}x\nd\n");
    let mut p = host.instantiate::<TokenAuth>(json!({"tokens_file": "tokens.txt"}));
    let problems = host.config_problems();
    let bad = "a token must be non-empty, without spaces or control characters";
    assert_eq!(
        problems,
        [
            ("tokens.txt".to_owned(), 2, bad.to_owned()),
            ("tokens.txt".to_owned(), 3, bad.to_owned())
        ]
    );
    for (t, want) in [("a", None), ("d", None), ("b", Some(403)), ("c", Some(403))] {
        let req = TestRequest::get("/").header("authorization", &format!("Bearer {t}"));
        assert_eq!(status(&mut p, req), want, "{t}");
    }
    let req = TestRequest::get("/").header("authorization", "Bearer b c");
    assert_eq!(status(&mut p, req), Some(403));
}

/// A file whose last token was removed refuses everyone (an error would keep the old tokens).
#[test]
fn a_tokens_file_without_tokens_refuses_everyone() {
    let host = testing::with_file("tokens.txt", "# none left\n\nbad token\n");
    let mut p = host.instantiate::<TokenAuth>(json!({"tokens_file": "tokens.txt"}));
    assert_eq!(host.config_problems().len(), 2);
    assert_eq!(
        host.config_problems()[1],
        (
            "tokens.txt".to_owned(),
            0,
            "no valid token: every request is refused".to_owned()
        )
    );
    for t in ["bad", "token", "bad token", "# none left"] {
        let req = TestRequest::get("/").header("authorization", &format!("Bearer {t}"));
        assert_eq!(status(&mut p, req), Some(403), "{t}");
    }
}

/// The verdict is keyed by where a credential may come from; a signed token's acceptance is limited
/// per answer (see `hmac_tokens_expiry_and_subject`), not by a short TTL for all.
#[test]
fn decision_cache_covers_every_credential_source() {
    use wasmgate_plugin_sdk::RequestPart;
    let p = plugin(serde_json::json!({"tokens": ["t"]}));
    let c = p.registration().decision_cache.clone().unwrap();
    assert_eq!(
        c.key,
        vec![
            RequestPart::Header("authorization".into()),
            RequestPart::WebSocket
        ]
    );
    assert_eq!(c.ttl, std::time::Duration::from_secs(60));
    let p = plugin(serde_json::json!({
        "header": "X-Token", "query": "token", "subprotocol": true,
        "hmac": {"secret": "0123456789abcdef0123456789abcdef"}
    }));
    let c = p.registration().decision_cache.clone().unwrap();
    assert_eq!(
        c.key,
        vec![
            RequestPart::Header("x-token".into()),
            RequestPart::WebSocket,
            RequestPart::Query,
            RequestPart::Header("sec-websocket-protocol".into()),
        ]
    );
    assert_eq!(c.ttl, std::time::Duration::from_secs(60));
}
