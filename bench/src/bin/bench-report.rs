//! Turns the raw measurements of one `bench/run` into the table (stdout), Markdown and an SVG chart.
//!
//! - `bench-report wrk --kind http|https --target NAME FILE`: parse `wrk --latency` output, print a JSON line.
//! - `bench-report render RAW.jsonl --machine MACHINE.txt --md OUT.md --svg OUT.svg`
//!
//! RAW.jsonl lines: `{"kind":"http"|"https","target":…,"rps":…,"p50_us":…,"p99_us":…}`,
//! `{"kind":"ws"|"wss","target":…,"msgs_per_s":…,"p50_us":…,"p99_us":…}`,
//! `{"kind":"idle-ws"|"idle-wss","target":…,"kib_per_tunnel":…,"opened":…,"wanted":…}`,
//! `{"kind":"hooks","chain":…,"hooks":…,"mean_us":…,"extra_us":…,"per_hook_us":…}`.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Wrk {
        #[arg(long)]
        kind: String,
        #[arg(long)]
        target: String,
        file: PathBuf,
    },
    Render {
        raw: PathBuf,
        #[arg(long)]
        machine: PathBuf,
        #[arg(long)]
        md: PathBuf,
        #[arg(long)]
        svg: PathBuf,
        /// Also replace the part of this file between `<!-- latest:start -->` and `<!-- latest:end -->`.
        #[arg(long)]
        readme: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Wrk { kind, target, file } => {
            let text =
                std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
            println!("{}", parse_wrk(&text, &kind, &target)?);
        }
        Cmd::Render {
            raw,
            machine,
            md,
            svg,
            readme,
        } => {
            let rows: Vec<Value> = std::fs::read_to_string(&raw)?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(serde_json::from_str)
                .collect::<Result<_, _>>()?;
            let machine = std::fs::read_to_string(&machine).unwrap_or_default();
            let report = Report { rows };
            let table = report.markdown(&machine);
            println!("{table}");
            std::fs::write(&md, &table)?;
            std::fs::write(&svg, report.svg(&machine))?;
            if let Some(path) = readme {
                let text = std::fs::read_to_string(&path)?;
                let (start, end) = ("<!-- latest:start -->", "<!-- latest:end -->");
                if let (Some(a), Some(b)) = (text.find(start), text.find(end)) {
                    let body = table
                        .replacen("## wasmgate vs nginx, HAProxy and Apache httpd\n", "", 1)
                        .replace("\n### ", "\n#### ");
                    let new = format!(
                        "{}{start}\n{}\n![latest run, ratios to nginx](results/latest.svg)\n\n{}",
                        &text[..a],
                        body.trim(),
                        &text[b..]
                    );
                    std::fs::write(&path, new)?;
                }
            }
        }
    }
    Ok(())
}

/// wrk's latency with unit (`512.00us`, `1.23ms`, `2.00s`) → µs.
fn wrk_time_us(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * mult)
}

fn parse_wrk(text: &str, kind: &str, target: &str) -> anyhow::Result<Value> {
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    let mut errors = 0u64;
    let mut non2xx = 0u64;
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some(v) = t.strip_prefix("50%") {
            p50 = wrk_time_us(v);
        } else if let Some(v) = t.strip_prefix("99%") {
            p99 = wrk_time_us(v);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            non2xx = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // `connect 0, read 0, write 0, timeout 0`
            errors = v
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        }
    }
    let rps = rps.ok_or_else(|| anyhow!("no Requests/sec in wrk output (did the target run?)"))?;
    Ok(json!({
        "kind": kind, "target": target, "rps": rps,
        "p50_us": p50.unwrap_or(0.0), "p99_us": p99.unwrap_or(0.0),
        "errors": errors, "non2xx": non2xx,
    }))
}

/// Display order and labels of the targets.
const TARGETS: [(&str, &str); 6] = [
    ("direct", "direct"),
    ("apache", "Apache 2.4 event"),
    ("nginx", "nginx"),
    ("haproxy", "HAProxy"),
    ("wasmgate", "wasmgate"),
    ("wasmgate-seed", "wasmgate + seed plugins"),
];

struct Report {
    rows: Vec<Value>,
}

#[derive(Clone, Copy, PartialEq)]
enum Better {
    Higher,
    Lower,
}

