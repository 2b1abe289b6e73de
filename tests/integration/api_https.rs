//! `serve --tls-cert/--tls-key`: the API over HTTPS, reached by the CLI with `--ca-file`
//! (and refused without the right root, or over plain http); a renewed certificate is
//! served at the next connection without a restart, a renewal that cannot be read keeps
//! the one before; certificate files that cannot be used stop the start, named.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{CertificateParams, DnType, KeyPair};

use helios_repl::embedded::pg_cluster::free_port;

use crate::alerts::{rules_without_waits, Prometheus};
use crate::harness::{output_of, wait_for};
use crate::serve_api::{converge, job_file, setup_env, write_load, Server, TOKEN};
use crate::tls::ca;

const WAIT: Duration = Duration::from_secs(90);

/// A certificate for `localhost` signed by a new CA: (CA PEM, certificate PEM, key PEM).
fn signed_server_cert(ca_name: &str) -> (String, String, String) {
    let (ca_cert, ca_key) = ca(ca_name);
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("server certificate");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write PEM");
    path
}

/// Runs the CLI against `url`; returns (success, stdout+stderr).
fn cli(url: &str, args: &[&str]) -> (bool, String) {
    output_of(
        std::process::Command::new(env!("CARGO_BIN_EXE_helios-repl"))
            .args(args)
            .args(["--server", url])
            .env("HELIOS_TOKEN", TOKEN),
    )
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn the_api_is_served_over_https_and_a_renewed_certificate_needs_no_restart() {
    let env = setup_env();
    let dir = env.dir.path();
    let (ca_a, cert_a, key_a) = signed_server_cert("CA A");
    let (ca_b, cert_b, key_b) = signed_server_cert("CA B");
    let ca_a = write(dir, "ca_a.pem", &ca_a);
    let ca_b = write(dir, "ca_b.pem", &ca_b);
    let cert = write(dir, "server.pem", &cert_a);
    let key = write(dir, "server.key", &key_a);

    let port = free_port().expect("port");
    let server = Server::spawn(
        &env,
        port,
        &["--tls-cert", path_str(&cert), "--tls-key", path_str(&key)],
        &[],
    );
    let url = format!("https://localhost:{port}");
    let with_ca = |ca: &Path, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--ca-file", path_str(ca)]);
        cli(&url, &all)
    };
    wait_for("the server to answer over HTTPS", WAIT, || {
        with_ca(&ca_a, &["jobs", "list"]).0
    });

    // A job submitted and watched over HTTPS.
    let job = job_file(&env, "job_tls", "[1, 2]", "replica_a");
    let (ok, out) = with_ca(&ca_a, &["submit", path_str(&job)]);
    assert!(ok, "{out}");
    wait_for("the job to stream", WAIT, || {
        let (ok, out) = with_ca(&ca_a, &["jobs", "show", "job_tls", "--json"]);
        ok && serde_json::from_str::<serde_json::Value>(&out)
            .is_ok_and(|job| job["state"] == "streaming")
    });
    write_load(&env, 1, 50);
    converge(&env, "replica_a", "1, 2");

    // Prometheus scrapes /metrics over HTTPS, trusting the CA.
    let prometheus = Prometheus::start(
        dir,
        &format!("localhost:{port}"),
        &rules_without_waits(),
        Some(&ca_a),
    );
    wait_for("Prometheus to scrape over HTTPS", WAIT, || {
        prometheus.target_health().0 == "up"
    });
    drop(prometheus);

    // Not trusted without the CA (the system's roots), nor with another one; plain http
    // gets no answer.
    let (ok, out) = cli(&url, &["jobs", "list"]);
    assert!(
        !ok && out.contains("invalid peer certificate: UnknownIssuer") && out.contains("--ca-file"),
        "{out}"
    );
    let (ok, out) = with_ca(&ca_b, &["jobs", "list"]);
    assert!(!ok && out.contains("certificate"), "{out}");
    let (ok, out) = cli(&url.replace("https://", "http://"), &["jobs", "list"]);
    assert!(!ok && out.contains("cannot talk to the server"), "{out}");

    // Renewed (by another CA here, to tell the two apart): the next connection gets the
    // new certificate, with no restart.
    std::thread::sleep(Duration::from_millis(1100));
    write(dir, "server.key", &key_b);
    write(dir, "server.pem", &cert_b);
    wait_for("the renewed certificate to be served", WAIT, || {
        with_ca(&ca_b, &["jobs", "list"]).0
    });
    let (ok, out) = with_ca(&ca_a, &["jobs", "list"]);
    assert!(!ok && out.contains("certificate"), "{out}");
    assert!(
        server.output().contains("API certificate reloaded"),
        "{}",
        server.output()
    );

    // A renewal that cannot be used keeps the certificate before it, with a warning.
    std::thread::sleep(Duration::from_millis(1100));
    write(dir, "server.pem", "not a certificate");
    let (ok, out) = with_ca(&ca_b, &["jobs", "show", "job_tls"]);
    assert!(ok && out.contains("streaming"), "{out}");
    wait_for("the warning about the unusable renewal", WAIT, || {
        server
            .output()
            .contains("the API's certificate files changed but cannot be used")
    });
}

#[test]
fn certificate_files_that_cannot_serve_stop_the_start_and_are_named() {
    let env = setup_env();
    let dir = env.dir.path();
    let (_, cert_a, key_a) = signed_server_cert("CA A");
    let (_, _, key_b) = signed_server_cert("CA B");
    let cert = write(dir, "server.pem", &cert_a);
    let key = write(dir, "server.key", &key_a);
    let other_key = write(dir, "other.key", &key_b);
    let missing = dir.join("missing.key");
    let garbage = write(dir, "garbage.pem", "not a key, not a certificate\n");
    let cut = write(dir, "cut.pem", &cert_a[..cert_a.len() / 2]);
    let cases: [(&Path, &Path, &str); 5] = [
        (&cert, &missing, "missing.key: No such file"),
        (
            &cert,
            &garbage,
            "garbage.pem: it holds no unencrypted PEM private key",
        ),
        (&garbage, &key, "garbage.pem holds no PEM certificate"),
        (
            &cut,
            &key,
            "cut.pem: its PEM section `CERTIFICATE` has no END line",
        ),
        (&cert, &other_key, "the key is not the certificate's"),
    ];
    for (cert, key, expected) in cases {
        let mut server = Server::spawn(
            &env,
            free_port().expect("port"),
            &["--tls-cert", path_str(cert), "--tls-key", path_str(key)],
            &[],
        );
        let status = server.wait_exit(WAIT);
        let out = server.output();
        assert!(!status.success(), "{out}");
        assert!(out.contains(expected), "expected `{expected}` in:\n{out}");
    }
    // One of the two alone is refused by the command line.
    let mut server = Server::spawn(
        &env,
        free_port().expect("port"),
        &["--tls-cert", path_str(&cert)],
        &[],
    );
    assert!(!server.wait_exit(WAIT).success());
    assert!(server.output().contains("--tls-key"), "{}", server.output());
}
