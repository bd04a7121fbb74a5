//! The `cachalot` binary: the commands, their output and exit codes.
//! anyhow lives here (and in the demo, a command of this binary) only.

mod demo;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

use cachalot::backend::Source;
use cachalot::cli::{
    CacheCommand, Cli, Command, CsiArgs, DoctorArgs, LogFormat, MountArgs, MounterArgs,
    SessionsArgs, WarmArgs,
};
use cachalot::mount::{self, daemon};

fn init_logging(format: LogFormat) {
    // Children (background mounts, CSI mount children) log alike.
    std::env::set_var("CACHALOT_LOG_FORMAT", format.as_str());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // One JSON object per line, the event's fields flattened next to
        // `level`, `target` and `timestamp`, for log pipelines.
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

fn run_mount(args: MountArgs, source: Source) -> Result<()> {
    std::fs::create_dir_all(&args.cache_dir)
        .with_context(|| format!("creating cache directory {}", args.cache_dir.display()))?;
    if !args.foreground {
        let log_file = args
            .log_file
            .clone()
            .unwrap_or_else(|| args.cache_dir.join("cachalot-mount.log"));
        let forwarded: Vec<String> = std::env::args().skip(1).collect();
        let pid = daemon::spawn_background(&forwarded, &log_file)?;
        println!(
            "mounted {} at {} (daemon pid {pid}, log {})",
            source,
            args.mountpoint.display(),
            log_file.display()
        );
        return Ok(());
    }
    let metrics_addr = args.metrics_addr;
    mount::hold_stop_signals()?;
    let mounted = mount::start(args.options(source))?;
    serve_metrics(metrics_addr)?;
    daemon::report_ready();
    Ok(mounted.run_until_signal()?)
}

fn run_cache(cmd: CacheCommand) -> Result<()> {
    match cmd {
        CacheCommand::Stats { cache_dir, json } => {
            let s = cachalot::cache::summarize(&cache_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                let quota = s
                    .quota_bytes
                    .map(|q| format!("{} MiB", q >> 20))
                    .unwrap_or_else(|| "unknown".into());
                let c = s.counters;
                let lookups = (c.hits + c.misses).max(1);
                println!("cache directory  {}", s.dir);
                println!("size             {} MiB ({} bytes)", s.bytes >> 20, s.bytes);
                println!("pages            {}", s.pages);
                println!("quota            {quota}");
                println!(
                    "hits / misses    {} / {} ({:.1}% hit rate)",
                    c.hits,
                    c.misses,
                    100.0 * c.hits as f64 / lookups as f64
                );
                println!("  from memory    {}", c.memory_hits);
                println!("evictions        {}", c.evictions);
                println!("corrupt pages    {}", c.corrupt_pages);
                println!("write errors     {}", c.write_errors);
                println!("skipped (full)   {}", c.skipped_pages);
                println!("reporting mounts {}", s.processes_reporting);
                if s.legacy_bytes > 0 {
                    println!(
                        "old layout       {} MiB (removed by the next mount)",
                        s.legacy_bytes >> 20
                    );
                }
                if !s.volumes.is_empty() {
                    println!("volumes");
                    for v in &s.volumes {
                        println!(
                            "  {}  {:>8} MiB {:>8} pages  {}",
                            v.tag,
                            v.bytes >> 20,
                            v.pages,
                            v.name
                        );
                    }
                }
            }
            Ok(())
        }
        CacheCommand::Clear { cache_dir } => {
            let removed = cachalot::cache::clear(&cache_dir)
                .with_context(|| format!("clearing {}", cache_dir.display()))?;
            println!("removed {removed} pages from {}", cache_dir.display());
            Ok(())
        }
    }
}

fn serve_metrics(addr: Option<std::net::SocketAddr>) -> Result<()> {
    if let Some(addr) = addr {
        cachalot::metrics::serve_in_background(addr)?;
    }
    Ok(())
}

fn run_csi(args: CsiArgs) -> Result<()> {
    serve_metrics(args.metrics_addr)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cachalot-csi")
        .build()
        .context("starting the async runtime")?;
    Ok(runtime.block_on(cachalot::csi::server::run(
        cachalot::csi::server::CsiConfig {
            endpoint: args.endpoint,
            node_id: args.node_id,
            controller: args.controller,
            node: args.node,
            cache_dir: args.cache_dir,
            state_dir: args.state_dir,
            mount_timeout: args.mount_timeout,
            mounter_socket: args.mounter_socket,
        },
    ))?)
}

fn run_mounter(args: MounterArgs) -> Result<()> {
    cachalot::mounter::run(cachalot::mounter::MounterConfig {
        socket: args.socket,
        state_dir: args.state_dir,
        cache_dir: args.cache_dir,
        cache_size: args.cache_size,
        takeover_timeout: args.takeover_timeout,
        idle_after_handover: args.idle_after_handover,
        metrics_addr: args.metrics_addr,
    })?;
    Ok(())
}

fn run_warm(args: WarmArgs) -> Result<()> {
    use cachalot::warm::{progress_printer, warm, WarmOptions};
    let opts = WarmOptions {
        paths: args.paths,
        jobs: usize::from(args.jobs),
        include: args.include,
        exclude: args.exclude,
        cancel: Default::default(),
    };
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let report = warm(&opts, progress_printer(terminal))?;
    println!(
        "warmed {} files ({} MiB), {} already cached, {} failed",
        report.files,
        report.bytes >> 20,
        report.skipped,
        report.failed.len()
    );
    if report.failed.is_empty() {
        return Ok(());
    }
    for (path, why) in &report.failed {
        eprintln!("could not load {}: {why}", path.display());
    }
    anyhow::bail!(
        "{} of {} files could not be loaded",
        report.failed.len(),
        report.files
    )
}

fn run_sessions(args: SessionsArgs) -> Result<()> {
    let client =
        cachalot::mounter::MounterClient::new(&args.socket, std::time::Duration::from_secs(10));
    let list = client.list()?;
    if args.quiet {
        // A probe: in a rolling update the socket may still be answered by
        // the previous version's mounter, which is not this container's.
        if list.mounter_version != cachalot::csi::DRIVER_VERSION {
            anyhow::bail!(
                "the mounter answering on {} is cachalot {}, not {}",
                args.socket.display(),
                list.mounter_version,
                cachalot::csi::DRIVER_VERSION
            );
        }
        return Ok(());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "mounter pid {} (cachalot {}), {} session(s)",
        list.mounter_pid,
        list.mounter_version,
        list.sessions.len()
    );
    if list.sessions.is_empty() {
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    println!(
        "{:<28} {:<32} {:<8} {:<10} {:<40} STAGING",
        "VOLUME (PV)", "CLAIM", "AGE", "HEALTH", "SOURCE"
    );
    for s in &list.sessions {
        let age = std::time::Duration::from_secs(now.saturating_sub(s.started_unix));
        let age =
            humantime::format_duration(std::time::Duration::from_secs(age.as_secs() / 60 * 60))
                .to_string();
        println!(
            "{:<28} {:<32} {:<8} {:<10} {:<40} {}",
            s.names.pv.as_deref().unwrap_or(&s.volume_id),
            s.names.claim(),
            if age.is_empty() { "<1m".into() } else { age },
            s.health,
            s.source,
            s.staging.display()
        );
    }
    Ok(())
}

/// A usage error of `cachalot mount` (exit 2), with that command's usage line.
fn mount_usage_error(kind: ErrorKind, msg: String) -> ! {
    usage_error("mount", kind, msg)
}

/// A usage error of a subcommand (exit 2), with its usage line.
fn usage_error(command: &str, kind: ErrorKind, msg: String) -> ! {
    let mut cli = Cli::command();
    cli.build();
    match cli.find_subcommand_mut(command) {
        Some(sub) => sub.error(kind, msg).exit(),
        None => cli.error(kind, msg).exit(),
    }
}

/// `cachalot doctor`: one line per check as it ends (or JSON at the end);
/// fails when a check failed.
fn run_doctor(args: DoctorArgs) -> Result<()> {
    use std::io::Write;
    let request = args
        .request()
        .unwrap_or_else(|msg| usage_error("doctor", ErrorKind::ValueValidation, msg));
    let json = args.json;
    let mut print = |check: &cachalot::doctor::Check| {
        if !json {
            println!("{check}");
            let _ = std::io::stdout().flush();
        }
    };
    let checks = cachalot::doctor::run_blocking(&request, &mut print)
        .context("starting the async runtime")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    }
    let failed = checks
        .iter()
        .filter(|c| c.status == cachalot::doctor::Status::Fail)
        .count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} checks failed", checks.len());
    }
    Ok(())
}

