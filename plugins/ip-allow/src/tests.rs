use serde_json::json;
use wasmgate_plugin_sdk::testing::{self, TestPlugin, TestRequest};

use super::*;

fn status(p: &mut TestPlugin<IpAllow>, client: &str) -> Option<u16> {
    p.on_request(&TestRequest::get("/").client(client).build())
        .status()
}

#[test]
fn allow_list() {
    let mut p = testing::instantiate_toml::<IpAllow>(r#"allow = ["127.0.0.0/8", "::1/128"]"#);
    assert_eq!(p.hooks(), Hooks::REQUEST);
    assert_eq!(status(&mut p, "127.0.0.1"), None);
    assert_eq!(status(&mut p, "127.255.0.9"), None);
    assert_eq!(status(&mut p, "::1"), None);
    assert_eq!(status(&mut p, "10.0.0.1"), Some(403));
    assert_eq!(status(&mut p, "::2"), Some(403));
}

#[test]
fn deny_wins_and_empty_allow_allows_the_rest() {
    let mut p =
        testing::instantiate::<IpAllow>(json!({"allow": ["10.0.0.0/8"], "deny": ["10.0.0.66"]}));
    assert_eq!(status(&mut p, "10.1.1.1"), None);
    assert_eq!(status(&mut p, "10.0.0.66"), Some(403));

    let mut p = testing::instantiate::<IpAllow>(
        json!({"deny": ["192.0.2.0/24", "2001:db8::/32"], "status": 404}),
    );
    assert_eq!(status(&mut p, "198.51.100.1"), None);
    assert_eq!(status(&mut p, "192.0.2.7"), Some(404));
    assert_eq!(status(&mut p, "2001:db8::1"), Some(404));
}

#[test]
fn ipv4_mapped_ipv6() {
    // A mapped client matches IPv4 rules…
    let mut p = testing::instantiate::<IpAllow>(json!({"allow": ["10.0.0.0/8"]}));
    assert_eq!(status(&mut p, "::ffff:10.2.3.4"), None);
    assert_eq!(status(&mut p, "::ffff:11.2.3.4"), Some(403));
    // …and a mapped rule matches IPv4 clients.
    let mut p = testing::instantiate::<IpAllow>(json!({"deny": ["::ffff:10.0.0.0/104"]}));
    assert_eq!(status(&mut p, "10.9.9.9"), Some(403));
    assert_eq!(status(&mut p, "11.0.0.1"), None);
}

#[test]
fn host_bits_and_single_addresses() {
    let mut p = testing::instantiate::<IpAllow>(json!({"allow": ["10.1.2.3/8", " 192.168.1.1 "]}));
    assert_eq!(status(&mut p, "10.200.0.1"), None);
    assert_eq!(status(&mut p, "192.168.1.1"), None);
    assert_eq!(status(&mut p, "192.168.1.2"), Some(403));
}

#[test]
fn unreadable_client_fails_closed() {
    let mut p = testing::instantiate::<IpAllow>(json!({"deny": ["10.0.0.0/8"]}));
    assert_eq!(status(&mut p, "not-an-ip"), Some(403));
    assert_eq!(status(&mut p, ""), Some(403));
}

#[test]
fn config_errors() {
    let err = |c| {
        testing::try_instantiate::<IpAllow>(c)
            .err()
            .expect("must fail")
    };
    assert_eq!(
        err(json!({})),
        "configure `allow` and/or `deny` (with neither, every client is let in)"
    );
    assert_eq!(
        err(json!({"allow": ["10.0.0.0/8", "10.0.0/8"]})),
        "allow[1]: `10.0.0/8` is neither an IP address nor a CIDR range like `10.0.0.0/8` or `fd00::/8`"
    );
    assert!(err(json!({"deny": ["10.0.0.0/33"]})).starts_with("deny[0]: `10.0.0.0/33`"));
    assert_eq!(
        err(json!({"deny": ["1.2.3.4"], "status": 200})),
        "`status` must be between 400 and 599, got 200"
    );
    assert!(err(json!({"allow": "10.0.0.0/8"}))
        .starts_with("invalid config at `allow`: invalid type: string"));
    assert!(err(json!({"alow": []})).contains("unknown field `alow`"));
}
