//! `helios-repl`: the command line. Parses arguments, loads the job file, starts the
//! runtime; everything else lives in the library.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use helios_repl::api::{self, client, client::ApiClient};
use helios_repl::control::access_subscriber;
use helios_repl::control::job_control::{ExportRequest, ExportState, JobStatus};
use helios_repl::control::job_manager::JobManager;
use helios_repl::control::job_runner::{self, Desired, JobStats};
use helios_repl::control::job_spec::JobSpec;
use helios_repl::control::metadata::MetadataStore;
use helios_repl::dataflow::host::{DataflowHost, WorkerPlacement};
use helios_repl::embedded::demo::{self, DemoOptions, DemoOutcome};
use helios_repl::metrics::MetricsRegistry;
use helios_repl::sinks::nats::access::NatsAccess;
use tokio::sync::watch;

/// mimalloc instead of glibc's malloc: the stream allocates and frees a few small buffers
/// per row on several threads, and glibc's malloc/free were a third of the replicator's
/// CPU in a catch-up profile (`HELIOS_BENCH_PERF`, see benches/e2e.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Warns when the spill directory keeps spills in memory (a tmpfs) or cannot take them.
fn warn_of_an_unfit_spill_dir() {
    match helios_repl::spill_dir::check(&helios_repl::spill_dir::current()) {
        Ok(dir) if dir.in_memory => tracing::warn!(
            path = %dir.path.display(),
            "spill directory is a tmpfs: large transactions and spilled rows stay in memory; set --spill-dir to a disk"
        ),
        Ok(dir) => tracing::debug!(path = %dir.path.display(), "spill directory"),
        Err(e) => {
            tracing::warn!(error = %e, "large transactions and spilled rows will fail until the spill directory is usable")
        }
    }
}

/// A thread count: a whole number of at least 1.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "must be a whole number of at least 1, got `{text}`"
        )),
    }
}

/// `--worker-placement` (see [`WorkerPlacement`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Placement {
    Inline,
    InlineSinks,
    OwnThread,
}

