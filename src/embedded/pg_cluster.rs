//! A throwaway PostgreSQL cluster: `initdb` + `pg_ctl` on a free loopback port under a
//! directory we own, configured for logical replication.
//!
//! Used by `helios-repl demo` and by the integration tests. It never touches the machine's
//! default server. PostgreSQL refuses to run as root, so when we are root every server
//! command runs as the `postgres` system user (`runuser`), and the directory is handed to it.
//! Dropping a [`PgCluster`] stops its server (`pg_ctl stop -m immediate`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// What went wrong starting or driving a throwaway cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("PostgreSQL server binaries (initdb, pg_ctl) not found: install the distribution's `postgresql` package or set HELIOS_PG_BIN")]
    BinariesNotFound,
    #[error("running as root, but the `postgres` system user does not exist to run the server as")]
    NoServerUser,
    #[error("{command} failed: {detail}")]
    Command { command: String, detail: String },
    #[error("cluster directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("server on port {port} did not accept connections within {seconds}s; log: {log}")]
    NotReady {
        port: u16,
        seconds: u64,
        log: String,
    },
}

/// Settings appended to `postgresql.conf` of every throwaway cluster.
const CLUSTER_SETTINGS: &str = "
listen_addresses = '127.0.0.1'
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
max_connections = 100
shared_buffers = 64MB
track_commit_timestamp = on
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
log_statement = 'none'
";

/// A running throwaway PostgreSQL server.
#[derive(Debug)]
pub struct PgCluster {
    root: PathBuf,
    port: u16,
    bin_dir: PathBuf,
    run_as: Option<String>,
    stopped: bool,
}

impl PgCluster {
    /// A cluster for a unit test, in `dir/pg`: `dir` is opened to other users first, since
    /// the server may run as another user than the test (which may be root).
    #[cfg(test)]
    pub fn scratch(dir: &tempfile::TempDir) -> PgCluster {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the test's directory");
        PgCluster::start(&dir.path().join("pg")).expect("start cluster")
    }

