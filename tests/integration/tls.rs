//! TLS to the source and the target, as libpq's `sslmode`, `sslrootcert`, `sslcert`,
//! `sslkey`, `sslpassword` and `sslcrl` say. Both servers accept TLS sessions only (`hostnossl … reject`); the target
//! lets the replicator's user in by client certificate only. And a NATS sink publishing
//! to a `nats-server` that takes TLS clients with certificates only. Certificates come
//! from a test CA made here (rcgen): the servers' name `localhost`, not `127.0.0.1`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use helios_repl::cdc::transport::{ReplicationConnection, SourceAddress, TransportError};
use helios_repl::embedded::pg_cluster::free_port;
use helios_repl::pg_connect::OnClose;
use helios_repl::sinks::nats::access::NatsAccess;
use helios_repl::sinks::nats::consumer::{StartAt, StreamTail};

use crate::harness::{wait_for, Env, Replicator};

/// Only TLS sessions, but for `plain_ok`: `scram_user` by password (SCRAM), the rest
/// trusted (the harness's `psql` sessions use `prefer`).
const SOURCE_HBA: &str = "local all all trust
hostnossl all plain_ok 127.0.0.1/32 trust
hostnossl all all all reject
hostssl all scram_user 127.0.0.1/32 scram-sha-256
hostssl replication scram_user 127.0.0.1/32 scram-sha-256
hostssl all all 127.0.0.1/32 trust
hostssl replication all 127.0.0.1/32 trust
";

/// Only TLS sessions; user `helios` by client certificate.
const TARGET_HBA: &str = "local all all trust
hostnossl all all all reject
hostssl all helios 127.0.0.1/32 cert
hostssl all postgres 127.0.0.1/32 trust
";

/// A test CA, a server certificate it signed for `localhost`, a client certificate for
/// user `helios`, another CA that signed none of them, and two revocation lists of the
/// test CA: one revoking the server certificate, one revoking another.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
    /// `client_key` in encrypted PKCS#8 (PBKDF2-SHA256, AES-256-CBC), password
    /// [`KEY_PASSWORD`].
    client_key_encrypted: String,
    other_ca: String,
    crl_revoking_server: String,
    crl_clean: String,
}

/// The password of the encrypted client key.
const KEY_PASSWORD: &str = "helios key";

/// `key` in encrypted PKCS#8 as OpenSSL 3 writes it by default, password [`KEY_PASSWORD`].
fn encrypted(key: &KeyPair) -> String {
    let der = key.serialize_der();
    let info = pkcs8::PrivateKeyInfo::try_from(der.as_slice()).expect("PKCS#8");
    let params =
        pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(2048, b"test salt", &[7; 16])
            .expect("parameters");
    let document = info
        .encrypt_with_params(params, KEY_PASSWORD)
        .expect("encrypt");
    document
        .to_pem("ENCRYPTED PRIVATE KEY", pkcs8::LineEnding::LF)
        .expect("PEM")
        .to_string()
}

/// The server certificate's serial number.
const SERVER_SERIAL: u64 = 4242;

/// A revocation list of `ca` revoking the serial numbers `revoked`.
fn crl(ca: &rcgen::Certificate, key: &KeyPair, revoked: &[u64]) -> String {
    let params = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2020, 1, 1),
        next_update: rcgen::date_time_ymd(2099, 1, 1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|&serial| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(serial),
                revocation_time: rcgen::date_time_ymd(2020, 1, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    params
        .signed_by(ca, key)
        .expect("revocation list")
        .pem()
        .expect("PEM")
}

pub(crate) fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    (params.self_signed(&key).expect("CA certificate"), key)
}