struct Figure {
    label: &'static str,
    kind: &'static str,
    field: &'static str,
    unit: &'static str,
    better: Better,
}

const FIGURES: [Figure; 14] = [
    Figure {
        label: "HTTP requests/s",
        kind: "http",
        field: "rps",
        unit: "",
        better: Better::Higher,
    },
    Figure {
        label: "HTTP p50",
        kind: "http",
        field: "p50_us",
        unit: "µs",
        better: Better::Lower,
    },
    Figure {
        label: "HTTP p99",
        kind: "http",
        field: "p99_us",
        unit: "µs",
        better: Better::Lower,
    },
    Figure {
        label: "HTTP req/s per proxy core",
        kind: "http",
        field: "rps_per_core",
        unit: "",
        better: Better::Higher,
    },
    Figure {
        label: "HTTPS requests/s",
        kind: "https",
        field: "rps",
        unit: "",
        better: Better::Higher,
    },
    Figure {
        label: "HTTPS p50",
        kind: "https",
        field: "p50_us",
        unit: "µs",
        better: Better::Lower,
    },
    Figure {
        label: "HTTPS p99",
        kind: "https",
        field: "p99_us",
        unit: "µs",
        better: Better::Lower,
    },
    Figure {
        label: "HTTPS req/s per proxy core",
        kind: "https",
        field: "rps_per_core",
        unit: "",
        better: Better::Higher,
    },
    Figure {
        label: "WS echo msgs/s",
        kind: "ws",
        field: "msgs_per_s",
        unit: "",
        better: Better::Higher,
    },
    Figure {
        label: "WS msgs/s per proxy core",
        kind: "ws",
        field: "msgs_per_core",
        unit: "",
        better: Better::Higher,
    },
    Figure {
        label: "WS RTT p50",
        kind: "ws",
        field: "p50_us",
        unit: "µs",
        better: Better::Lower,
    },
    Figure {
        label: "WS RTT p99",
        kind: "ws",
        field: "p99_us",
        unit: "µs",
        better: Better::Lower,
    },
    Figure {
        label: "idle ws tunnel",
        kind: "idle-ws",
        field: "kib_per_tunnel",
        unit: "KiB",
        better: Better::Lower,
    },
    Figure {
        label: "idle wss tunnel",
        kind: "idle-wss",
        field: "kib_per_tunnel",
        unit: "KiB",
        better: Better::Lower,
    },
];

fn fmt_num(v: f64, unit: &str) -> String {
    match unit {
        "µs" if v >= 10_000.0 => format!("{:.1} ms", v / 1000.0),
        "µs" => format!("{v:.0} µs"),
        "KiB" => format!("{v:.1} KiB"),
        _ if v >= 1000.0 => format!("{:.1}k", v / 1000.0),
        _ => format!("{v:.0}"),
    }
}

impl Report {
    /// The row for a figure: for load runs, the best round (highest throughput); else the last one.
    fn get(&self, kind: &str, target: &str) -> Option<&Value> {
        let mut rows = self
            .rows
            .iter()
            .filter(|r| r["kind"] == kind && r["target"] == target);
        match throughput_field(kind) {
            Some(f) => rows.max_by(|a, b| {
                a[f].as_f64()
                    .unwrap_or(0.0)
                    .total_cmp(&b[f].as_f64().unwrap_or(0.0))
            }),
            None => rows.next_back(),
        }
    }

    /// `min–max` of a load figure's throughput over the rounds, when there was more than one.
    fn spread(&self, kind: &str, target: &str) -> Option<(f64, f64)> {
        let f = throughput_field(kind)?;
        let v: Vec<f64> = self
            .rows
            .iter()
            .filter(|r| r["kind"] == kind && r["target"] == target)
            .filter_map(|r| r[f].as_f64())
            .collect();
        (v.len() > 1).then(|| {
            (
                v.iter().cloned().fold(f64::MAX, f64::min),
                v.iter().cloned().fold(0.0, f64::max),
            )
        })
    }

    fn value(&self, f: &Figure, target: &str) -> Option<f64> {
        let row = self.get(f.kind, target)?;
        // Throughput per core of CPU the proxy itself used (its process tree, sampled mid-run).
        let per_core = |field: &str| {
            let cores = row.get("server_cores")?.as_f64().filter(|c| *c > 0.01)?;
            Some(row.get(field)?.as_f64()? / cores)
        };
        match f.field {
            "rps_per_core" => per_core("rps"),
            "msgs_per_core" => per_core("msgs_per_s"),
            field => row.get(field)?.as_f64(),
        }
    }

