//! The replication session (`cdc::transport`) against a real server: each password
//! method the server may ask for, a wrong password refused for good, the Unix socket, a
//! stream started on a slot created on the same session, and a backlog read (in batches
//! when the reads are small) without holding back what follows it.

use std::time::Duration;

use helios_repl::cdc::pgoutput::{self, PgOutputMessage};
use helios_repl::cdc::transport::{
    ReplicationConnection, ReplicationStream, SourceAddress, StreamFrame, StreamOptions,
    TransportError,
};

use crate::harness::Env;

/// Roles whose passwords are checked by SCRAM-SHA-256, MD5 and in clear text.
const ROLES: &str = "SET password_encryption = 'scram-sha-256';
    CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'p@ss word';
    SET password_encryption = 'md5';
    CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5 secret';
    CREATE ROLE clear_user LOGIN REPLICATION PASSWORD 'clear';
    CREATE TABLE public.t (id int PRIMARY KEY, v text);
    CREATE PUBLICATION pub_t FOR TABLE public.t;";

fn address(env: &Env, user: &str, password: &str) -> SourceAddress {
    let dsn = format!(
        "host=127.0.0.1 port={} user={user} password='{password}' dbname=app",
        env.source.port()
    );
    SourceAddress::from_dsn(&dsn, "helios-repl test").expect("address")
}

#[test]
fn the_session_logs_in_with_each_password_method_and_streams() {
    let env = Env::start(ROLES);
    // The password methods come first in pg_hba.conf, before initdb's trust lines.
    let hba = env.source.root().join("data").join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    std::fs::write(
        &hba,
        format!(
            "host all scram_user 127.0.0.1/32 scram-sha-256\n\
             host all md5_user 127.0.0.1/32 md5\n\
             host all clear_user 127.0.0.1/32 password\n{old}"
        ),
    )
    .expect("write pg_hba.conf");
    env.on_source("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(300));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for (user, password) in [
            ("scram_user", "p@ss word"),
            ("md5_user", "md5 secret"),
            ("clear_user", "clear"),
        ] {
            let mut conn = ReplicationConnection::connect(&address(&env, user, password))
                .await
                .unwrap_or_else(|e| panic!("{user} logs in: {e}"));
            let rows = conn
                .simple_query("IDENTIFY_SYSTEM")
                .await
                .expect("identify");
            assert_eq!(rows.len(), 1, "{user}: one IDENTIFY_SYSTEM row");
            assert_eq!(rows[0][3].as_deref(), Some("app"), "{user}: the database");
            assert!(conn.server_major() >= 14, "server version read at start-up");

            let err = ReplicationConnection::connect(&address(&env, user, "wrong"))
                .await
                .err()
                .expect("a wrong password is refused");
            assert!(matches!(err, TransportError::Auth(_)), "{user}: {err:?}");
            assert!(!err.is_transient(), "a wrong password is not retried");
            assert!(!err.to_string().contains("wrong"), "no password in: {err}");
        }

        // Over the Unix socket (trust), a slot created on the session, then its stream.
        let dsn = format!(
            "host={} port={} user=postgres dbname=app",
            env.source.root().display(),
            env.source.port()
        );
        let unix = SourceAddress::from_dsn(&dsn, "helios-repl test").expect("address");
        let mut conn = ReplicationConnection::connect(&unix)
            .await
            .expect("unix socket");
        let created = conn
            .simple_query("CREATE_REPLICATION_SLOT s_test LOGICAL pgoutput")
            .await
            .expect("create slot");
        assert_eq!(created[0][0].as_deref(), Some("s_test"));
        let err = conn
            .simple_query("CREATE_REPLICATION_SLOT s_test LOGICAL pgoutput")
            .await
            .expect_err("a second slot of the same name");
        assert!(err.to_string().contains("already exists"), "{err}");
        let options = StreamOptions {
            publication: "pub_t".into(),
            streaming: true,
        };
        let mut stream = conn
            .start_logical("s_test", 0, &options)
            .await
            .expect("start");
        assert!(stream.streaming(), "version 2 on a 14+ server");
        env.on_source("INSERT INTO public.t VALUES (1, 'one')");
        let mut tags = Vec::new();
        while !tags.contains(&b'C') {
            let frame = tokio::time::timeout(Duration::from_secs(30), stream.recv())
                .await
                .expect("a frame within 30 s")
                .expect("frame");
            if let StreamFrame::XLogData { data, .. } = frame {
                tags.push(data[0]);
            }
        }
        assert_eq!(tags, b"BRIC", "Begin, Relation, Insert, Commit");
        stream.set_applied(0x1000);
        stream.close().await.expect("orderly end");
    });
}