fn pki() -> Pki {
    let (ca_cert, ca_key) = ca("helios test CA");
    let server_key = KeyPair::generate().expect("server key");
    let mut server = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server.serial_number = Some(rcgen::SerialNumber::from(SERVER_SERIAL));
    let server_cert = server
        .signed_by(&server_key, &ca_cert, &ca_key)
        .expect("server certificate");
    let client_key = KeyPair::generate().expect("client key");
    let mut client = CertificateParams::new(Vec::<String>::new()).expect("params");
    client.distinguished_name.push(DnType::CommonName, "helios");
    let client_cert = client
        .signed_by(&client_key, &ca_cert, &ca_key)
        .expect("client certificate");
    Pki {
        ca: ca_cert.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
        client_key_encrypted: encrypted(&client_key),
        other_ca: ca("another CA").0.pem(),
        crl_revoking_server: crl(&ca_cert, &ca_key, &[7, SERVER_SERIAL]),
        crl_clean: crl(&ca_cert, &ca_key, &[7]),
    }
}

/// The PEM files the replicator reads, under the test's directory.
struct Files {
    ca: PathBuf,
    other_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    client_key_encrypted: PathBuf,
    crl_revoking_server: PathBuf,
    crl_clean: PathBuf,
}

fn tls_env(pki: &Pki) -> (Env, Files) {
    let env = Env::start(
        "CREATE TABLE public.orders (tenant_id int, id int, note text, PRIMARY KEY (tenant_id, id));
         INSERT INTO public.orders SELECT 1 + i % 2, i, 'row ' || i FROM generate_series(1, 200) i;
         SET password_encryption = 'scram-sha-256';
         CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'p w';
         CREATE ROLE plain_ok LOGIN REPLICATION;",
    );
    env.target
        .psql("postgres", "CREATE ROLE helios LOGIN SUPERUSER")
        .expect("create role");
    for cluster in [&env.source, &env.target] {
        let hba = if std::ptr::eq(cluster, &env.source) {
            SOURCE_HBA
        } else {
            TARGET_HBA
        };
        cluster
            .serve_tls(&pki.server_cert, &pki.server_key, &pki.ca, hba)
            .expect("serve TLS");
    }
    let write = |name: &str, text: &str| {
        let path = env.dir.path().join(name);
        std::fs::write(&path, text).expect("write PEM");
        path
    };
    let files = Files {
        ca: write("ca.pem", &pki.ca),
        other_ca: write("other-ca.pem", &pki.other_ca),
        client_cert: write("client.crt", &pki.client_cert),
        client_key: write("client.key", &pki.client_key),
        client_key_encrypted: write("client-encrypted.key", &pki.client_key_encrypted),
        crl_revoking_server: write("revoking.crl", &pki.crl_revoking_server),
        crl_clean: write("clean.crl", &pki.crl_clean),
    };
    (env, files)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A job of tenant 1 from `source_dsn` to `target_dsn`, written under `dir`.
fn job(dir: &Path, name: &str, source_dsn: &str, target_dsn: &str) -> PathBuf {
    let text = format!(
        "name = \"{name}\"\n[source]\ndsn = \"{source_dsn}\"\npublication = \"pub_{slot}\"\nslot = \"slot_{slot}\"\n\
         [tenants]\ninclude = [1]\n[[tables]]\nname = \"public.orders\"\n\
         [[sinks]]\nkind = \"postgres\"\ndsn = \"{target_dsn}\"\n",
        slot = name.replace('-', "_"),
    );
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).expect("write job");
    file
}

