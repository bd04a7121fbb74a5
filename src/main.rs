use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};

use cachalot::backend::Identity;
use cachalot::cli::{Cli, Command, MountArgs};
use cachalot::mount::{self, daemon, MountOptions};

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run_mount(args: MountArgs) -> Result<()> {
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
            args.source,
            args.mountpoint.display(),
            log_file.display()
        );
        return Ok(());
    }
    let identity = match (args.uid, args.gid) {
        (Some(uid), Some(gid)) => Some(Identity { uid, gid }),
        _ => None,
    };
    let mounted = mount::start(MountOptions {
        source: args.source,
        mountpoint: args.mountpoint,
        cache_dir: args.cache_dir,
        cache_size: args.cache_size,
        page_size: args.page_size,
        metadata_ttl: args.metadata_ttl,
        read_only: args.read_only,
        allow_other: args.allow_other,
        identity,
        s3: args.s3.to_options(),
        skip_preflight: args.skip_preflight,
    })?;
    daemon::report_ready();
    mounted.run_until_signal()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Mount(args) = &cli.command {
        if let Err(msg) = args.validate() {
            Cli::command()
                .error(clap::error::ErrorKind::ArgumentConflict, msg)
                .exit();
        }
    }
    init_logging();
    let result = match cli.command {
        Command::Mount(args) => run_mount(args),
        Command::Demo(args) => cachalot::demo::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
