//! A throwaway PostgreSQL cluster for a bench: started in a temp dir the server may reach,
//! with one database, and a current-thread runtime to run the bench on (the server's
//! backends get the other cores); the server's log is printed if the bench fails.

use std::future::Future;

use helios_repl::embedded::pg_cluster::PgCluster;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

pub struct BenchCluster {
    pub cluster: PgCluster,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl BenchCluster {
    /// Starts a cluster with database `database`.
    pub fn start(database: &str) -> Result<BenchCluster, Error> {
        let dir = tempfile::Builder::new().prefix("helios-bench").tempdir()?;
        // The server may run as another user (we are root): let it reach its directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let cluster = PgCluster::start(&dir.path().join("pg"))?;
        cluster.create_database(database)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(BenchCluster {
            cluster,
            runtime,
            _dir: dir,
        })
    }

    /// Runs `bench` to its end; on an error, prints the server's log first.
    pub fn run<T>(&self, bench: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        let result = self.runtime.block_on(bench);
        if result.is_err() {
            eprintln!("server log:\n{}", self.cluster.log());
        }
        result
    }
}