    fn hooks(&self) -> Vec<&Value> {
        self.rows.iter().filter(|r| r["kind"] == "hooks").collect()
    }

    fn markdown(&self, machine: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "## wasmgate vs nginx, HAProxy and Apache httpd\n");
        let _ = writeln!(s, "{}\n", machine.trim());
        let _ = writeln!(
            s,
            "Each cell: value, then its ratio to direct (`d`) and to nginx (`n`). For requests/s and msgs/s \
             higher is better; for latency and memory lower is better (a ratio below 1.00 beats the reference).\n"
        );
        let _ = write!(s, "| figure |");
        for (_, label) in TARGETS {
            let _ = write!(s, " {label} |");
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "|---|{}", "---|".repeat(TARGETS.len()));
        for f in &FIGURES {
            let _ = write!(s, "| {} |", f.label);
            let direct = self.value(f, "direct");
            let nginx = self.value(f, "nginx");
            for (t, _) in TARGETS {
                match self.value(f, t) {
                    None => {
                        let _ = write!(s, " — |");
                    }
                    Some(v) => {
                        let mut cell = fmt_num(v, f.unit);
                        if let Some(note) = self.note(f, t) {
                            cell.push_str(&note);
                        }
                        let mut ratios = Vec::new();
                        if let Some(d) = direct.filter(|d| *d > 0.0 && t != "direct") {
                            ratios.push(format!("{:.2}× d", v / d));
                        }
                        if let Some(n) = nginx.filter(|n| *n > 0.0 && t != "nginx") {
                            ratios.push(format!("{:.2}× n", v / n));
                        }
                        if ratios.is_empty() {
                            let _ = write!(s, " {cell} |");
                        } else {
                            let _ = write!(s, " {cell} ({}) |", ratios.join(", "));
                        }
                    }
                }
            }
            let _ = writeln!(s);
        }

        // Plugin hook cost: throughput of chains of 0, 1, 2 (seed) and 3 plugins, and the micro-benchmark.
        // (target, label, hook calls per request, hook-cost chain name). The headers plugin's response
        // edits are fixed, so the host applies them without a call: the seed chain makes two calls.
        let chains = [
            ("wasmgate", "none", 0, "none"),
            ("wasmgate-1", "token-auth", 1, "token-auth"),
            (
                "wasmgate-seed",
                "token-auth + headers (seed)",
                2,
                "token-auth+headers (seed)",
            ),
            (
                "wasmgate-3",
                "token-auth + headers + ip-allow",
                3,
                "token-auth+headers+ip-allow",
            ),
        ];
        let _ = writeln!(s, "\n### Plugin hook cost\n");
        let _ = writeln!(
            s,
            "HTTP through wasmgate with plugin chains of growing length (same wrk run shape, best round). \
             `proxy CPU/req` is the CPU wasmgate's process used during the run divided by the requests it \
             served; `extra` is that minus the no-plugin figure. The micro-benchmark times the same chain \
             calls in-process (no sockets, one thread).\n"
        );
        let _ = writeln!(s, "| chain | hook calls/req | HTTP req/s | vs no plugins | p99 | proxy CPU/req | extra CPU/req | micro-bench extra/req (1 / 2 threads) | micro-bench per hook (1 / 2 threads) |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        let cpu_per_req = |r: &Value| -> Option<f64> {
            let rps = r["rps"].as_f64().filter(|v| *v > 0.0)?;
            Some(r["server_cores"].as_f64()? / rps * 1e6)
        };
        let base_row = self.get("http", "wasmgate");
        let base = base_row.and_then(|r| r["rps"].as_f64());
        let base_cpu = base_row.and_then(cpu_per_req);
        let hooks = self.hooks();
        for (target, name, calls, micro_name) in chains {
            let Some(r) = self.get("http", target) else {
                continue;
            };
            let rps = r["rps"].as_f64().unwrap_or(0.0);
            let p99 = r["p99_us"].as_f64().unwrap_or(0.0);
            let vs = match base {
                Some(b) if b > 0.0 && rps > 0.0 => format!("{:+.1}%", (rps / b - 1.0) * 100.0),
                _ => "—".into(),
            };
            let cpu = cpu_per_req(r);
            let cpu_s = cpu.map_or("—".into(), |c| format!("{c:.1} µs"));
            let extra = match (cpu, base_cpu) {
                (Some(c), Some(b)) => format!("{:+.1} µs", c - b),
                _ => "—".into(),
            };
            // Micro-benchmark figures, one thread / two threads (the proxy's two workers).
            let micro = |threads: u64, field: &str| {
                hooks
                    .iter()
                    .find(|h| {
                        h["chain"] == micro_name && h["threads"].as_u64().unwrap_or(1) == threads
                    })
                    .and_then(|h| h[field].as_f64())
            };
            let both = |field: &str| match (micro(1, field), micro(2, field)) {
                (Some(a), Some(b)) => format!("{a:.1} / {b:.1} µs"),
                (Some(a), None) => format!("{a:.1} µs"),
                _ => "—".into(),
            };
            let mx = both("extra_us");
            let mh = if calls > 0 {
                both("per_hook_us")
            } else {
                "—".into()
            };
            let _ = writeln!(
                s,
                "| {name} | {calls} | {} | {vs} | {} | {cpu_s} | {extra} | {mx} | {mh} |",
                fmt_num(rps, ""),
                fmt_num(p99, "µs")
            );
        }
        if !hooks.is_empty() {
            let _ = writeln!(s, "\nMicro-benchmark, all chains (µs per request: mean, p50, p99; extra over the empty chain):\n");
            let _ = writeln!(
                s,
                "| chain | threads | hook calls | mean | p50 | p99 | extra | per hook |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
            for h in &hooks {
                let f = |k: &str| h[k].as_f64().unwrap_or(0.0);
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                    h["chain"].as_str().unwrap_or("?"),
                    h["threads"].as_u64().unwrap_or(1),
                    h["hooks"],
                    f("mean_us"),
                    f("p50_us"),
                    f("p99_us"),
                    f("extra_us"),
                    f("per_hook_us")
                );
            }
        }