#[derive(Parser)]
#[command(
    name = "helios-repl",
    version,
    about = "Per-tenant PostgreSQL replication through Timely dataflows"
)]
struct Cli {
    /// Async runtime threads: the stream reader, the sinks and their connections
    /// (default: half the cores, at least one).
    #[arg(long, global = true, default_value_t = job_runner::default_async_threads(),
          value_parser = at_least_one)]
    async_threads: usize,
    /// Where a single worker runs: `inline-sinks` on one thread with the sink tasks, the
    /// stream readers on the async runtime; `inline` with the readers too (fewest thread
    /// hand-overs per transaction, least CPU); `own-thread` on a thread of its own (the
    /// dataflow's work beside the readers' and sinks'). Several workers always have
    /// threads of their own.
    #[arg(long, global = true, value_enum, default_value_t = Placement::InlineSinks)]
    worker_placement: Placement,
    /// Where large transactions, the spool of streamed transactions and the history
    /// books spill (unlinked files; default `$TMPDIR`). Put it on a disk: a spill into a
    /// tmpfs stays in memory.
    #[arg(long, global = true, env = "HELIOS_SPILL_DIR")]
    spill_dir: Option<std::path::PathBuf>,
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
        /// Timely worker threads (default: half the cores, at least one).
        #[arg(long, default_value_t = job_runner::default_workers(), value_parser = at_least_one)]
        workers: usize,
        /// Seconds between progress lines (0: none).
        #[arg(long, default_value_t = 5)]
        progress_secs: u64,
        /// Reload this table of the job whole from the source before streaming on
        /// (repeatable; `schema.table`, or the bare name): the way out of its error state
        /// once the target is mended.
        #[arg(long = "resync", value_name = "TABLE")]
        resync: Vec<String>,
        /// With `--resync`: reload only this tenant's rows of those tables (repeatable).
        #[arg(long = "resync-tenant", value_name = "TENANT", requires = "resync")]
        resync_tenants: Vec<String>,
    },
    /// Check what a job needs of its source and PostgreSQL targets (wal_level, the role's
    /// rights, free replication slots and WAL senders, each table, the targets' rights)
    /// without creating anything; exits 1 if the job cannot run as it is.
    Check {
        /// The job spec (TOML).
        #[arg(long)]
        job: PathBuf,
    },
    /// Run the job service: the REST API, the metadata store and the jobs it holds.
    Serve {
        /// Where the HTTP API listens.
        #[arg(long, default_value = "127.0.0.1:7300")]
        listen: String,
        /// HTTPS for the API and /metrics.
        #[command(flatten)]
        api_tls: ApiTlsArgs,
        /// The metadata store (a PostgreSQL database).
        #[arg(long, env = "HELIOS_META_DSN", hide_env_values = true)]
        meta_dsn: String,
        /// Bearer token required on every /v1 route.
        #[arg(long, env = "HELIOS_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// A second bearer token that may only read (GET and HEAD on /v1), for dashboards
        /// and scripts that look; anything else with it is refused (403).
        #[arg(
            long,
            env = "HELIOS_READ_TOKEN",
            hide_env_values = true,
            requires = "token"
        )]
        read_token: Option<String>,
        /// Timely worker threads shared by all jobs (default: half the cores, at least one).
        #[arg(long, default_value_t = job_runner::default_workers(), value_parser = at_least_one)]
        workers: usize,
        /// Seconds between retention passes (history older than a policy's age leaves
        /// the history table).
        #[arg(long, default_value_t = 300)]
        retention_every_secs: u64,
        /// Events kept per job in the metadata store (`jobs events`); older ones are
        /// pruned at each retention pass.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
        events_kept: u32,
        /// A NATS server whose access events (the JSON body of POST /v1/access) feed the
        /// hotness predictor.
        #[arg(long)]
        access_nats_url: Option<String>,
        /// The subject access events are published on.
        #[arg(long, default_value = access_subscriber::DEFAULT_SUBJECT)]
        access_subject: String,
        /// TLS files and credentials for --access-nats-url.
        #[command(flatten)]
        access_nats: NatsAccess,
    },
    /// A tenant's rows of a table as of a system time and a valid time (asks a server).
    Query {
        /// The tenant id.
        #[arg(long)]
        tenant: String,
        /// The table, `schema.table`.
        #[arg(long)]
        table: String,
        /// What we knew then: RFC 3339 time or LSN (default now).
        #[arg(long)]
        as_of_system: Option<String>,
        /// When the rows were valid: RFC 3339 time or LSN (default the system time).
        #[arg(long)]
        as_of_valid: Option<String>,
        /// Only the row with this key (the key columns other than the tenant column, in
        /// key order; repeat for each).
        #[arg(long)]
        key: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Export a tenant's history of a table to Parquet files, showing progress.
    Export {
        /// The tenant id.
        #[arg(long)]
        tenant: String,
        /// The table, `schema.table`.
        #[arg(long)]
        table: String,
        /// Versions known from this time / LSN on.
        #[arg(long)]
        from: Option<String>,
        /// Versions known before this time / LSN.
        #[arg(long)]
        to: Option<String>,
        /// Output directory (on the server's machine).
        #[arg(long)]
        output: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Submit a job file to a running server.
    Submit {
        /// The job spec (TOML, or JSON if it ends in .json).
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List and control the server's jobs.
    Jobs {
        #[command(subcommand)]
        action: Option<JobsAction>,
        #[command(flatten)]
        client: ClientArgs,
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
        /// Timely worker threads (default: half the cores, at least one).
        #[arg(long, default_value_t = job_runner::default_workers(), value_parser = at_least_one)]
        workers: usize,
    },
    /// Run the stream codec on a table you bring (CSV with a header, or Parquet) and show,
    /// per column, the codec chosen and its bytes, and the bytes per row of the frames.
    ExplainCompression {
        /// The table: a CSV file with a header line, or a Parquet file.
        #[arg(long)]
        input: PathBuf,
        /// Rows per batch (frame), as a sink would gather them.
        #[arg(long, default_value_t = 1000)]
        batch_rows: usize,
    },
    /// Print a job's NATS stream, decoded, as it arrives.
    Tail {
        /// The NATS server.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        /// The job's stream (default HELIOS_<job> of --job).
        #[arg(long)]
        stream: Option<String>,
        /// The job (gives the stream name and, without --subject, the subjects).
        #[arg(long)]
        job: Option<String>,
        /// Subject filter, e.g. `helios.orders.3.>` (default: all of the stream).
        #[arg(long)]
        subject: Option<String>,
        /// Start at the stream's first message (default: only new ones).
        #[arg(long)]
        from_start: bool,
        /// Stop after this many frames.
        #[arg(long)]
        max_frames: Option<u64>,
        /// Stop when nothing arrives for this many seconds.
        #[arg(long)]
        idle_exit_secs: Option<u64>,
        /// TLS files and credentials for --nats-url.
        #[command(flatten)]
        nats_access: NatsAccess,
    },
}

/// The certificate `serve` answers HTTPS with.
#[derive(clap::Args)]
struct ApiTlsArgs {
    /// Serve the API over HTTPS with this certificate chain (PEM, the server's first); read
    /// again at the first connection after it changes, so a renewal needs no restart.
    #[arg(long, env = "HELIOS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1, not encrypted).
    #[arg(long, env = "HELIOS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl ApiTlsArgs {
    /// The server's TLS configuration, if asked for; a file that cannot be used stops the
    /// start, named.
    fn server_config(&self) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let files = Arc::new(api::tls::CertFiles::load(cert, key)?);
        Ok(Some(files.server_config()?))
    }
}

/// How the CLI reaches a server.
#[derive(clap::Args)]
struct ClientArgs {
    /// The server's base URL.
    #[arg(
        long,
        env = "HELIOS_SERVER",
        default_value = "http://127.0.0.1:7300",
        global = true
    )]
    server: String,
    /// Bearer token.
    #[arg(long, env = "HELIOS_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// For an https:// server: trust only the certificates of this PEM file (a private
    /// CA, or the server's own self-signed certificate) instead of the system's roots.
    #[arg(long, env = "HELIOS_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum JobsAction {
    /// Every job (the default).
    List,
    /// One job in detail.
    Show { id: String },
    /// What happened to a job, newest first: the states it entered (a failed job's error)
    /// and the requests made of it.
    Events {
        id: String,
        /// How many (1 to 1000).
        #[arg(long, default_value_t = helios_repl::control::job_control::EVENTS_DEFAULT,
              value_parser = clap::value_parser!(u32)
                  .range(1..=i64::from(helios_repl::control::job_control::EVENTS_MAX)))]
        limit: u32,
    },
    /// Stop reading a job's source; it keeps its position.
    Pause { id: String },
    /// Start reading again.
    Resume { id: String },
    /// Replace a job's spec with a file's (the job its `name` names) and restart the job
    /// under it; added tenants, tables and PostgreSQL targets are loaded first.
    Replace {
        /// The new spec (TOML, or JSON if it ends in .json).
        file: PathBuf,
    },
    /// Reload tables of a job from the source (the way out of a table's error state once
    /// the target is mended, or a fresh copy of rows that drifted); the job restarts and
    /// loads them first.
    Resync {
        id: String,
        /// The tables (`schema.table`, or a bare name unique among the job's).
        #[arg(required = true)]
        tables: Vec<String>,
        /// Reload only this tenant's rows of the tables (repeatable); none: the tables
        /// whole.
        #[arg(long = "tenant", value_name = "TENANT")]
        tenants: Vec<String>,
    },
    /// Wait until a job holds every change its source committed before this command, then
    /// raise its sequences on its PostgreSQL targets: the step before a tenant is cut over
    /// to a target (stop the tenant's writes on the source first).
    Sync {
        id: String,
        /// How long to wait for the job to catch up (1..=3600; default 60).
        #[arg(long, value_name = "SECONDS")]
        timeout_secs: Option<u64>,
    },
    /// Stop and remove a job.
    Stop {
        id: String,
        /// Also drop its replication slot.
        #[arg(long)]
        drop_slot: bool,
    },
}

