//! WebSocket echo load: N connections, each sending a binary message of S bytes and waiting for its
//! echo before sending the next (closed loop, like wrk's connections). Prints one JSON line:
//! `{"msgs_per_s":…,"p50_us":…,"p99_us":…,"msgs":…,"conns":…,"errors":…}`.
//!
//! `ws-load --url ws://127.0.0.1:8080/socket --conns 32 --size 64 --duration 10 [-H 'authorization: Bearer t'] [--ca ca.crt]`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use wasmgate_bench::{quantile, WsTarget};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 32)]
    conns: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Threads of the load generator (1 = like `wrk -t1`).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long)]
    ca: Option<PathBuf>,
    #[arg(long)]
    sni: Option<String>,
    /// Extra handshake header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let target = Arc::new(WsTarget::new(
        &args.url,
        args.ca.as_deref(),
        args.sni.as_deref(),
        &args.headers,
    )?);
    let mut conns = Vec::new();
    for _ in 0..args.conns {
        conns.push(target.connect().await?);
    }
    let start = Instant::now() + Duration::from_secs_f64(args.warmup);
    let end = start + Duration::from_secs_f64(args.duration);
    let payload = bytes::Bytes::from(vec![0x5a_u8; args.size]);
    let mut tasks = Vec::new();
    for mut ws in conns {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut rtts: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                if ws.send(Message::Binary(payload.clone())).await.is_err() {
                    errors += 1;
                    break;
                }
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) if b.len() == payload.len() => {}
                    Some(Ok(_)) | Some(Err(_)) | None => {
                        errors += 1;
                        break;
                    }
                }
                let t1 = Instant::now();
                if t0 >= start && t1 <= end {
                    rtts.push((t1 - t0).as_micros().min(u32::MAX as u128) as u32);
                }
            }
            let _ = ws.close(None).await;
            (rtts, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (r, e) = t.await?;
        all.extend(r);
        errors += e;
    }
    all.sort_unstable();
    let msgs = all.len();
    println!(
        "{}",
        serde_json::json!({
            "msgs_per_s": msgs as f64 / args.duration,
            "p50_us": quantile(&all, 0.50),
            "p99_us": quantile(&all, 0.99),
            "msgs": msgs,
            "conns": args.conns,
            "size": args.size,
            "errors": errors,
        })
    );
    Ok(())
}