        // The issue's targets.
        let _ = writeln!(s, "\n### Targets (issue 6)\n");
        let _ = writeln!(s, "| target | measured | met |");
        let _ = writeln!(s, "|---|---|---|");
        let r = |k: &str, t: &str, f: &str| self.get(k, t).and_then(|r| r[f].as_f64());
        if let (Some(w), Some(n)) = (r("http", "wasmgate", "rps"), r("http", "nginx", "rps")) {
            let (wp, np) = (
                r("http", "wasmgate", "p99_us").unwrap_or(0.0),
                r("http", "nginx", "p99_us").unwrap_or(0.0),
            );
            let ok = w / n >= 1.15 && wp <= np;
            let _ = writeln!(
                s,
                "| HTTP req/s ≥ 1.15× nginx, p99 no worse | {:.2}× nginx; p99 {} vs {} | {} |",
                w / n,
                fmt_num(wp, "µs"),
                fmt_num(np, "µs"),
                yes(ok)
            );
        }
        // Issue 24: proxy CPU per request (its cores over its requests/s) at or below both peers'.
        let cpu_per_req = |t: &str| {
            Some(r("http", t, "server_cores")? / r("http", t, "rps").filter(|v| *v > 0.0)? * 1e6)
        };
        if let (Some(w), Some(n), Some(h)) = (
            cpu_per_req("wasmgate"),
            cpu_per_req("nginx"),
            cpu_per_req("haproxy"),
        ) {
            let _ = writeln!(
                s,
                "| proxy CPU per HTTP request ≤ nginx's and HAProxy's | {w:.1} µs vs nginx {n:.1}, HAProxy {h:.1} | {} |",
                yes(w <= n && w <= h)
            );
        }
        if let (Some(w), Some(p)) = (
            r("http", "wasmgate", "rps"),
            r("http", "wasmgate-seed", "rps"),
        ) {
            let cost = (1.0 - p / w) * 100.0;
            let cpu = |t: &str| {
                self.get("http", t).and_then(|r| {
                    Some(r["server_cores"].as_f64()? / r["rps"].as_f64().filter(|v| *v > 0.0)?)
                })
            };
            let cpu_note = match (cpu("wasmgate"), cpu("wasmgate-seed")) {
                (Some(a), Some(b)) if a > 0.0 => {
                    format!("; proxy CPU per request +{:.0}%", (b / a - 1.0) * 100.0)
                }
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "| seed plugin chain costs ≤ 5% | {cost:.1}% of req/s{cpu_note} | {} |",
                yes(cost <= 5.0)
            );
        }
        if let (Some(w), Some(n)) = (
            r("ws", "wasmgate", "msgs_per_s"),
            r("ws", "nginx", "msgs_per_s"),
        ) {
            let _ = writeln!(
                s,
                "| WS echo ≥ 1.1× nginx | {:.2}× nginx | {} |",
                w / n,
                yes(w / n >= 1.1)
            );
        }
        if let Some(k) = r("idle-wss", "wasmgate", "kib_per_tunnel") {
            let _ = writeln!(
                s,
                "| ≤ 32 KiB per idle wss tunnel | {k:.1} KiB | {} |",
                yes(k <= 32.0)
            );
        }