#[test]
fn replicates_over_verified_tls_with_a_client_certificate() {
    let pki = pki();
    let (env, files) = tls_env(&pki);
    // The source by address: verify-ca checks the chain (against a revocation list that
    // does not name the server's certificate), not the name.
    let source = format!(
        "host=127.0.0.1 port={} user=postgres dbname=app sslmode=verify-ca sslrootcert={} sslcrl={}",
        env.source.port(),
        path(&files.ca),
        path(&files.crl_clean)
    );
    // The target by name, with the client certificate as the only way in; its key
    // encrypted (sslpassword, percent-encoded in the URL).
    let target = format!(
        "postgresql://helios@localhost:{}/replica?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}&sslpassword={}",
        env.target.port(),
        path(&files.ca),
        path(&files.client_cert),
        path(&files.client_key_encrypted),
        KEY_PASSWORD.replace(' ', "%20")
    );
    let mut repl = Replicator::start_inline(&job(env.dir.path(), "tls-ok", &source, &target));
    let count = "SELECT count(*) FROM public.orders WHERE tenant_id = 1";
    env.wait_converged(count, Duration::from_secs(60));
    // Changes after the snapshot come through the (encrypted) replication stream.
    env.on_source(
        "INSERT INTO public.orders SELECT 1, i, 'late' FROM generate_series(1001, 1100) i",
    );
    env.wait_converged(count, Duration::from_secs(60));

    let walsenders = env.on_source(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.backend_type = 'walsender' AND s.ssl",
    );
    assert_eq!(walsenders, "1", "the replication session is encrypted");
    let by_certificate = env.on_target(
        "SELECT count(*) > 0 FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.usename = 'helios' AND s.ssl AND s.client_dn = '/CN=helios'",
    );
    assert_eq!(
        by_certificate, "t",
        "the sink logs in by client certificate"
    );
    let out = crate::harness::without_colours(&repl.output());
    assert!(
        out.contains("TLS session host=127.0.0.1 mode=verify-ca protocol=TLSv1_3"),
        "the replication session says it is encrypted, and how:\n{out}"
    );
    assert!(
        !out.contains(KEY_PASSWORD) && !out.contains("helios%20key"),
        "the key's password is never printed:\n{out}"
    );
    assert_eq!(repl.stop().code(), Some(0), "{}", repl.output());
}

/// Runs the replicator on a job until its output says `expected`, then stops it.
fn fails_saying(env: &Env, name: &str, source: &str, target: &str, expected: &[&str]) {
    let mut repl = Replicator::start_inline(&job(env.dir.path(), name, source, target));
    wait_for(
        &format!("`{name}` to say {expected:?}"),
        Duration::from_secs(30),
        || {
            let out = repl.output();
            expected.iter().all(|e| out.contains(e))
        },
    );
    repl.kill();
    let rows = env.try_on_target("SELECT count(*) FROM public.orders");
    assert!(
        rows.is_none() || rows.as_deref() == Some("0"),
        "`{name}` must not have replicated: {rows:?}"
    );
}

#[test]
fn tls_settings_that_cannot_work_are_named() {
    let pki = pki();
    let (env, files) = tls_env(&pki);
    let sp = env.source.port();
    let target = format!(
        "host=localhost port={} user=helios dbname=replica sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        env.target.port(),
        path(&files.ca),
        path(&files.client_cert),
        path(&files.client_key)
    );
    // No TLS: the server's own refusal, retried.
    fails_saying(
        &env,
        "tls-off",
        &format!("host=127.0.0.1 port={sp} user=postgres dbname=app sslmode=disable"),
        &target,
        &["no encryption", "retrying"],
    );
    // verify-full by address: the certificate names `localhost` only.
    fails_saying(
        &env,
        "tls-name",
        &format!(
            "host=127.0.0.1 port={sp} user=postgres dbname=app sslmode=verify-full sslrootcert={}",
            path(&files.ca)
        ),
        &target,
        &["certificate not valid for name", "retrying"],
    );
    // A CA that did not sign the server's certificate.
    fails_saying(
        &env,
        "tls-issuer",
        &format!(
            "host=localhost port={sp} user=postgres dbname=app sslmode=verify-full sslrootcert={}",
            path(&files.other_ca)
        ),
        &target,
        &["UnknownIssuer", "retrying"],
    );
    // The server's certificate revoked by the CA's list (sslcrl).
    fails_saying(
        &env,
        "tls-revoked",
        &format!(
            "host=localhost port={sp} user=postgres dbname=app sslmode=verify-full sslrootcert={} sslcrl={}",
            path(&files.ca),
            path(&files.crl_revoking_server)
        ),
        &target,
        &["Revoked", "retrying"],
    );
    // The target without the client certificate.
    fails_saying(
        &env,
        "tls-no-client-cert",
        &format!(
            "host=localhost port={sp} user=postgres dbname=app sslmode=verify-full sslrootcert={}",
            path(&files.ca)
        ),
        &format!(
            "host=localhost port={} user=helios dbname=replica sslmode=verify-full sslrootcert={}",
            env.target.port(),
            path(&files.ca)
        ),
        &["connection requires a valid client certificate"],
    );
    // An encrypted client key and a password that does not decrypt it: named, not
    // retried, the password not printed.
    let out = ends_saying(
        &env,
        "tls-key-password",
        &format!(
            "host=localhost port={sp} user=postgres dbname=app sslmode=verify-full sslrootcert={} sslcert={} sslkey={} sslpassword=not-the-key-pass",
            path(&files.ca),
            path(&files.client_cert),
            path(&files.client_key_encrypted)
        ),
        &target,
        &[
            "is encrypted and sslpassword does not decrypt it",
            path(&files.client_key_encrypted),
        ],
    );
    assert!(!out.contains("not-the-key-pass"), "{out}");
    // A root certificate file that is not there: named, and not retried.
    let missing = env.dir.path().join("missing-ca.pem");
    ends_saying(
        &env,
        "tls-missing-file",
        &format!(
            "host=localhost port={sp} user=postgres dbname=app sslmode=verify-full sslrootcert={}",
            path(&missing)
        ),
        &target,
        &[
            "cannot read root certificate file (sslrootcert)",
            path(&missing),
        ],
    );
}

