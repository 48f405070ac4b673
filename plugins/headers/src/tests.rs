use serde_json::json;
use wasmgate_plugin_sdk::testing::{self, TestRequest, TestResponse};
use wasmgate_plugin_sdk::Header;

use super::*;

#[test]
fn request_and_response_edits() {
    let mut p = testing::instantiate_toml::<Headers>(
        r#"
        request = { set = { "X-A" = "1", "x-client" = "{client_addr}" }, append = { "x-b" = "2" }, remove = ["x-c"] }
        response = { set = { "x-served-by" = "wasmgate {site}" }, remove = ["server"] }
        "#,
    );
    assert_eq!(p.hooks(), Hooks::BOTH);
    let req = TestRequest::get("/p")
        .client("10.1.2.3")
        .header("x-a", "old")
        .header("x-b", "1")
        .header("x-c", "gone")
        .build();
    let d = p.on_request(&req);
    let mut headers = req.headers.clone();
    HeaderOp::apply_all(&mut headers, &d.edits().expect("allowed").headers);
    assert_eq!(
        headers,
        vec![
            Header::new("x-b", "1"),
            Header::new("x-a", "1"),
            Header::new("x-client", "10.1.2.3"),
            Header::new("x-b", "2"),
        ]
    );

    let resp = TestResponse::status(200).header("server", "nginx").build();
    let ops = p.on_response(&req.info, &resp);
    let mut headers = resp.headers.clone();
    HeaderOp::apply_all(&mut headers, &ops);
    assert_eq!(headers, vec![Header::new("x-served-by", "wasmgate test")]);
}

#[test]
fn hooks_follow_sections() {
    let p = testing::instantiate::<Headers>(json!({"response": {"set": {"x-a": "{site}"}}}));
    assert_eq!(p.hooks(), Hooks::RESPONSE);
    assert!(p.registration().fixed_response_edits.is_empty());
    let p = testing::instantiate::<Headers>(json!({"request": {"remove": ["x-a"]}}));
    assert_eq!(p.hooks(), Hooks::REQUEST);
    // An empty section counts as absent.
    let p =
        testing::instantiate::<Headers>(json!({"request": {"remove": ["x-a"]}, "response": {}}));
    assert_eq!(p.hooks(), Hooks::REQUEST);
}

/// Response edits without variables need no call: the host applies them itself.
#[test]
fn fixed_response_edits_need_no_call() {
    let mut p = testing::instantiate_toml::<Headers>(
        r#"
        request = { set = { "x-real-ip" = "{client_addr}" } }
        response = { set = { "strict-transport-security" = "max-age=63072000" }, remove = ["server"] }
        "#,
    );
    assert_eq!(p.hooks(), Hooks::REQUEST);
    let reg = p.registration().clone();
    assert_eq!(reg.request_headers, Some(vec![]));
    assert_eq!(
        reg.fixed_response_edits,
        vec![
            HeaderOp::remove("server"),
            HeaderOp::set("strict-transport-security", "max-age=63072000"),
        ]
    );
    // The harness applies them as the host does.
    let req = TestRequest::get("/").build();
    let resp = TestResponse::status(200).header("server", "x").build();
    let mut headers = resp.headers.clone();
    HeaderOp::apply_all(&mut headers, &p.on_response(&req.info, &resp));
    assert_eq!(
        headers,
        vec![Header::new("strict-transport-security", "max-age=63072000")]
    );
}

#[test]
fn all_variables() {
    let vars = VARIABLES.map(|v| format!("{v}={{{v}}}")).join(" ");
    let mut p = testing::instantiate::<Headers>(json!({"request": {"set": {"x-v": vars}}}));
    let req = TestRequest::get("https://a.example:8443/p?q=1")
        .client("::1")
        .id("rid")
        .site("chat")
        .route("/socket")
        .build();
    let d = p.on_request(&req);
    assert_eq!(
        d.edits().expect("allowed").headers,
        vec![HeaderOp::set(
            "x-v",
            "client_addr=::1 host=a.example authority=a.example:8443 scheme=https request_id=rid method=GET path=/p site=chat route=/socket"
        )]
    );
}

#[test]
fn config_errors() {
    let err = |c| {
        testing::try_instantiate::<Headers>(c)
            .err()
            .expect("must fail")
    };
    assert_eq!(
        err(json!({})),
        "nothing to do: configure `request` and/or `response` with `set`, `append` or `remove`"
    );
    assert_eq!(
        err(json!({"request": {"set": {"x a": "1"}}})),
        "request.set.x a: `x a` is not a valid header name"
    );
    assert_eq!(
        err(json!({"response": {"remove": ["Connection"]}})),
        "response.remove[0]: `Connection` is managed by the proxy (connection or framing) and cannot be changed by a plugin"
    );
    assert!(err(json!({"request": {"append": {"x-a": "{nope}"}}}))
        .starts_with("request.append.x-a: unknown variable `{nope}`"));
    assert_eq!(
        err(json!({"request": {"set": {"x-a": "a\nb"}}})),
        "request.set.x-a: control characters (CR, LF, …) are not allowed in header values"
    );
    assert!(err(json!({"request": {"sett": {}}})).contains("unknown field `sett`"));
    assert!(err(json!({"requests": {}})).contains("unknown field `requests`"));
}

/// Request edits are cacheable by the facts their values use — unless one uses `{request_id}`.
#[test]
fn decision_cache_keys_follow_the_variables() {
    use wasmgate_plugin_sdk::RequestPart;
    let p = testing::instantiate::<Headers>(
        json!({"request": {"set": {"x-ip": "{client_addr}", "x-h": "{host}{path} {site}"}}}),
    );
    let cache = p.registration().decision_cache.clone().expect("cacheable");
    assert_eq!(
        cache.key,
        // In header-name order (`x-h` before `x-ip`), each part once.
        vec![
            RequestPart::Authority,
            RequestPart::Path,
            RequestPart::ClientAddr
        ]
    );
    let p = testing::instantiate::<Headers>(json!({"request": {"set": {"x-id": "{request_id}"}}}));
    assert_eq!(p.registration().decision_cache, None);
}