        // Anything worth knowing about the runs themselves.
        let mut notes = Vec::new();
        let mut spreads = Vec::new();
        for kind in ["http", "https", "ws"] {
            for (t, _) in TARGETS
                .iter()
                .chain([("wasmgate-1", ""), ("wasmgate-3", "")].iter())
            {
                if let Some((lo, hi)) = self.spread(kind, t) {
                    spreads.push(format!(
                        "{kind} {t} {}–{} ({:.0}%)",
                        fmt_num(lo, ""),
                        fmt_num(hi, ""),
                        (hi / lo - 1.0) * 100.0
                    ));
                }
            }
        }
        if !spreads.is_empty() {
            notes.push(format!(
                "Spread of throughput over the rounds (best kept): {}",
                spreads.join("; ")
            ));
        }
        for row in &self.rows {
            let t = row["target"].as_str().unwrap_or("");
            let k = row["kind"].as_str().unwrap_or("");
            if row["errors"].as_u64().unwrap_or(0) > 0 || row["non2xx"].as_u64().unwrap_or(0) > 0 {
                notes.push(format!(
                    "{k} {t} round {}: {} socket errors, {} non-2xx",
                    row["round"], row["errors"], row["non2xx"]
                ));
            }
            if let Some(f) = row["foreign_pct"].as_f64().filter(|f| *f > 5.0) {
                if f <= 100.0 {
                    notes.push(format!("{k} {t} round {}: {f:.0}% of the machine's CPU was busy with other processes during the run", row["round"]));
                } else {
                    // Older runs counted children's time collected on reaping (a whole lifetime at once).
                    notes.push(format!("{k} {t} round {}: other processes were busy during the run (amount not measurable)", row["round"]));
                }
            }
            if let (Some(o), Some(w)) = (row["opened"].as_u64(), row["wanted"].as_u64()) {
                notes.push(format!(
                    "{k} {t}: {o} of {w} tunnels opened; {} processes",
                    row["procs"]
                ));
            }
        }
        if !notes.is_empty() {
            let _ = writeln!(s, "\nRun notes:\n");
            for n in notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    /// Marks a cell whose figure covers fewer tunnels than asked for.
    fn note(&self, f: &Figure, target: &str) -> Option<String> {
        let row = self.get(f.kind, target)?;
        let (o, w) = (row["opened"].as_u64()?, row["wanted"].as_u64()?);
        (o < w).then(|| format!(" [{o}/{w} open]"))
    }

    /// Grouped bars: each figure as a ratio to nginx, one bar per target.
    fn svg(&self, machine: &str) -> String {
        let groups: Vec<&Figure> = FIGURES
            .iter()
            .filter(|f| {
                matches!(
                    f.field,
                    "rps" | "msgs_per_s" | "rps_per_core" | "kib_per_tunnel"
                ) || f.label == "HTTP p99"
                    || f.label == "WS RTT p99"
            })
            .collect();
        let colors = [
            "#8c8c8c", "#c0392b", "#27ae60", "#d68910", "#2471a3", "#7d3c98",
        ];
        let (w, h) = (1300.0, 540.0);
        let (left, top, bottom) = (60.0, 70.0, 120.0);
        let plot_h = h - top - bottom;
        let group_w = (w - left - 20.0) / groups.len() as f64;
        let bar_w = (group_w - 20.0) / TARGETS.len() as f64;
        let mut vmax: f64 = 1.5;
        for f in &groups {
            if let Some(n) = self.value(f, "nginx").filter(|n| *n > 0.0) {
                for (t, _) in TARGETS {
                    if let Some(v) = self.value(f, t) {
                        vmax = vmax.max(v / n);
                    }
                }
            }
        }
        let vmax = vmax.min(3.0).ceil();
        let y = |r: f64| top + plot_h - (r.min(vmax) / vmax) * plot_h;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"##
        );
        let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
        let _ = writeln!(
            s,
            r##"<text x="{left}" y="24" font-size="16" font-weight="bold">wasmgate vs nginx, HAProxy and Apache httpd — ratio to nginx (same run)</text>"##
        );
        let first = machine
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .replace('&', "&amp;")
            .replace('<', "&lt;");
        let _ = writeln!(
            s,
            r##"<text x="{left}" y="44" fill="#555">{}</text>"##,
            first.trim_start_matches(['-', ' ', '*'])
        );
        // Axis and grid.
        let mut r = 0.0;
        while r <= vmax + 1e-9 {
            let yy = y(r);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="{}" />"##,
                w - 20.0,
                if (r - 1.0).abs() < 1e-9 {
                    "#333"
                } else {
                    "#ddd"
                }
            );
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{:.1}" text-anchor="end">{r:.1}×</text>"##,
                left - 6.0,
                yy + 4.0
            );
            r += 0.5;
        }
        for (gi, f) in groups.iter().enumerate() {
            let gx = left + gi as f64 * group_w + 10.0;
            let nginx = self.value(f, "nginx").filter(|n| *n > 0.0);
            for (ti, (t, _)) in TARGETS.iter().enumerate() {
                let (Some(v), Some(n)) = (self.value(f, t), nginx) else {
                    continue;
                };
                let ratio = v / n;
                let x = gx + ti as f64 * bar_w;
                let top_y = y(ratio);
                let _ = writeln!(
                    s,
                    r##"<rect x="{x:.1}" y="{top_y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: {} ({ratio:.2}× nginx)</title></rect>"##,
                    bar_w - 2.0,
                    y(0.0) - top_y,
                    colors[ti],
                    t,
                    f.label,
                    fmt_num(v, f.unit)
                );
                let _ = writeln!(
                    s,
                    r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{ratio:.2}</text>"##,
                    x + (bar_w - 2.0) / 2.0,
                    top_y - 3.0
                );
            }
            let cx = gx + (group_w - 20.0) / 2.0;
            // Long labels go on two lines, split at the space nearest the middle.
            let (l1, l2) = match f.label.len() > 14 {
                true => {
                    let mid = f.label.len() / 2;
                    let cut = f
                        .label
                        .match_indices(' ')
                        .map(|(i, _)| i)
                        .min_by_key(|i| i.abs_diff(mid))
                        .unwrap_or(f.label.len());
                    (&f.label[..cut], f.label[cut..].trim())
                }
                false => (f.label, ""),
            };
            let _ = writeln!(
                s,
                r##"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-weight="bold">{l1}</text>"##,
                y(0.0) + 16.0
            );
            if !l2.is_empty() {
                let _ = writeln!(
                    s,
                    r##"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-weight="bold">{l2}</text>"##,
                    y(0.0) + 30.0
                );
            }
            let hint = if f.better == Better::Higher {
                "higher is better"
            } else {
                "lower is better"
            };
            let _ = writeln!(
                s,
                r##"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" fill="#555">{hint}</text>"##,
                y(0.0) + 46.0
            );
        }
        // Legend.
        for (ti, (_, label)) in TARGETS.iter().enumerate() {
            let x = left + ti as f64 * 190.0;
            let ly = h - 40.0;
            let _ = writeln!(
                s,
                r##"<rect x="{x}" y="{}" width="14" height="14" fill="{}"/>"##,
                ly - 11.0,
                colors[ti]
            );
            let _ = writeln!(s, r##"<text x="{}" y="{ly}">{label}</text>"##, x + 20.0);
        }
        let _ = writeln!(s, "</svg>");
        s
    }
}

fn throughput_field(kind: &str) -> Option<&'static str> {
    match kind {
        "http" | "https" => Some("rps"),
        "ws" | "wss" => Some("msgs_per_s"),
        _ => None,
    }
}

fn yes(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**no**"
    }
}