    /// Initialises a new cluster in `root` (created if missing; must not hold a cluster
    /// yet) and starts it on a free port.
    pub fn start(root: &Path) -> Result<PgCluster, ClusterError> {
        let bin_dir = find_bin_dir()?;
        let run_as = server_user()?;
        let io = |source| ClusterError::Io {
            path: root.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(root).map_err(io)?;
        let root = root.canonicalize().map_err(io)?;
        let mut cluster = PgCluster {
            root,
            port: 0,
            bin_dir,
            run_as,
            stopped: true,
        };
        cluster.hand_over(&cluster.root.clone())?;
        let data = cluster.data_dir();
        cluster.run(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
        )?;
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).map_err(io)?;
        conf.push_str(CLUSTER_SETTINGS);
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            path_str(&cluster.root)
        ));
        // A free port can be taken between our probe and the server's bind: retry a few times.
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port().map_err(io)?;
            std::fs::write(
                data.join("postgresql.conf"),
                format!("{conf}port = {port}\n"),
            )
            .map_err(io)?;
            cluster.port = port;
            match cluster.pg_ctl_start() {
                Ok(_) => {
                    cluster.stopped = false;
                    cluster.wait_ready(Duration::from_secs(30))?;
                    return Ok(cluster);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or(ClusterError::NotReady {
            port: cluster.port,
            seconds: 0,
            log: String::new(),
        }))
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A libpq key=value connection string for `database` as the superuser `postgres`.
    pub fn dsn(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={database}",
            self.port
        )
    }

    /// The same as [`PgCluster::dsn`] over the server's Unix-domain socket (in the
    /// cluster's root directory) instead of loopback TCP.
    pub fn socket_dsn(&self, database: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={database}",
            self.root.display(),
            self.port
        )
    }

    /// The cluster's root directory (data directory, log, socket).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates a database (no-op if it exists).
    pub fn create_database(&self, name: &str) -> Result<(), ClusterError> {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match self.psql("postgres", &sql) {
            Ok(_) => Ok(()),
            Err(ClusterError::Command { detail, .. }) if detail.contains("already exists") => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Runs SQL through `psql` (for set-up scripts); returns its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, ClusterError> {
        let port = self.port.to_string();
        let out = self.run(
            "psql",
            &[
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                database,
                "-At",
                "-c",
                sql,
            ],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// Turns TLS on with the server certificate `cert_pem` and its key `key_pem` (client
    /// certificates are checked against `client_ca_pem`), replaces `pg_hba.conf` with
    /// `hba`, and reloads the server; returns once new sessions get the new settings.
    pub fn serve_tls(
        &self,
        cert_pem: &str,
        key_pem: &str,
        client_ca_pem: &str,
        hba: &str,
    ) -> Result<(), ClusterError> {
        use std::os::unix::fs::PermissionsExt;
        let data = self.data_dir();
        let io = |source| ClusterError::Io {
            path: data.clone(),
            source,
        };
        for (name, text) in [
            ("server.crt", cert_pem),
            ("server.key", key_pem),
            ("client_ca.crt", client_ca_pem),
            ("pg_hba.conf", hba),
        ] {
            let path = data.join(name);
            std::fs::write(&path, text).map_err(io)?;
            // The server refuses a key others can read.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
            self.hand_over(&path)?;
        }
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).map_err(io)?;
        conf.push_str(
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
             ssl_ca_file = 'client_ca.crt'\n",
        );
        std::fs::write(data.join("postgresql.conf"), conf).map_err(io)?;
        self.run("pg_ctl", &["-D", path_str(&data), "reload"])?;
        let start = Instant::now();
        while self.psql("postgres", "SHOW ssl")? != "on" {
            if start.elapsed() > Duration::from_secs(30) {
                return Err(ClusterError::NotReady {
                    port: self.port,
                    seconds: 30,
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the server at once (the same as dropping the cluster, but reports errors).
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &["-D", path_str(&data), "-m", "immediate", "-w", "stop"],
        )
        .map(|_| ())
    }

    /// Starts a server [`PgCluster::stop`] took down again, on its port: with `stop`'s
    /// immediate shutdown, what a server's crash and restart do to its data.
    pub fn restart(&mut self) -> Result<(), ClusterError> {
        if !self.stopped {
            return Ok(());
        }
        self.pg_ctl_start()?;
        self.stopped = false;
        self.wait_ready(Duration::from_secs(30))
    }

    /// `pg_ctl start` on the cluster's data, waiting up to a minute.
    fn pg_ctl_start(&self) -> Result<Output, ClusterError> {
        let (data, log) = (self.data_dir(), self.log_path());
        self.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&data),
                "-l",
                path_str(&log),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
    }

    /// The server log so far (for error messages and debugging).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("server.log")
    }

    fn wait_ready(&self, limit: Duration) -> Result<(), ClusterError> {
        let start = Instant::now();
        let port = self.port.to_string();
        loop {
            let ready = self
                .run("pg_isready", &["-h", "127.0.0.1", "-p", &port, "-q"])
                .is_ok();
            if ready {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(ClusterError::NotReady {
                    port: self.port,
                    seconds: limit.as_secs(),
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Gives `dir` to the server user when we run as root.
    fn hand_over(&self, dir: &Path) -> Result<(), ClusterError> {
        let Some(user) = &self.run_as else {
            return Ok(());
        };
        let out = Command::new("chown")
            .arg("-R")
            .arg(format!("{user}:{user}"))
            .arg(dir)
            .output()
            .map_err(|e| ClusterError::Command {
                command: "chown".into(),
                detail: e.to_string(),
            })?;
        check_output("chown", out).map(|_| ())
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<Output, ClusterError> {
        let exe = self.bin_dir.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(args).current_dir(&self.root);
        // pg_ctl's server inherits our stdio otherwise and keeps test pipes open.
        cmd.stdin(std::process::Stdio::null());
        let out = cmd.output().map_err(|e| ClusterError::Command {
            command: program.into(),
            detail: e.to_string(),
        })?;
        check_output(program, out)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn check_output(command: &str, out: Output) -> Result<Output, ClusterError> {
    if out.status.success() {
        Ok(out)
    } else {
        let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if detail.is_empty() {
            detail = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        Err(ClusterError::Command {
            command: command.into(),
            detail: format!("{} ({})", detail, out.status),
        })
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Binds port 0 on loopback to learn a free port.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where `initdb` and `pg_ctl` live: `$HELIOS_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin`, else the directory of `pg_ctl` on `PATH`.
fn find_bin_dir() -> Result<PathBuf, ClusterError> {
    let has_tools = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Ok(dir) = std::env::var("HELIOS_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if has_tools(&dir) {
            Ok(dir)
        } else {
            Err(ClusterError::BinariesNotFound)
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has_tools(d))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .find(|d| has_tools(d))
        .ok_or(ClusterError::BinariesNotFound)
}

/// `Some("postgres")` when we are root (the server refuses to run as root).
fn server_user() -> Result<Option<String>, ClusterError> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref() != Some("0") {
        return Ok(None);
    }
    let exists = Command::new("id")
        .arg("postgres")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if exists {
        Ok(Some("postgres".into()))
    } else {
        Err(ClusterError::NoServerUser)
    }
}
