//! The replicator raises its soft limit on open files to the hard limit at start: a
//! process started with the 1,024 (here 256) that many service managers give would
//! otherwise fail a job over a few thousand tenants' cold-tier directories with "Too
//! many open files". Read from `/proc/<pid>/limits` of the running binary.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{wait_for, without_colours};

/// The soft and hard "Max open files" of process `pid`.
fn open_files_limits(pid: u32) -> Option<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    Some((fields.next()?.to_string(), fields.next()?.to_string()))
}

/// The child, killed when the test ends however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_soft_limit_on_open_files_is_raised_to_the_hard_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let job = dir.path().join("job.toml");
    // A source nobody listens on: the job retries with back-off, so the process stays up.
    std::fs::write(
        &job,
        "name = \"open-files\"\n[source]\ndsn = \"host=127.0.0.1 port=1 user=postgres dbname=app\"\n\
         publication = \"p\"\nslot = \"s\"\n[tenants]\ninclude = [1]\n[[tables]]\nname = \"public.t\"\n\
         [[sinks]]\nkind = \"postgres\"\ndsn = \"host=127.0.0.1 port=1 user=postgres dbname=replica\"\n",
    )
    .expect("job file");
    let log = dir.path().join("run.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_helios-repl"));
    command
        .args(["run", "--job"])
        .arg(&job)
        .env("HELIOS_LOG", "info")
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .stdin(Stdio::null());
    // SAFETY: between fork and exec only getrlimit/setrlimit run, both async-signal-safe,
    // on a struct on this stack.
    unsafe {
        command.pre_exec(|| {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit.rlim_cur = limit.rlim_max.min(256);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = Running(command.spawn().expect("spawn helios-repl"));
    let pid = child.0.id();
    let mut seen = None;
    let raised = "open files: soft limit raised to the hard limit";
    wait_for(
        "the replicator to raise its limit",
        Duration::from_secs(20),
        || {
            seen = open_files_limits(pid);
            let said = std::fs::read_to_string(&log).is_ok_and(|o| o.contains(raised));
            said && seen.as_ref().is_some_and(|(soft, hard)| soft == hard)
        },
    );
    drop(child);
    let output = without_colours(&std::fs::read_to_string(&log).unwrap_or_default());
    let (soft, hard) = seen.expect("limits read");
    assert_ne!(hard, "256", "the test needs a hard limit above 256");
    assert_eq!(soft, hard, "{output}");
    assert!(
        output.contains(raised) && output.contains(&format!("from=256 to={hard}")),
        "{output}"
    );
}
