//! Memory per idle WebSocket tunnel: RSS of a proxy's process tree (master + workers) before and
//! after opening N idle tunnels through it. Each tunnel completes one echo round trip (so both copy
//! directions are set up) and then stays silent. Prints one JSON line:
//! `{"opened":…,"wanted":…,"rss_before_kib":…,"rss_after_kib":…,"kib_per_tunnel":…,"procs":…}`.
//!
//! `idle-tunnels --url wss://127.0.0.1:8443/socket --n 1000 --pid 1234 --ca ca.crt`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use wasmgate_bench::{tree_rss_kib, Ws, WsTarget};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Root PID of the proxy (its descendants are counted too).
    #[arg(long)]
    pid: u32,
    /// Seconds to wait after the last tunnel opened before reading RSS.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 32)]
    parallel: usize,
    /// Give up opening tunnels after this many seconds (Apache may stall at its thread limit).
    #[arg(long, default_value_t = 20.0)]
    open_timeout: f64,
    #[arg(long)]
    ca: Option<PathBuf>,
    #[arg(long)]
    sni: Option<String>,
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn open(target: &WsTarget) -> anyhow::Result<Ws> {
    let mut ws = target.connect().await?;
    ws.send(Message::binary(vec![1u8; 16])).await?;
    match ws.next().await {
        Some(Ok(Message::Binary(_))) => Ok(ws),
        other => Err(anyhow::anyhow!("no echo: {other:?}")),
    }
}

fn procs(root: u32) -> usize {
    // Count the tree by walking /proc once more (cheap at this size).
    let mut n = 0;
    let mut stack = vec![root];
    let all: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let after = &stat[stat.rfind(')')? + 1..];
            Some((pid, after.split_whitespace().nth(1)?.parse().ok()?))
        })
        .collect();
    while let Some(p) = stack.pop() {
        n += 1;
        stack.extend(all.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
    }
    n
}

async fn run(args: Args) -> anyhow::Result<()> {
    let target = Arc::new(WsTarget::new(
        &args.url,
        args.ca.as_deref(),
        args.sni.as_deref(),
        &args.headers,
    )?);
    // Warm-up: first-use costs (thread pools, TLS session caches, upstream setup) are not per tunnel.
    {
        let mut warm = Vec::new();
        for _ in 0..16 {
            warm.push(open(&target).await?);
        }
        for mut w in warm {
            let _ = w.close(None).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = tree_rss_kib(args.pid);

    let sem = Arc::new(Semaphore::new(args.parallel));
    let mut tasks = Vec::new();
    for _ in 0..args.n {
        let target = target.clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.ok()?;
            open(&target).await.ok()
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.open_timeout);
    let mut held = Vec::new();
    let mut failed = 0usize;
    for t in tasks {
        match tokio::time::timeout_at(deadline, t).await {
            Ok(Ok(Some(ws))) => held.push(ws),
            _ => failed += 1,
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let after = tree_rss_kib(args.pid);
    let opened = held.len();
    let per = if opened > 0 {
        (after as f64 - before as f64) / opened as f64
    } else {
        0.0
    };
    println!(
        "{}",
        serde_json::json!({
            "opened": opened,
            "wanted": args.n,
            "failed": failed,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "kib_per_tunnel": per,
            "procs": procs(args.pid),
        })
    );
    // Drop without close handshakes: the proxies see resets/EOFs, which is what ends idle tunnels anyway.
    drop(held);
    Ok(())
}
