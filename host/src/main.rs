//! The `wasmgate` command line: `run`, `check`, `demo`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::EnvFilter;

use wasmgate_config::{AccessLogFormat, Config, LogFormat};
use wasmgate_control::Server;

// The request path allocates small, short-lived objects on two or more threads: mimalloc's per-thread
// free lists cost less than glibc's arenas there (bench/README.md has the figures).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "wasmgate",
    version,
    about = "A reverse proxy whose policy lives in WebAssembly components"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configuration; reload it on SIGHUP; drain on SIGTERM/Ctrl-C.
    Run {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration as `run` would (files, certificates, plugins) and print its sites and
    /// routes; exit non-zero with every error found.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Check only this tenant directory (e.g. a customer's upload, before it lands) against the
        /// operator's config, its limits and grants, and the tenants now served — as a reload would.
        #[arg(long)]
        tenant: Option<PathBuf>,
        /// The tenant's name (default: the directory's name).
        #[arg(long, requires = "tenant")]
        name: Option<String>,
    },
    /// Run the seed configuration (examples/seed) in front of a built-in chat backend, with a
    /// self-signed certificate, and print what to try.
    Demo {
        /// Where the certificate and the generated config go.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Address to listen on (the backend always stays on loopback).
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
        #[arg(long, default_value_t = 8443)]
        https_port: u16,
    },
    /// Write a self-signed certificate and key (`OUT.crt`, `OUT.key`) for trying a config out.
    Cert {
        /// Host names (and IP addresses) the certificate is for.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Path without extension, e.g. `certs/chat`.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` reads its config first: it says how to log.
    let (format, access, loaded) = match &cli.command {
        Command::Run { config } => match Config::load(config) {
            Ok(c) => (c.log_format, c.access_log_format, Some(c)),
            Err(errors) => {
                eprintln!("{errors}\n{} error(s); not started", errors.0.len());
                return ExitCode::FAILURE;
            }
        },
        _ => (LogFormat::Text, AccessLogFormat::Text, None),
    };
    // Only a serving proxy batches its lines; `check` and friends interleave them with their output.
    init_logging(format, access, matches!(cli.command, Command::Run { .. }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match cli.command {
        Command::Run { config } => rt.block_on(run(config, loaded.expect("loaded above"))),
        Command::Check {
            config,
            tenant: Some(dir),
            name,
        } => rt.block_on(check_tenant(config, dir, name)),
        Command::Check { config, .. } => rt.block_on(check(config)),
        Command::Demo {
            data_dir,
            bind,
            http_port,
            https_port,
        } => {
            let data_dir = data_dir.unwrap_or_else(wasmgate_demo::default_data_dir);
            rt.block_on(demo(wasmgate_demo::DemoOptions {
                data_dir,
                bind,
                http_port,
                https_port,
            }))
        }
        Command::Cert { hosts, out } => wasmgate_demo::write_self_signed(&out, &hosts)
            .map(|(crt, key)| {
                println!("wrote {} and {}", crt.display(), key.display());
                ExitCode::SUCCESS
            })
            .map_err(|e| anyhow::anyhow!(e)),
    };
    wasmgate_observe::log_sink::flush();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr (batched, see [`wasmgate_observe::log_sink`]), as text or as one JSON object per line,
/// access lines as `access` says; `RUST_LOG` filters (default `info`).
fn init_logging(format: LogFormat, access: AccessLogFormat, batched: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = if batched {
        wasmgate_observe::log::set_output(access, wasmgate_observe::log_sink::write_line);
        BoxMakeWriter::new(wasmgate_observe::log_sink::BufferedStderr)
    } else {
        BoxMakeWriter::new(std::io::stderr)
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // A panic message goes straight to stderr: let the lines before it go first.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        wasmgate_observe::log_sink::flush();
        report(info)
    }));
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

async fn check(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{} error(s); the configuration was not accepted",
                errors.0.len()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let builders = wasmgate_runtime::Builders::new(config.cache_dir.clone(), Default::default());
    let build = tokio::task::spawn_blocking(move || {
        wasmgate_runtime::Runtime::build(config, &builders, None)
    })
    .await?;
    match build {
        Ok(rt) if !rt.tenant_errors.is_empty() => {
            print!("{}", rt.describe());
            for (tenant, why) in &rt.tenant_errors {
                eprintln!("tenant `{tenant}` refused:\n{why}");
            }
            eprintln!("{} tenant(s) refused", rt.tenant_errors.len());
            Ok(ExitCode::FAILURE)
        }
        Ok(rt) => {
            print!("{}", rt.describe());
            // Lines of credential files that plugins refused: the rest applies, so the config is
            // accepted, but each one is worth fixing (it grants nothing).
            let mut refused = 0;
            for site in &rt.sites {
                let chains =
                    std::iter::once(&site.plugins).chain(site.routes.iter().map(|r| &r.plugins));
                for p in chains.flat_map(|c| c.plugins()) {
                    for problem in &p.problems {
                        eprintln!(
                            "warning: plugin `{}` of site `{}`: {problem} (line refused)",
                            p.name, site.name
                        );
                    }
                    refused += p.problems.len() + p.more_problems;
                }
            }
            if refused > 0 {
                println!("configuration OK, {refused} line(s) refused (see above)");
            } else {
                println!("configuration OK");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{} error(s); the configuration was not accepted",
                errors.0.len()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `check --tenant DIR`: one tenant's directory, judged exactly as a reload would judge it.
async fn check_tenant(
    path: PathBuf,
    dir: PathBuf,
    name: Option<String>,
) -> anyhow::Result<ExitCode> {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{} error(s) in the operator's configuration; no tenant can be checked",
                errors.0.len()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let name = match name.or_else(|| Some(dir.file_name()?.to_string_lossy().into_owned())) {
        Some(n) if wasmgate_config::check_name(&n).is_ok() => n,
        other => {
            eprintln!(
                "{}: not a tenant name; pass --name",
                wasmgate_core::text::escaped(other.as_deref().unwrap_or(""))
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let builders = wasmgate_runtime::Builders::new(config.cache_dir.clone(), Default::default());
    let (n, d) = (name.clone(), dir.clone());
    let build = tokio::task::spawn_blocking(move || {
        wasmgate_runtime::Runtime::check_tenant(config, &builders, &n, &d)
    })
    .await?;
    match build {
        Ok(rt) => match rt.tenant_errors.get(&name) {
            Some(why) => {
                // The part after the reasons ("its previous version keeps serving") is about a
                // reload; for a check only the reasons matter.
                for line in why.lines().filter(|l| !l.starts_with('(')) {
                    eprintln!("{line}");
                }
                eprintln!("tenant `{name}` ({}) would be refused", dir.display());
                Ok(ExitCode::FAILURE)
            }
            None => {
                if let Some(t) = rt.tenant(&name) {
                    for bs in &t.sites {
                        println!(
                            "  {}  hosts: {}  listeners: {}",
                            bs.cfg.name,
                            bs.cfg.hosts.join(", "),
                            bs.cfg.listeners.join(", ")
                        );
                    }
                }
                println!("tenant `{name}` OK");
                Ok(ExitCode::SUCCESS)
            }
        },
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{} error(s) in the operator's configuration; no tenant can be checked",
                errors.0.len()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn demo(opts: wasmgate_demo::DemoOptions) -> anyhow::Result<ExitCode> {
    let _dir =
        wasmgate_demo::lock_data_dir(&opts.data_dir, wasmgate_control::handover::is_successor())
            .map_err(|e| anyhow::anyhow!(e))?;
    let backend = wasmgate_demo::ChatBackend::start(wasmgate_demo::DEMO_TOKEN)
        .await
        .context("starting the chat backend")?;
    let path = wasmgate_demo::prepare(&opts, backend.addr).map_err(|e| anyhow::anyhow!(e))?;
    let config = Config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let server = Server::start(config).await.context("starting wasmgate")?;
    println!("{}", wasmgate_demo::instructions(&opts, &path));
    serve(server, path).await
}

async fn run(path: PathBuf, config: Config) -> anyhow::Result<ExitCode> {
    let server = Server::start(config).await.context("starting wasmgate")?;
    serve(server, path).await
}

/// Serve until SIGTERM/Ctrl-C (drain), reloading on file changes and SIGHUP.
async fn serve(server: Server, path: PathBuf) -> anyhow::Result<ExitCode> {
    for (name, addr) in server.addrs() {
        println!("listening {name} {addr}");
    }
    let reloader = server.reloader(&path);
    if !server.runtime().config.watch {
        tracing::info!("file watching is off (watch = false); reload with SIGHUP");
    } else if let Err(e) = reloader.clone().watch().await {
        tracing::warn!("file watching is unavailable ({e}); reload with SIGHUP");
    }
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    wasmgate_control::handover::notify_systemd_ready();
    wasmgate_control::handover::release_predecessor();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = quit.recv() => {
                tracing::info!("SIGQUIT: handing over; draining");
                break;
            }
            _ = hup.recv() => { reloader.reload_and_log("SIGHUP").await; }
            _ = usr2.recv() => match server.spawn_successor() {
                Ok(pid) => tracing::info!(successor = pid, "SIGUSR2: started a successor with the listening sockets"),
                Err(e) => tracing::error!("SIGUSR2: cannot start a successor: {e}"),
            },
        }
    }
    tracing::info!("draining");
    server.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
