//! Plugin hook cost, measured in-process through wasmgate's public API (no sockets): the same
//! `Chain::on_request` + `plugins::on_response` calls the proxy makes per request, for chains of
//! 0, 1, 2 (the seed's token-auth + headers) and 3 plugins. Prints one JSON line per chain:
//! `{"chain":…,"plugins":…,"hooks":…,"mean_us":…,"p50_us":…,"p99_us":…,"extra_us":…,"per_hook_us":…}`
//! where `extra_us` is the mean minus the empty chain's mean.
//!
//! `hook-cost [--iters 20000]`

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use wasmgate_config::Config;
use wasmgate_core::request::RequestState;
use wasmgate_plugins::{on_response, Flow};
use wasmgate_runtime::{Builders, Runtime};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 20_000)]
    iters: usize,
    /// Worker threads; with more than one, as many tasks call the chain concurrently on a
    /// multi-thread runtime (instances then move between cores, as in the proxy).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Where the compiled-plugin cache lives (default: wasmgate's default).
    #[arg(long)]
    cache_dir: Option<std::path::PathBuf>,
}

const TOKEN: &str = "bench-token-0123456789abcdef";

const TOKEN_AUTH: &str = r#"
[[site.plugin]]
builtin = "token-auth"
config = { tokens = ["bench-token-0123456789abcdef"] }
"#;
const HEADERS: &str = r#"
[[site.plugin]]
builtin = "headers"
config.request = { set = { "x-forwarded-proto" = "{scheme}", "x-real-ip" = "{client_addr}" } }
config.response = { set = { "strict-transport-security" = "max-age=63072000" }, remove = ["server"] }
"#;
const IP_ALLOW: &str = r#"
[[site.plugin]]
builtin = "ip-allow"
config = { allow = ["127.0.0.0/8", "::1/128"] }
"#;

/// (site name, plugins, on-request + on-response hook calls per request, plugin config)
fn chains() -> Vec<(&'static str, usize, usize, String)> {
    vec![
        ("none", 0, 0, String::new()),
        ("token-auth", 1, 1, TOKEN_AUTH.to_string()),
        ("headers", 1, 1, HEADERS.to_string()),
        (
            "token-auth+headers (seed)",
            2,
            2,
            format!("{TOKEN_AUTH}{HEADERS}"),
        ),
        (
            "token-auth+headers+ip-allow",
            3,
            3,
            format!("{TOKEN_AUTH}{HEADERS}{IP_ALLOW}"),
        ),
    ]
}

fn config_text() -> String {
    let mut text = String::from("[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n");
    for (i, (_, _, _, plugins)) in chains().iter().enumerate() {
        text.push_str(&format!(
            "\n[[site]]\nname = \"s{i}\"\nlisteners = [\"web\"]\nhosts = [\"s{i}.bench\"]\n{plugins}\n[[site.route]]\npath = \"/\"\nbackend = \"http://127.0.0.1:9/\"\n"
        ));
    }
    text
}

fn request_headers(host: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in [
        ("host", host),
        ("user-agent", "wrk"),
        ("accept", "*/*"),
        ("authorization", &format!("Bearer {TOKEN}")),
    ] {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn response() -> Response<wasmgate_core::body::ProxyBody> {
    let mut r = Response::new(wasmgate_core::body::empty());
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("text/plain"));
    h.insert("content-length", HeaderValue::from_static("39"));
    h.insert(
        "date",
        HeaderValue::from_static("Wed, 25 Nov 2026 09:00:00 GMT"),
    );
    h.insert("server", HeaderValue::from_static("bench"));
    r
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = config_text();
    let config = Config::parse(&text, Path::new("/tmp/wasmgate-hook-cost.toml"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let builders = Builders::new(args.cache_dir.clone(), Default::default());
    let rt = Runtime::build(config, &builders, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let tokio_rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    let mut base_mean = 0.0;
    for (i, (name, plugins, hooks, _)) in chains().into_iter().enumerate() {
        let site = rt.sites[i].clone();
        let host = format!("s{i}.bench");
        let template = Arc::new(request_headers(&host));
        let state0 = Arc::new(RequestState {
            id: "0000000000000001".into(),
            method: http::Method::GET,
            scheme: wasmgate_core::conn::Scheme::Http,
            authority: host.clone(),
            path: "/".into(),
            query: None,
            client: IpAddr::V4(Ipv4Addr::LOCALHOST),
            site: site.name.clone(),
            route: Arc::from("/"),
            websocket: false,
            version: http::Version::HTTP_11,
            tls: None,
            at: std::time::Instant::now(),
        });
        let per_task = args.iters / args.threads.max(1);
        let mut samples: Vec<u32> = Vec::with_capacity(args.iters);
        tokio_rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..args.threads.max(1) {
                let (site, template, state0) = (site.clone(), template.clone(), state0.clone());
                tasks.push(tokio::spawn(async move {
                    let mut samples: Vec<u32> = Vec::with_capacity(per_task);
                    let warmup = per_task / 10;
                    for n in 0..warmup + per_task {
                        let mut state = (*state0).clone();
                        let mut headers = (*template).clone();
                        let t0 = Instant::now();
                        let mut ran = Vec::new();
                        match site
                            .plugins
                            .on_request(&mut state, &mut headers, &mut ran)
                            .await
                        {
                            Ok(Flow::Continue) => {}
                            Ok(Flow::Respond { plugin, .. }) => {
                                panic!("{name}: plugin {plugin} answered the request")
                            }
                            Err(_) => panic!("{name}: the chain failed"),
                        }
                        let resp = on_response(&ran, &state, response())
                            .await
                            .expect("on-response failed");
                        std::hint::black_box(resp);
                        let dt = t0.elapsed();
                        if n >= warmup {
                            samples.push(dt.as_nanos().min(u32::MAX as u128) as u32);
                        }
                        // Let the other tasks interleave, as requests on a worker do.
                        tokio::task::yield_now().await;
                    }
                    samples
                }));
            }
            for t in tasks {
                samples.extend(t.await.expect("bench task"));
            }
        });
        let mean = samples.iter().map(|&s| s as f64).sum::<f64>() / samples.len() as f64 / 1000.0;
        samples.sort_unstable();
        if i == 0 {
            base_mean = mean;
        }
        let extra = mean - base_mean;
        println!(
            "{}",
            serde_json::json!({
                "chain": name,
                "threads": args.threads.max(1),
                "plugins": plugins,
                "hooks": hooks,
                "mean_us": mean,
                "p50_us": wasmgate_bench::quantile(&samples, 0.5) as f64 / 1000.0,
                "p99_us": wasmgate_bench::quantile(&samples, 0.99) as f64 / 1000.0,
                "extra_us": extra,
                "per_hook_us": if hooks > 0 { extra / hooks as f64 } else { 0.0 },
            })
        );
    }
    Ok(())
}
