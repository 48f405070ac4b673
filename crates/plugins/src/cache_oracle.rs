//! The decision cache's oracle: for every built-in, an answer the host replays from its real cache
//! for a request equal in the declared key is the answer a fresh call gives that request. Many varied
//! requests (paths, queries, headers, client addresses, methods, schemes, WebSocket or not) go
//! through `Chain::on_request` — the real cache, keys and replay — and each outcome is compared with
//! a call that bypasses the cache. Requests are drawn from small pools, so most share a key with an
//! earlier, different request: a cache that lies (a key missing a part the answer uses) is caught.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};

use super::convert::{self, Decision};
use super::{Chain, Flow, LoadedPlugin, PluginHost, PluginOwner};
use wasmgate_config::{OnError, PluginConfig, PluginLimits, PluginSource};
use wasmgate_core::conn::Scheme;
use wasmgate_core::request::RequestState;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// A deterministic generator (xorshift64*): the same requests on every run, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let n = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        &from[(n >> 33) as usize % from.len()]
    }
}

/// A signed token as token-auth's README defines it.
fn sign(subject: &str, expiry: u64) -> String {
    use hmac::Mac;
    let payload = format!("{subject}.{expiry}");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(payload.as_bytes());
    let sig: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{payload}.{sig}")
}

/// What a request became: the answer, or the request as it goes on.
#[derive(Debug, PartialEq)]
enum Outcome {
    Respond(u16, Vec<(String, Vec<u8>)>, Vec<u8>),
    Continue(Vec<(String, Vec<u8>)>, String, Option<String>),
}

fn header_list(h: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    h.iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect()
}

async fn through_chain(chain: &Chain, mut state: RequestState, mut headers: HeaderMap) -> Outcome {
    let mut ran = Vec::new();
    match chain.on_request(&mut state, &mut headers, &mut ran).await {
        Ok(Flow::Continue) => Outcome::Continue(header_list(&headers), state.path, state.query),
        Ok(Flow::Respond { response, .. }) => respond_outcome(response).await,
        Err(e) => panic!("plugin failed: {e}"),
    }
}

async fn respond_outcome(r: http::Response<wasmgate_core::body::ProxyBody>) -> Outcome {
    use http_body_util::BodyExt;
    let (parts, body) = r.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    Outcome::Respond(parts.status.as_u16(), header_list(&parts.headers), body)
}

/// The same request answered by a call, never by the cache.
async fn fresh(p: &LoadedPlugin, mut state: RequestState, mut headers: HeaderMap) -> Outcome {
    let req = convert::request(&state, &headers, p.request_headers.as_deref());
    let (action, _) = p
        .on_request(&state.id, state.client, &req)
        .await
        .expect("call");
    match Decision::check(action) {
        Decision::Continue { edits, path, .. } => {
            for e in &edits {
                e.apply(&mut headers);
            }
            if let Some(target) = path {
                crate::chain::rewrite_path(p, &mut state, &target).expect("valid rewrite");
            }
            Outcome::Continue(header_list(&headers), state.path, state.query)
        }
        Decision::Respond {
            status,
            headers,
            body,
            ..
        } => respond_outcome(convert::response(status, &headers, &body)).await,
    }
}

fn chain_of(name: &str, config: serde_json::Value, site: &str) -> Chain {
    let cfg = PluginConfig {
        name: name.into(),
        source: PluginSource::Builtin(name.into()),
        config,
        on_error: OnError::Deny,
        limits: PluginLimits::default(),
        files: wasmgate_config::FileScope::operator(&std::env::temp_dir()),
        confined: None,
        location: format!("oracle:{name}"),
    };
    let owner = PluginOwner {
        site,
        tenant: None,
        cpu: None,
        quota: None,
        grants: &crate::caps::ClockOnly,
    };
    PluginHost::new(None, Default::default())
        .chain(&[cfg], owner, "")
        .unwrap_or_else(|e| panic!("{name} did not load: {e:?}"))
}

/// One generated request.
fn request(rng: &mut Rng, n: usize, tokens: &[String]) -> (RequestState, HeaderMap) {
    let path = *rng.pick(&["/", "/admin/users", "/hello", "/a/b", "/admin"]);
    let query = rng
        .pick(&[
            None,
            Some("token=T1"),
            Some("a=1&token=T2"),
            Some("a=1"),
            Some("token=nope"),
            Some("token="),
        ])
        .map(str::to_string);
    let client: IpAddr = rng
        .pick(&["127.0.0.1", "10.1.2.3", "192.0.2.9", "::1", "2001:db8::5"])
        .parse()
        .unwrap();
    let mut headers = HeaderMap::new();
    let auth: Vec<String> = [
        None,
        Some("Bearer T1".to_string()),
        Some("Bearer nope".into()),
    ]
    .into_iter()
    .flatten()
    .chain(tokens.iter().map(|t| format!("Bearer {t}")))
    .collect();
    if *rng.pick(&[true, false]) {
        headers.insert(
            "authorization",
            HeaderValue::from_str(rng.pick(&auth[..]).as_str()).unwrap(),
        );
    }
    if let Some(k) = rng.pick(&[None, Some("k1"), Some("k2"), Some("zz")]) {
        headers.insert("x-api-key", HeaderValue::from_static(k));
    }
    if let Some(v) = rng.pick(&[None, Some("chat, bearer.T1"), Some("bearer.nope")]) {
        headers.insert("sec-websocket-protocol", HeaderValue::from_static(v));
    }
    if let Some(v) = rng.pick(&[None, Some("admin"), Some("root")]) {
        // A client's own identity claim: must be replaced or removed, from the cache as fresh.
        headers.insert("x-sub", HeaderValue::from_static(v));
    }
    let state = RequestState {
        id: format!("oracle-{n}"),
        method: rng
            .pick(&[http::Method::GET, http::Method::POST, http::Method::DELETE])
            .clone(),
        scheme: *rng.pick(&[Scheme::Http, Scheme::Https]),
        authority: rng.pick(&["a.test", "b.test:8443"]).to_string(),
        path: path.to_string(),
        query,
        client,
        site: "oracle".into(),
        route: Arc::from(*rng.pick(&["/", "/admin"])),
        websocket: *rng.pick(&[false, true]),
        version: http::Version::HTTP_11,
        tls: None,
        at: Instant::now(),
    };
    (state, headers)
}

