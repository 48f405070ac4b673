use serde_json::json;
use wasmgate_plugin_sdk::testing::{self, TestPlugin, TestRequest};

use super::*;

fn status(p: &mut TestPlugin<RequireHeader>, value: Option<&str>) -> Option<u16> {
    let mut req = TestRequest::get("/");
    if let Some(v) = value {
        req = req.header("X-Api-Key", v);
    }
    p.on_request(&req.build()).status()
}

#[test]
fn values_allow_and_deny() {
    let mut p = testing::instantiate_toml::<RequireHeader>(
        r#"name = "x-api-key"
values = ["k1", "k2"]"#,
    );
    assert_eq!(p.hooks(), Hooks::REQUEST);
    assert_eq!(status(&mut p, Some("k1")), None);
    assert_eq!(status(&mut p, Some("k2")), None);
    assert_eq!(status(&mut p, None), Some(401));
    assert_eq!(status(&mut p, Some("k3")), Some(403));
    assert_eq!(status(&mut p, Some("k")), Some(403));
    assert_eq!(status(&mut p, Some("")), Some(403));
}

#[test]
fn presence_is_enough_without_values() {
    let mut p = testing::instantiate::<RequireHeader>(json!({"name": "X-Api-Key"}));
    assert_eq!(status(&mut p, Some("anything")), None);
    assert_eq!(status(&mut p, Some("")), None);
    assert_eq!(status(&mut p, None), Some(401));
}

#[test]
fn status_override_and_strip() {
    let mut p = testing::instantiate::<RequireHeader>(
        json!({"name": "x-api-key", "values": ["k1"], "status": 404, "strip": true}),
    );
    assert_eq!(status(&mut p, None), Some(404));
    assert_eq!(status(&mut p, Some("no")), Some(404));
    let d = p.on_request(&TestRequest::get("/").header("x-api-key", "k1").build());
    assert_eq!(d, Decision::allow().remove_header("x-api-key"));
}

#[test]
fn config_errors() {
    let err = |c| {
        testing::try_instantiate::<RequireHeader>(c)
            .err()
            .expect("must fail")
    };
    assert_eq!(
        err(json!({"name": "x key"})),
        "`name`: `x key` is not a valid header name"
    );
    assert_eq!(
        err(json!({"name": "x", "values": ["a", ""]})),
        "values[1]: must not be empty"
    );
    assert_eq!(
        err(json!({"name": "x", "status": 302})),
        "`status` must be between 400 and 599, got 302"
    );
    assert_eq!(err(json!({})), "invalid config: missing field `name`");
    assert!(err(json!({"name": "x", "value": "a"})).contains("unknown field `value`"));
}
