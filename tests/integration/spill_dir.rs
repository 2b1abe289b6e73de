//! `--spill-dir`: a directory that cannot take spill files stops the binary at start,
//! naming it; one on a tmpfs (where spills stay in memory) is warned about.

use std::process::Command;

fn helios(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_helios-repl"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run helios-repl");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn an_unusable_spill_dir_stops_the_binary_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    let job = dir.path().join("job.toml");
    let (code, out) = helios(&[
        "--spill-dir",
        missing.to_str().expect("utf-8"),
        "run",
        "--job",
        job.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("spill directory") && out.contains(missing.to_str().expect("utf-8")),
        "{out}"
    );
}

#[test]
fn a_spill_dir_on_a_tmpfs_is_warned_about() {
    if !std::path::Path::new("/dev/shm").is_dir() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let job = dir.path().join("no-such-job.toml");
    let (_, out) = helios(&[
        "--spill-dir",
        "/dev/shm",
        "run",
        "--job",
        job.to_str().expect("utf-8"),
    ]);
    assert!(out.contains("spill directory is a tmpfs"), "{out}");
    // A disk is not warned about.
    let (_, out) = helios(&[
        "--spill-dir",
        dir.path().to_str().expect("utf-8"),
        "run",
        "--job",
        job.to_str().expect("utf-8"),
    ]);
    assert!(!out.contains("tmpfs"), "{out}");
}