/// Runs the replicator on a job until it ends by itself, its output saying `expected` and
/// no retry (a setting of ours that cannot work is not retried); returns the output.
fn ends_saying(env: &Env, name: &str, source: &str, target: &str, expected: &[&str]) -> String {
    let mut repl = Replicator::start_inline(&job(env.dir.path(), name, source, target));
    wait_for("the job to end", Duration::from_secs(30), || {
        !repl.is_running()
    });
    let out = repl.output();
    assert!(expected.iter().all(|e| out.contains(e)), "{out}");
    assert!(!out.contains("retrying"), "{out}");
    out
}

/// The replication session speaks the protocol itself: the same settings, the same checks.
#[test]
fn the_replication_session_makes_the_same_checks() {
    let pki = pki();
    let (env, files) = tls_env(&pki);
    let sp = env.source.port();
    let at =
        |host: &str, tls: &str| format!("host={host} port={sp} user=postgres dbname=app {tls}");
    let ca = format!("sslrootcert={}", path(&files.ca));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let connect = |dsn: String| {
        let address = SourceAddress::from_dsn(&dsn, "helios-repl tls test").expect("address");
        runtime.block_on(async {
            let mut session = ReplicationConnection::connect(&address).await?;
            session
                .simple_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .await
        })
    };
    // Encrypted whenever the session gets in, checked or not.
    for tls in [
        format!("sslmode=verify-ca {ca}"),
        "sslmode=require".to_string(),
        "sslmode=prefer".to_string(),
    ] {
        let rows = connect(at("127.0.0.1", &tls)).unwrap_or_else(|e| panic!("{tls}: {e}"));
        assert_eq!(rows, vec![vec![Some("t".to_string())]], "{tls}");
    }
    let rows = connect(at("localhost", &format!("sslmode=verify-full {ca}"))).expect("verify-full");
    assert_eq!(rows, vec![vec![Some("t".to_string())]]);

    let failure = |dsn: String| match connect(dsn.clone()) {
        Ok(rows) => panic!("{dsn}: connected ({rows:?})"),
        Err(e) => e,
    };
    let err = failure(at("127.0.0.1", &format!("sslmode=verify-full {ca}")));
    assert!(
        err.to_string()
            .contains("certificate not valid for name \"127.0.0.1\""),
        "{err}"
    );
    assert!(err.is_transient(), "a certificate can be renewed: {err}");
    let err = failure(at(
        "localhost",
        &format!("sslmode=verify-ca sslrootcert={}", path(&files.other_ca)),
    ));
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    let err = failure(at("127.0.0.1", "sslmode=disable"));
    assert!(
        matches!(&err, TransportError::Auth(m) if m.contains("no encryption")),
        "{err}"
    );
    let missing = env.dir.path().join("missing.pem");
    let err = failure(at(
        "127.0.0.1",
        &format!("sslmode=verify-ca sslrootcert={}", path(&missing)),
    ));
    assert!(err.to_string().contains(path(&missing)), "{err}");
    assert!(!err.is_transient(), "a missing file needs someone: {err}");
    // The server's Unix-domain socket never offers TLS.
    let socket = env.source.root().to_str().expect("utf-8").to_string();
    let err = failure(at(&socket, "sslmode=require"));
    assert_eq!(
        err.to_string(),
        "sslmode=require: TLS is not available over a Unix-domain socket"
    );
    assert!(
        connect(at(&socket, "sslmode=prefer")).is_ok(),
        "prefer goes plain there"
    );

    // SCRAM bound to the TLS session (SCRAM-SHA-256-PLUS, tls-server-end-point): the
    // server checks the binding against its own certificate, so getting in with
    // `channel_binding=require` shows the binding was right.
    let scram = |tls: &str| {
        format!("host=127.0.0.1 port={sp} user=scram_user password='p w' dbname=app {tls}")
    };
    for tls in [
        "sslmode=require channel_binding=require",
        "sslmode=verify-ca channel_binding=prefer",
        "sslmode=require channel_binding=disable",
    ] {
        let rows = connect(scram(&format!("{tls} {ca}"))).unwrap_or_else(|e| panic!("{tls}: {e}"));
        assert_eq!(rows, vec![vec![Some("t".to_string())]], "{tls}");
    }
    // Required, but the server let us in without a password (trust): refused, as libpq does.
    let err = failure(at("127.0.0.1", "sslmode=require channel_binding=require"));
    assert!(err.to_string().contains("without channel binding"), "{err}");

    // sslmode=allow: plain first, TLS once the server refuses the plain session; the
    // replication session and an ordinary one alike. `plain_ok` may log in plain.
    let ordinary = |dsn: String| {
        runtime.block_on(async {
            let client = helios_repl::pg_connect::connect(&dsn, "test", OnClose::Debug).await?;
            let row = client
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await?;
            Ok::<bool, Box<dyn std::error::Error>>(row.get(0))
        })
    };
    let as_plain_ok =
        |tls: &str| format!("host=127.0.0.1 port={sp} user=plain_ok dbname=app {tls}");
    for (dsn, encrypted) in [
        (at("127.0.0.1", "sslmode=allow"), true),
        (at("127.0.0.1", &format!("sslmode=allow {ca}")), true),
        (as_plain_ok("sslmode=allow"), false),
        (as_plain_ok("sslmode=prefer"), true),
    ] {
        let rows = connect(dsn.clone()).unwrap_or_else(|e| panic!("{dsn}: {e}"));
        let shown = if encrypted { "t" } else { "f" };
        assert_eq!(rows, vec![vec![Some(shown.to_string())]], "{dsn}");
        let ssl = ordinary(dsn.clone()).unwrap_or_else(|e| panic!("{dsn}: {e}"));
        assert_eq!(ssl, encrypted, "{dsn}");
    }
    // The TLS try checks what `prefer` would: a root given must have signed the chain.
    let err = failure(at(
        "127.0.0.1",
        &format!("sslmode=allow sslrootcert={}", path(&files.other_ca)),
    ));
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert!(
        connect(at(&socket, "sslmode=allow")).is_ok(),
        "allow stays plain on the Unix-domain socket"
    );
}