/// Two malloc arenas, not eight per core: with many threads each freeing
/// blocks another allocated, glibc kept freed memory in every arena, and a
/// mount holding a 64 MiB memory tier grew to 180-270 MiB resident. Pages
/// themselves live in `cachalot::buffers` (mappings of their own, reused).
/// And a fixed mmap threshold of 4 MiB: glibc's adaptive one rose up to
/// 32 MiB once a big block was freed, after which each FUSE worker's 16 MiB
/// request buffer came from an arena, zeroed there and so resident whole
/// (16 MiB per mount at start, with no request read yet).
fn keep_resident_memory_close_to_use() {
    // SAFETY: mallopt only changes the allocator's parameters.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

fn main() -> ExitCode {
    keep_resident_memory_close_to_use();
    let cli = Cli::parse();
    // SOURCE is parsed here, not by clap, whose errors would echo it raw
    // (credentials included); ours show it redacted.
    let source = match &cli.command {
        Command::Mount(args) => {
            let source = args
                .source()
                .unwrap_or_else(|msg| mount_usage_error(ErrorKind::ValueValidation, msg));
            if let Err(msg) = args.validate(&source) {
                mount_usage_error(ErrorKind::ArgumentConflict, msg);
            }
            Some(source)
        }
        Command::Cache(
            CacheCommand::Stats { cache_dir, .. } | CacheCommand::Clear { cache_dir },
        ) => {
            if let Some(why) = cachalot::cache::not_a_cache(cache_dir) {
                let mut cli = Cli::command();
                cli.build();
                cli.error(ErrorKind::ValueValidation, why).exit();
            }
            None
        }
        _ => None,
    };
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Mount(args) => run_mount(args, source.expect("parsed above")),
        Command::Demo(args) => demo::run(args),
        Command::Cache(cmd) => run_cache(cmd),
        Command::Csi(args) => run_csi(args),
        Command::Mounter(args) => run_mounter(args),
        Command::MounterIdle {
            parent_death_signal,
        } => cachalot::mounter::idle::run(parent_death_signal).context("idling after a handover"),
        Command::Sessions(args) => run_sessions(args),
        Command::Warm(args) => run_warm(args),
        Command::Doctor(args) => run_doctor(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