fn main() -> anyhow::Result<()> {
    helios_repl::process_memory::disable_transparent_huge_pages();
    helios_repl::process_memory::delay_purging_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HELIOS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match helios_repl::open_files::raise_open_files_limit() {
        Ok(limit) if limit.now > limit.before => tracing::info!(
            from = limit.before,
            to = limit.now,
            "open files: soft limit raised to the hard limit"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "open files: could not raise the soft limit"),
    }
    let cli = Cli::parse();
    if let Some(dir) = &cli.spill_dir {
        if let Err(e) = helios_repl::spill_dir::set(dir) {
            eprintln!("helios-repl: {e}");
            std::process::exit(2);
        }
    }
    if matches!(
        cli.command,
        Command::Run { .. } | Command::Serve { .. } | Command::Demo { .. }
    ) {
        warn_of_an_unfit_spill_dir();
    }
    let placement = match cli.worker_placement {
        Placement::Inline => WorkerPlacement::Inline,
        Placement::InlineSinks => WorkerPlacement::InlineSinks,
        Placement::OwnThread => WorkerPlacement::OwnThread,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.async_threads)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    match cli.command {
        Command::ExplainCompression { input, batch_rows } => {
            let batches = helios_repl::inspect::explain::read_table(&input)?;
            let report = helios_repl::inspect::explain::explain(&batches, batch_rows)?;
            println!("{report}");
            Ok(())
        }
        Command::Tail {
            nats_url,
            stream,
            job,
            subject,
            from_start,
            max_frames,
            idle_exit_secs,
            nats_access,
        } => {
            let stream = match (stream, &job) {
                (Some(s), _) => s,
                (None, Some(job)) => helios_repl::sinks::nats::subjects::default_stream_name(job),
                (None, None) => anyhow::bail!("tail needs --stream or --job"),
            };
            let options = helios_repl::inspect::tail::TailOptions {
                url: nats_url,
                access: nats_access,
                stream,
                subject: subject.unwrap_or_default(),
                from_start,
                max_frames,
                idle_exit: idle_exit_secs.map(std::time::Duration::from_secs),
            };
            runtime.block_on(helios_repl::inspect::tail::run(options))?;
            Ok(())
        }
        Command::Check { job } => {
            let text = std::fs::read_to_string(&job)
                .with_context(|| format!("read job file {}", job.display()))?;
            let spec = JobSpec::from_toml_str(&text)
                .with_context(|| format!("job file {}", job.display()))?;
            let findings = runtime.block_on(helios_repl::control::preflight::check(&spec));
            for finding in &findings {
                println!("{finding}");
            }
            if helios_repl::control::preflight::passed(&findings) {
                println!("job `{}` can run", spec.name);
                Ok(())
            } else {
                anyhow::bail!("job `{}` cannot run as it is: see FAIL above", spec.name)
            }
        }
        Command::Run {
            job,
            workers,
            progress_secs,
            resync,
            resync_tenants,
        } => {
            let text = std::fs::read_to_string(&job)
                .with_context(|| format!("read job file {}", job.display()))?;
            let spec = JobSpec::from_toml_str(&text)
                .with_context(|| format!("job file {}", job.display()))?;
            if !resync.is_empty() {
                // Checked before anything connects: a bad name stops here (the tables of a
                // pattern once it is resolved, below).
                if !spec.has_table_patterns() {
                    helios_repl::control::resync::check(&spec, &resync)?;
                }
                helios_repl::control::resync::check_tenants(&spec, &resync_tenants)?;
            }
            runtime.block_on(async move {
                if !resync.is_empty() {
                    let carried = helios_repl::control::resync::carried_spec(&spec).await?;
                    helios_repl::control::resync::request(&carried, &resync, &resync_tenants)
                        .await?;
                }
                let (stop_tx, stop_rx) = watch::channel(Desired::Run);
                tokio::spawn(stop_on_signal(move || {
                    let _ = stop_tx.send(Desired::Stop);
                }));
                let host = Arc::new(start_host(workers, placement)?);
                let stats = Arc::new(JobStats::new(spec.sinks.len()));
                let every = (progress_secs > 0).then(|| Duration::from_secs(progress_secs));
                job_runner::spawn_job(spec, host.clone(), stats, stop_rx, every)
                    .await
                    .context("the job's task")??;
                // The job's task has ended and let go of its handle: stop the workers and
                // wait for them, reporting a worker that panicked.
                match Arc::try_unwrap(host) {
                    Ok(host) => host.shutdown().map_err(anyhow::Error::msg),
                    Err(_) => anyhow::Ok(()),
                }
            })?;
            Ok(())
        }
        Command::Serve {
            listen,
            api_tls,
            meta_dsn,
            token,
            read_token,
            workers,
            retention_every_secs,
            events_kept,
            access_nats_url,
            access_subject,
            access_nats,
        } => runtime.block_on(serve(
            (listen, api_tls.server_config()?),
            meta_dsn,
            api::ApiTokens {
                admin: token,
                read_only: read_token,
            },
            (workers, placement),
            (Duration::from_secs(retention_every_secs.max(1)), events_kept),
            access_nats_url.map(|url| (url, access_subject, access_nats)),
        )),
        Command::Query {
            tenant,
            table,
            as_of_system,
            as_of_valid,
            key,
            client,
        } => runtime.block_on(async move {
            let api = ApiClient::new(&client.server, client.token, client.ca_file.as_deref())?;
            let rows = api
                .rows_as_of(
                    &tenant,
                    &table,
                    as_of_system.as_deref(),
                    as_of_valid.as_deref(),
                    &key,
                )
                .await?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", client::rows_table(&rows));
            }
            Ok(())
        }),
        Command::Export {
            tenant,
            table,
            from,
            to,
            output,
            client,
        } => runtime.block_on(async move {
            let api = ApiClient::new(&client.server, client.token, client.ca_file.as_deref())?;
            let request = ExportRequest {
                tenant,
                table,
                from,
                to,
                output,
                job: None,
            };
            let mut status = api.start_export(&request).await?;
            while status.state == ExportState::Running {
                eprintln!(
                    "export {}: {}/{} versions, {} files",
                    status.id,
                    status.rows_written,
                    status.rows_total,
                    status.files.len()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
                status = api.export_status(&status.id).await?;
            }
            if client.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                println!(
                    "export {} {:?}: {} versions in {} files under {}",
                    status.id,
                    status.state,
                    status.rows_written,
                    status.files.len(),
                    status.output
                );
            }
            match status.error {
                Some(e) => anyhow::bail!("export failed: {e}"),
                None => Ok(()),
            }
        }),
        Command::Submit { file, client } => runtime.block_on(async move {
            let api = ApiClient::new(&client.server, client.token, client.ca_file.as_deref())?;
            let id = api.submit_file(&file).await?;
            if client.json {
                println!("{}", serde_json::json!({ "id": id }));
            } else {
                println!("submitted job {id}");
            }
            Ok(())
        }),
        Command::Jobs { action, client } => runtime.block_on(async move {
            let api = ApiClient::new(&client.server, client.token, client.ca_file.as_deref())?;
            let print = |job: &JobStatus| {
                if client.json {
                    println!("{}", serde_json::to_string_pretty(job).unwrap_or_default());
                } else {
                    print!("{}", client::job_detail(job));
                }
            };
            match action.unwrap_or(JobsAction::List) {
                JobsAction::List => {
                    let jobs = api.list().await?;
                    if client.json {
                        println!("{}", serde_json::to_string_pretty(&jobs)?);
                    } else {
                        print!("{}", client::jobs_table(&jobs));
                    }
                }
                JobsAction::Show { id } => print(&api.get(&id).await?),
                JobsAction::Events { id, limit } => {
                    let events = api.events(&id, limit).await?;
                    if client.json {
                        println!("{}", serde_json::to_string_pretty(&events)?);
                    } else {
                        print!("{}", client::events_table(&events));
                    }
                }
                JobsAction::Pause { id } => print(&api.pause(&id).await?),
                JobsAction::Resume { id } => print(&api.resume(&id).await?),
                JobsAction::Replace { file } => print(&api.replace_file(&file).await?),
                JobsAction::Resync {
                    id,
                    tables,
                    tenants,
                } => print(&api.resync(&id, tables, tenants).await?),
                JobsAction::Sync { id, timeout_secs } => {
                    let synced = api.sync(&id, timeout_secs).await?;
                    if client.json {
                        println!("{}", serde_json::to_string_pretty(&synced)?);
                    } else {
                        println!(
                            "job {id} holds every change the source committed before {} (confirmed {}, after {:.1} s); {} sequences raised on its targets",
                            synced.source_lsn, synced.confirmed_lsn, synced.waited_secs, synced.sequences_raised
                        );
                    }
                    // A cutover script stops here: the targets would draw ids the source
                    // already gave.
                    if !synced.sequence_problems.is_empty() {
                        anyhow::bail!(
                            "not every sequence is in step on the targets:\n{}",
                            synced.sequence_problems.join("\n")
                        );
                    }
                }
                JobsAction::Stop { id, drop_slot } => {
                    api.delete(&id, drop_slot).await?;
                    if client.json {
                        println!("{}", serde_json::json!({ "stopped": id }));
                    } else {
                        println!("stopped job {id}");
                    }
                }
            }
            Ok(())
        }),
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

/// The dataflow host with `workers` workers, its sink tasks on the current runtime.
fn start_host(workers: usize, placement: WorkerPlacement) -> anyhow::Result<DataflowHost> {
    DataflowHost::start_with(workers, tokio::runtime::Handle::current(), placement)
        .map_err(anyhow::Error::msg)
}

/// `helios-repl serve`: the API, the metadata store and every job, until Ctrl-C.
async fn serve(
    (listen, tls): (String, Option<Arc<rustls::ServerConfig>>),
    meta_dsn: String,
    tokens: api::ApiTokens,
    (workers, placement): (usize, WorkerPlacement),
    (retention_every, events_kept): (Duration, u32),
    access_nats: Option<(String, String, NatsAccess)>,
) -> anyhow::Result<()> {
    let store = MetadataStore::open(&meta_dsn).await?;
    let host = Arc::new(start_host(workers, placement)?);
    let metrics = MetricsRegistry::new();
    let manager = JobManager::start(host.clone(), store, metrics).await?;
    let retention = manager.start_retention(retention_every, events_kept);
    let access = match access_nats {
        Some((url, subject, nats_access)) => Some(
            access_subscriber::start(&url, &nats_access, &subject, manager.clone())
                .await
                .with_context(|| format!("subscribe to access events on {url}"))?,
        ),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listen on {listen}"))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        auth = tokens.admin.is_some(),
        read_only_token = tokens.read_only.is_some(),
        https = tls.is_some(),
        "serving"
    );
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(stop_on_signal(move || {
        let _ = stop_tx.send(true);
    }));
    let router = api::router(manager.clone(), tokens);
    api::serve(listener, tls, router, async move {
        let _ = stop_rx.changed().await;
    })
    .await?;
    retention.abort();
    if let Some(a) = access {
        a.abort();
    }
    manager.shutdown().await;
    drop(manager);
    if let Ok(host) = Arc::try_unwrap(host) {
        host.shutdown().map_err(anyhow::Error::msg)?;
    }
    Ok(())
}