/// A `nats-server -js` that takes TLS clients with a certificate from the test CA only;
/// killed on drop.
struct TlsNats {
    child: Child,
    url: String,
}

impl TlsNats {
    fn start(dir: &Path, server_cert: &Path, server_key: &Path, ca: &Path) -> TlsNats {
        let port = free_port().expect("port");
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.join("nats-tls"))
            .args(["--tlsverify", "--tlscert", path(server_cert), "--tlskey"])
            .arg(server_key)
            .arg("--tlscacert")
            .arg(ca)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server (scripts/install-deps.sh installs it)");
        wait_for("nats-server to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        TlsNats {
            child,
            url: format!("tls://localhost:{port}"),
        }
    }
}

impl Drop for TlsNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Rows in job `job`'s stream, read with `access`.
fn rows_in_stream(url: &str, access: &NatsAccess, job: &str) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut tail = StreamTail::open(url, access, &format!("HELIOS_{job}"), "", StartAt::First)
            .await
            .expect("open the stream over TLS");
        let mut rows = 0;
        while let Some(frame) = tail
            .next(Duration::from_secs(2))
            .await
            .expect("every message decodes")
        {
            rows += frame.batch.num_rows();
        }
        rows
    })
}

#[test]
fn a_nats_sink_publishes_over_tls_with_a_client_certificate() {
    let pki = pki();
    let env = Env::start(
        "CREATE TABLE public.orders (tenant_id int, id int, note text, PRIMARY KEY (tenant_id, id));
         INSERT INTO public.orders SELECT 1 + i % 2, i, 'row ' || i FROM generate_series(1, 200) i;",
    );
    let write = |name: &str, text: &str| {
        let file = env.dir.path().join(name);
        std::fs::write(&file, text).expect("write PEM");
        file
    };
    let ca = write("ca.pem", &pki.ca);
    let nats = TlsNats::start(
        env.dir.path(),
        &write("nats.crt", &pki.server_cert),
        &write("nats.key", &pki.server_key),
        &ca,
    );
    let access = NatsAccess {
        tls_ca_file: Some(ca.clone()),
        tls_cert_file: Some(write("client.crt", &pki.client_cert)),
        tls_key_file: Some(write("client.key", &pki.client_key)),
        credentials_file: None,
    };
    let nats_job = |name: &str, access: &NatsAccess| {
        let file = job(env.dir.path(), name, &env.source_dsn(), &env.target_dsn());
        let mut text = std::fs::read_to_string(&file).expect("job");
        text += &format!("[[sinks]]\nkind = \"nats\"\nurl = \"{}\"\n", nats.url);
        for (key, value) in [
            ("tls_ca_file", &access.tls_ca_file),
            ("tls_cert_file", &access.tls_cert_file),
            ("tls_key_file", &access.tls_key_file),
        ] {
            if let Some(value) = value {
                text += &format!("{key} = \"{}\"\n", path(value));
            }
        }
        std::fs::write(&file, text).expect("job");
        file
    };

    let mut repl = Replicator::start_inline(&nats_job("nats-tls", &access));
    let count = "SELECT count(*) FROM public.orders WHERE tenant_id = 1";
    env.wait_converged(count, Duration::from_secs(60));
    wait_for(
        "tenant 1's rows in the stream",
        Duration::from_secs(60),
        || rows_in_stream(&nats.url, &access, "nats-tls") == 100,
    );
    // `tail` reaches the same stream with the same files.
    let out = Command::new(env!("CARGO_BIN_EXE_helios-repl"))
        .args([
            "tail",
            "--nats-url",
            &nats.url,
            "--job",
            "nats-tls",
            "--from-start",
        ])
        .args(["--max-frames", "1", "--idle-exit-secs", "5"])
        .args(["--nats-tls-ca-file", path(&ca)])
        .args([
            "--nats-tls-cert-file",
            path(access.tls_cert_file.as_deref().expect("cert")),
        ])
        .args([
            "--nats-tls-key-file",
            path(access.tls_key_file.as_deref().expect("key")),
        ])
        .output()
        .expect("run tail");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("tenant 1 table public.orders"),
        "{printed}"
    );
    assert_eq!(repl.stop().code(), Some(0), "{}", repl.output());

    // Without the client certificate the server lets no one in: the sink says so and
    // publishes nothing.
    let no_cert = NatsAccess {
        tls_ca_file: Some(ca.clone()),
        ..NatsAccess::default()
    };
    let mut repl = Replicator::start_inline(&nats_job("nats-tls-no-cert", &no_cert));
    let said = format!("connect to {}", nats.url);
    wait_for(
        "the NATS sink to name what failed",
        Duration::from_secs(60),
        || repl.output().contains(&said),
    );
    repl.kill();
    let err = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(StreamTail::open(
            &nats.url,
            &no_cert,
            "HELIOS_nats-tls",
            "",
            StartAt::First,
        ))
        .err()
        .expect("no client certificate, no session");
    assert!(err.to_string().contains(&said), "{err}");
}
