//! The integration-test harness: throwaway source and target PostgreSQL clusters on free
//! ports under a temp dir, the real `helios-repl` binary as the replicator, and `wait_for`
//! helpers. No mocks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use helios_repl::embedded::pg_cluster::PgCluster;

/// A thread that runs SQL on the source over and over (`sql(n)` for n = first, first + 1,
/// ...) until stopped: transactions that commit while a job starts, snapshots or loads.
pub struct SourceWriter {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

impl SourceWriter {
    pub fn start(
        env: &Arc<Env>,
        first: u64,
        sql: impl Fn(u64) -> String + Send + 'static,
    ) -> SourceWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let (env, stopped) = (env.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut n = first;
            while !stopped.load(Ordering::Relaxed) {
                env.on_source(&sql(n));
                n += 1;
            }
            n - first
        });
        SourceWriter { stop, thread }
    }

    /// Stops it; how many times the SQL ran.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("source writer")
    }
}

/// A source and a target cluster with databases `app` and `replica`.
pub struct Env {
    pub source: PgCluster,
    pub target: PgCluster,
    pub dir: tempfile::TempDir,
}

impl Env {
    /// Starts both clusters; `setup_sql` runs on the source database `app`.
    pub fn start(setup_sql: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("helios-it")
            .tempdir()
            .expect("temp dir");
        // The server may run as another user (we are root): let it reach its directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        let source = PgCluster::start(&dir.path().join("source")).expect("start source cluster");
        let target = PgCluster::start(&dir.path().join("target")).expect("start target cluster");
        source.create_database("app").expect("create app");
        target.create_database("replica").expect("create replica");
        if !setup_sql.is_empty() {
            source.psql("app", setup_sql).expect("source setup");
        }
        Env {
            source,
            target,
            dir,
        }
    }

    pub fn source_dsn(&self) -> String {
        self.source.dsn("app")
    }

    pub fn target_dsn(&self) -> String {
        self.target.dsn("replica")
    }

    /// Writes a job file and returns its path.
    pub fn job_file(&self, name: &str, tenants: &str, tables: &[&str]) -> PathBuf {
        let tables: String = tables
            .iter()
            .map(|t| format!("[[tables]]\nname = \"{t}\"\n"))
            .collect();
        let text = format!(
            "name = \"{name}\"\n[source]\ndsn = \"{}\"\npublication = \"pub_{slot}\"\nslot = \"slot_{slot}\"\n\
             [tenants]\ninclude = {tenants}\n{tables}[[sinks]]\nkind = \"postgres\"\ndsn = \"{}\"\nbatch_max_rows = 2000\n",
            self.source_dsn(),
            self.target_dsn(),
            slot = name.replace('-', "_"),
        );
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write job file");
        path
    }

    /// Runs SQL on the source (`app`).
    pub fn on_source(&self, sql: &str) -> String {
        self.source
            .psql("app", sql)
            .unwrap_or_else(|e| panic!("source SQL failed: {e}\n{sql}"))
    }

    /// Runs SQL on the target (`replica`).
    pub fn on_target(&self, sql: &str) -> String {
        self.target
            .psql("replica", sql)
            .unwrap_or_else(|e| panic!("target SQL failed: {e}\n{sql}"))
    }

    /// Like [`Env::on_target`] but an error (e.g. table not created yet) gives `None`.
    pub fn try_on_target(&self, sql: &str) -> Option<String> {
        self.target.psql("replica", sql).ok()
    }

    /// Waits until `query` returns the same text on source and target.
    pub fn wait_converged(&self, query: &str, limit: Duration) {
        let expected = self.on_source(query);
        wait_for(
            &format!("target to match source for `{query}`"),
            limit,
            || self.try_on_target(query).as_deref() == Some(expected.as_str()),
        );
    }
}

/// Runs `command` to its end: whether it succeeded, and its stdout then stderr.
pub fn output_of(command: &mut std::process::Command) -> (bool, String) {
    let out = command.output().expect("run the command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Polls `check` every 200 ms until true; panics after `limit` naming `what`.
pub fn wait_for(what: &str, limit: Duration, check: impl FnMut() -> bool) {
    if !wait_until(limit, check) {
        panic!("timed out after {limit:?} waiting for {what}");
    }
}

/// Polls `check` every 200 ms until true; false once `limit` has passed without it, for
/// a caller that reports what differed.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

/// The replicator as a child process; killed on drop.
pub struct Replicator {
    child: Child,
    pub log: PathBuf,
}

impl Replicator {
    /// Starts `helios-repl run --job <file> --workers 2`.
    pub fn start(job: &Path) -> Replicator {
        Replicator::start_with_workers(job, 2)
    }

    /// Starts `helios-repl run --job <file> --workers 1`: the worker on one thread with
    /// the sink tasks (`--worker-placement inline-sinks`, the default on 2 cores).
    pub fn start_inline(job: &Path) -> Replicator {
        Replicator::start_with_workers(job, 1)
    }

    /// Starts `helios-repl run --job <file> --workers <workers>`.
    pub fn start_with_workers(job: &Path, workers: usize) -> Replicator {
        Replicator::start_with_args(job, workers, &[])
    }

    /// Starts `helios-repl run --job <file> --workers <workers> <extra…>`.
    pub fn start_with_args(job: &Path, workers: usize, extra: &[&str]) -> Replicator {
        Replicator::start_with_env(job, workers, extra, &[])
    }

    /// As [`Replicator::start_with_args`], with these environment variables set too.
    pub fn start_with_env(
        job: &Path,
        workers: usize,
        extra: &[&str],
        vars: &[(&str, &str)],
    ) -> Replicator {
        let log = job.with_extension(format!("{}.log", rand_suffix()));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_helios-repl"))
            .envs(vars.iter().copied())
            .args(["run", "--job"])
            .arg(job)
            .args(["--progress-secs", "1"])
            // The worker count whatever the machine: most tests run two, to cover tenants
            // split across workers; `start_inline` runs one (the default on 2 cores).
            .args(["--workers", &workers.to_string()])
            .args(extra)
            .env("HELIOS_LOG", "info,tokio_postgres=warn")
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn helios-repl");
        Replicator { child, log }
    }

    /// The combined stdout/stderr so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(60) {
                self.kill();
                panic!("replicator did not stop within 60s:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts `helios-repl run --job <file> --workers 2` and waits until the job streams
    /// (its initial snapshot, or its resume, done); panics with its output if it stops
    /// first.
    pub fn streaming(job: &Path) -> Replicator {
        let mut repl = Replicator::start(job);
        wait_for("the job to stream", Duration::from_secs(90), || {
            repl.output().contains("streaming") || !repl.is_running()
        });
        assert!(repl.is_running(), "{}", repl.output());
        repl
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- replicator output ----\n{}", self.output());
        }
    }
}

fn rand_suffix() -> u32 {
    use rand::Rng;
    rand::thread_rng().gen()
}

/// `text` without its ANSI colour sequences (`ESC [ … m`).
pub fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}