/// Reads frames as the job's reader does for batching (each `BEGIN`'s lag behind its
/// commit goes to the stream) until `commits` transactions have ended; their commits'
/// LSNs.
async fn read_commits(stream: &mut ReplicationStream, commits: usize) -> Vec<u64> {
    let mut seen = Vec::new();
    while seen.len() < commits {
        let frame = tokio::time::timeout(Duration::from_secs(60), stream.recv())
            .await
            .expect("a frame within 60 s")
            .expect("frame");
        let StreamFrame::XLogData {
            data, send_time, ..
        } = frame
        else {
            continue;
        };
        match pgoutput::decode(&data).expect("decode") {
            PgOutputMessage::Begin(begin) => stream.saw_begin(send_time - begin.commit_time_micros),
            PgOutputMessage::Commit(commit) => seen.push(commit.commit_lsn),
            _ => {}
        }
    }
    seen
}

#[test]
fn a_backlog_is_read_whole_and_what_follows_is_not_held_back() {
    let env = Env::start(
        "CREATE TABLE public.b (id int PRIMARY KEY, v text);
         CREATE PUBLICATION pub_b FOR TABLE public.b;",
    );
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=app",
        env.source.port()
    );
    let address = SourceAddress::from_dsn(&dsn, "helios-repl test").expect("address");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut conn = ReplicationConnection::connect(&address)
            .await
            .expect("connect over TCP");
        conn.simple_query("CREATE_REPLICATION_SLOT s_batch LOGICAL pgoutput")
            .await
            .expect("create slot");
        // A backlog: 400 transactions of 50 rows (about 2.5 MB of stream), committed 1.5 s
        // before the stream starts, so every BEGIN leaves the server long after its commit.
        env.on_source(
            "DO $$ BEGIN FOR i IN 0..399 LOOP
               INSERT INTO public.b SELECT g, repeat('x', 40) FROM generate_series(i * 50, i * 50 + 49) g;
               COMMIT;
             END LOOP; END $$",
        );
        std::thread::sleep(Duration::from_millis(1500));
        let options = StreamOptions {
            publication: "pub_b".into(),
            streaming: true,
        };
        let mut stream = conn
            .start_logical("s_batch", 0, &options)
            .await
            .expect("start");
        let backlog = read_commits(&mut stream, 400).await;
        assert_eq!(backlog.len(), 400);
        // Whether these reads were batched depends on how far the reader kept up (a
        // reader that falls behind takes large reads, which are not batched); the
        // transport's own test shows batching start deterministically. Here: the whole
        // backlog came, and what follows it is not held back.
        eprintln!("backlog read: {:?}", stream.read_counts());

        // Caught up: a transaction written now arrives at once, not after a batch's worth
        // of others (there are none) or a keepalive, and its BEGIN, sent at once after its
        // commit, ends the batching: the next one is read unbatched.
        for id in [-1, -2] {
            let before = stream.read_counts();
            let sent = std::time::Instant::now();
            // Committed synchronously: the cluster's `synchronous_commit = off` would let the
            // commit wait for the WAL writer (up to 600 ms) before the walsender sees it.
            env.on_source(&format!(
                "SET synchronous_commit = on; INSERT INTO public.b VALUES ({id}, 'live')"
            ));
            read_commits(&mut stream, 1).await;
            let took = sent.elapsed();
            assert!(
                took < Duration::from_secs(2),
                "live transaction {id} took {took:?}"
            );
            if id == -2 {
                let after = stream.read_counts();
                assert_eq!(
                    after.batched, before.batched,
                    "a caught-up transaction is read unbatched: {after:?}"
                );
            }
        }
        stream.close().await.expect("orderly end");
    });
}