/// Run `rounds` generated requests through the cache and fresh, stopping early at `until` (a token
/// expiring between the two calls of one round would make them differ for a reason that is not the
/// cache); return the cache hits seen.
async fn check(
    chain: &Chain,
    seed: u64,
    rounds: usize,
    tokens: &[String],
    until: Option<std::time::SystemTime>,
) -> u64 {
    let p = &chain.plugins()[0];
    let hits_before = p.cache_hits.get();
    let mut rng = Rng(seed);
    for n in 0..rounds {
        if until.is_some_and(|u| std::time::SystemTime::now() >= u) {
            break;
        }
        let (state, headers) = request(&mut rng, n, tokens);
        let replayed = through_chain(chain, state.clone(), headers.clone()).await;
        let called = fresh(p, state.clone(), headers.clone()).await;
        assert_eq!(
            replayed, called,
            "{}: request {n} ({} {}?{:?}, client {}, headers {headers:?}) answered differently from the cache",
            p.name, state.method, state.path, state.query, state.client
        );
    }
    p.cache_hits.get() - hits_before
}

#[tokio::test]
async fn a_cached_answer_equals_a_fresh_call_for_every_builtin() {
    let cases: Vec<(&str, serde_json::Value, bool)> = vec![
        // The README's WebSocket recipe with `query_always`: answers that strip the query token
        // rewrite the path, which the key does not hold.
        (
            "token-auth",
            serde_json::json!({"tokens": ["T1", "T2"], "query": "token", "query_always": true, "strip": true, "forward_subject": "x-sub"}),
            false,
        ),
        (
            "token-auth",
            serde_json::json!({"tokens": ["T1"], "subprotocol": true, "strip": true}),
            false,
        ),
        // Signed tokens, one of which expires during the test.
        (
            "token-auth",
            serde_json::json!({"hmac": {"secret": SECRET}, "forward_subject": "x-sub"}),
            true,
        ),
        (
            "ip-allow",
            serde_json::json!({"allow": ["10.0.0.0/8", "::1/128"]}),
            false,
        ),
        (
            "require-header",
            serde_json::json!({"name": "x-api-key", "values": ["k1", "k2"], "strip": true}),
            false,
        ),
        (
            "headers",
            serde_json::json!({"request": {"set": {"x-client": "{client_addr} {scheme} {host}"}, "remove": ["x-sub"]}}),
            false,
        ),
        (
            "redirect",
            serde_json::json!({"from": "/admin", "to": "https://elsewhere.test/"}),
            false,
        ),
        (
            "basic-auth",
            serde_json::json!({"htpasswd": "oracle-missing.htpasswd"}),
            false,
        ),
    ];
    for (i, (name, config, signed)) in cases.into_iter().enumerate() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        // ann's token expires two seconds from now (in the middle of this case), bob's much later,
        // eve's long ago.
        let soon = now.as_secs() + 2;
        let tokens = match signed {
            true => vec![sign("ann", soon), sign("bob", soon + 3600), sign("eve", 1)],
            false => vec![],
        };
        if name == "basic-auth" {
            // Declares no cache (its throttle makes answers depend on history): nothing to replay.
            // It cannot even start without its file here; that it declares none is checked below.
            continue;
        }
        let site = format!("oracle-{i}");
        let chain = chain_of(name, config, &site);
        let declares = chain.plugins()[0].cache.is_some();
        let seed = 0x9E37_79B9_7F4A_7C15 ^ i as u64;
        let expiry = std::time::UNIX_EPOCH + Duration::from_secs(soon);
        let until = (!tokens.is_empty()).then(|| expiry - Duration::from_millis(300));
        let hits = check(&chain, seed, 400, &tokens, until).await;
        if declares {
            assert!(
                hits > 50,
                "{name}: only {hits} cache hits; the oracle did not exercise the cache"
            );
        } else {
            assert_eq!(hits, 0, "{name}");
        }
        if !tokens.is_empty() {
            // Past `soon`, ann's cached acceptance must be gone: the same requests again.
            let wait = expiry
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(wait + Duration::from_millis(50)).await;
            check(&chain, seed, 400, &tokens, None).await;
        }
    }
}

#[test]
fn basic_auth_declares_no_cache() {
    // Its answers depend on the host's per-address throttle: a cache would replay a 401 where a 429
    // is due, or the reverse.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("u"),
        "a:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
    )
    .unwrap();
    let cfg = PluginConfig {
        name: "basic-auth".into(),
        source: PluginSource::Builtin("basic-auth".into()),
        config: serde_json::json!({"htpasswd": "u"}),
        on_error: OnError::Deny,
        limits: PluginLimits::default(),
        files: wasmgate_config::FileScope::operator(dir.path()),
        confined: None,
        location: "oracle:basic-auth".into(),
    };
    let chain = PluginHost::new(None, Default::default())
        .chain(
            &[cfg],
            PluginOwner {
                site: "oracle-basic",
                tenant: None,
                cpu: None,
                quota: None,
                grants: &crate::caps::ClockOnly,
            },
            "",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(chain.plugins()[0].cache.is_none());
}
