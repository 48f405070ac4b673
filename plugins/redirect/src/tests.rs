use serde_json::json;
use wasmgate_plugin_sdk::testing::{self, TestRequest};

use super::*;

fn plugin(config: serde_json::Value) -> testing::TestPlugin<Redirect> {
    testing::instantiate(config)
}

fn location(p: &mut testing::TestPlugin<Redirect>, target: &str) -> (Option<u16>, Option<String>) {
    let d = p.on_request(&TestRequest::get(target).build());
    (d.status(), d.response_header("location").map(str::to_owned))
}

#[test]
fn seed_redirect_keeps_path_and_query() {
    // Redirect permanent / https://chat.example.org/
    let mut p =
        plugin(json!({"from": "/", "to": "https://chat.example.org/", "status": "permanent"}));
    assert_eq!(
        location(&mut p, "/socket?a=1"),
        (
            Some(301),
            Some("https://chat.example.org/socket?a=1".into())
        )
    );
    assert_eq!(
        location(&mut p, "/"),
        (Some(301), Some("https://chat.example.org/".into()))
    );
    assert_eq!(p.hooks(), Hooks::REQUEST);
}

#[test]
fn prefix_matches_whole_segments_only() {
    let mut p = plugin(json!({"from": "/a", "to": "https://x.example/b"}));
    assert_eq!(
        location(&mut p, "/a"),
        (Some(302), Some("https://x.example/b".into()))
    );
    assert_eq!(
        location(&mut p, "/a/c/d?q=1"),
        (Some(302), Some("https://x.example/b/c/d?q=1".into()))
    );
    // Not a segment match: the request goes on.
    let d = p.on_request(&TestRequest::get("/ab").build());
    assert!(d.is_allow());
    let d = p.on_request(&TestRequest::get("/").build());
    assert!(d.is_allow());
}

#[test]
fn no_double_slash_and_query_join() {
    let mut p =
        plugin(json!({"from": "/old", "to": "https://x.example/new/?src=old", "status": 308}));
    assert_eq!(
        location(&mut p, "/old/p?x=1"),
        (
            Some(308),
            Some("https://x.example/new/p?src=old&x=1".into())
        )
    );
    let mut p = plugin(json!({"from": "/old/", "to": "/new/", "status": "seeother"}));
    assert_eq!(
        location(&mut p, "/old/x"),
        (Some(303), Some("/new/x".into()))
    );
    assert!(p.on_request(&TestRequest::get("/old").build()).is_allow());
}

#[test]
fn decoded_bytes_are_reencoded() {
    let mut p = plugin(json!({"from": "/", "to": "https://x.example/"}));
    assert_eq!(
        location(&mut p, "/a b/é"),
        (Some(302), Some("https://x.example/a%20b/%C3%A9".into()))
    );
}

#[test]
fn gone_is_bodyless_410() {
    let mut p = plugin(json!({"from": "/old", "status": "gone"}));
    let d = p.on_request(&TestRequest::get("/old/x").build());
    assert_eq!(d.status(), Some(410));
    let r = d.response().expect("response");
    assert!(r.body.is_empty() && r.headers.is_empty());
    assert!(p.on_request(&TestRequest::get("/new").build()).is_allow());
}

#[test]
fn https_mode() {
    let mut p = plugin(json!({"https": true, "status": "permanent"}));
    let req = TestRequest::get("http://chat.example.org:8080/socket?a=1").build();
    let d = p.on_request(&req);
    assert_eq!(d.status(), Some(301));
    assert_eq!(
        d.response_header("location"),
        Some("https://chat.example.org/socket?a=1")
    );
    // Already https: no loop.
    let req = TestRequest::get("https://chat.example.org/x").build();
    assert!(p.on_request(&req).is_allow());

    let mut p = plugin(json!({"https": true, "port": 8443}));
    let d = p.on_request(&TestRequest::get("http://[::1]:8080/p").build());
    assert_eq!(
        (d.status(), d.response_header("location")),
        (Some(302), Some("https://[::1]:8443/p"))
    );

    let d = p.on_request(&TestRequest::get("/p").authority("").build());
    assert_eq!(d.status(), Some(400));
}

#[test]
fn config_errors() {
    let err = |c| {
        testing::try_instantiate::<Redirect>(c)
            .err()
            .expect("must fail")
    };
    assert_eq!(
        err(json!({"from": "/"})),
        "`to` is required (or set `https = true`, or `status = \"gone\"`)"
    );
    assert_eq!(
        err(json!({"from": "x", "to": "/y"})),
        "`from` must start with `/`, got `x`"
    );
    assert_eq!(err(json!({"to": "example.org"})), "`to` must be an absolute URL (`https://host/…`) or a path starting with `/`, got `example.org`");
    assert_eq!(
        err(json!({"status": "gone", "to": "/x"})),
        "`status = \"gone\"` takes no `to`"
    );
    assert_eq!(
        err(json!({"https": true, "to": "/x"})),
        "`https = true` takes no `to`: it keeps host, path and query"
    );
    assert_eq!(
        err(json!({"to": "/x", "port": 1})),
        "`port` only applies with `https = true`"
    );
    let e = err(json!({"to": "/x", "status": "permanet"}));
    assert!(
        e.starts_with("invalid config at `status`: invalid value: string \"permanet\""),
        "{e}"
    );
    let e = err(json!({"to": "/x", "status": 200}));
    assert!(
        e.starts_with("invalid config at `status`: invalid value: integer `200`"),
        "{e}"
    );
    let e = err(json!({"to": "/x", "stauts": 301}));
    assert!(e.contains("unknown field `stauts`"), "{e}");
}

#[test]
fn toml_config_and_numeric_status_strings() {
    let mut p = testing::instantiate_toml::<Redirect>(
        r#"from = "/" 
to = "https://chat.example.org/"
status = "307""#,
    );
    assert_eq!(
        location(&mut p, "/x"),
        (Some(307), Some("https://chat.example.org/x".into()))
    );
}
