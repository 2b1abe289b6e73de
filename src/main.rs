//! `helios-repl`: the command line. Parses arguments, loads the job file, starts the
//! runtime; everything else lives in the library.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use helios_repl::control::job_runner::{self, Desired, JobStats};
use helios_repl::control::job_spec::JobSpec;
use helios_repl::dataflow::host::DataflowHost;
use helios_repl::embedded::demo::{self, DemoOptions, DemoOutcome};
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "helios-repl",
    version,
    about = "Per-tenant PostgreSQL replication through Timely dataflows"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one job in the foreground until Ctrl-C.
    Run {
        /// The job spec (TOML), e.g. dataflows/tenants_3_7.toml.
        #[arg(long)]
        job: PathBuf,
        /// Timely worker threads.
        #[arg(long, default_value_t = job_runner::DEFAULT_WORKERS)]
        workers: usize,
        /// Seconds between progress lines (0: none).
        #[arg(long, default_value_t = 5)]
        progress_secs: u64,
    },
    /// Start throwaway source and target clusters, replicate a multi-tenant workload,
    /// verify the target and print a summary.
    Demo {
        /// Where the throwaway clusters live.
        #[arg(long, default_value = ".helios/demo")]
        dir: PathBuf,
        /// Seconds of mixed insert/update/delete load.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Concurrent writer connections.
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// Timely worker threads.
        #[arg(long, default_value_t = job_runner::DEFAULT_WORKERS)]
        workers: usize,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HELIOS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    match cli.command {
        Command::Run {
            job,
            workers,
            progress_secs,
        } => {
            let text = std::fs::read_to_string(&job)
                .with_context(|| format!("read job file {}", job.display()))?;
            let spec = JobSpec::from_toml_str(&text)
                .with_context(|| format!("job file {}", job.display()))?;
            runtime.block_on(async move {
                let (stop_tx, stop_rx) = watch::channel(Desired::Run);
                tokio::spawn(stop_on_signal(move || {
                    let _ = stop_tx.send(Desired::Stop);
                }));
                let host = DataflowHost::start(workers, tokio::runtime::Handle::current())
                    .map_err(anyhow::Error::msg)?;
                let stats = Arc::new(JobStats::new(spec.sinks.len()));
                let every = (progress_secs > 0).then(|| Duration::from_secs(progress_secs));
                job_runner::run_job(spec, &host, stats, stop_rx, every).await?;
                host.shutdown().map_err(anyhow::Error::msg)
            })?;
            Ok(())
        }
        Command::Demo {
            dir,
            seconds,
            writers,
            workers,
        } => {
            let options = DemoOptions {
                dir,
                load: Duration::from_secs(seconds),
                writers,
                workers,
            };
            let outcome = runtime.block_on(async move {
                let (stop_tx, stop_rx) = watch::channel(false);
                tokio::spawn(stop_on_signal(move || {
                    let _ = stop_tx.send(true);
                }));
                demo::run_demo(options, stop_rx).await
            })?;
            match outcome {
                DemoOutcome::Passed => Ok(()),
                DemoOutcome::Interrupted => std::process::exit(130),
                DemoOutcome::Failed => anyhow::bail!("demo: the target does not match the source"),
            }
        }
    }
}

/// Turns Ctrl-C / SIGTERM into a call of `stop`; a second one exits at once.
async fn stop_on_signal(stop: impl FnOnce()) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("stopping (press Ctrl-C again to exit at once)");
    stop();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    std::process::exit(130);
}
