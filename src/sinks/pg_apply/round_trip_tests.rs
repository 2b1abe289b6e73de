//! The round trip `auto` decides from follows a target whose round trip changes on a live
//! connection: a real PostgreSQL behind a proxy that delays every chunk by a settable time.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::change::fixtures;
use crate::sinks::pg_apply::round_trip::{SAMPLE_TIMEOUT, WINDOW};
use crate::sinks::worker::{auto_in_flight, AUTO_PIPELINE_DEPTH};
use crate::sinks::Sink;

/// Forwards connections to `127.0.0.1:port`, holding each chunk for the current delay
/// (milliseconds) in either direction.
struct DelayProxy {
    port: u16,
    delay_ms: Arc<AtomicU64>,
}

impl DelayProxy {
    fn start(port: u16) -> DelayProxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let listener = TcpListener::from_std(std_listener).expect("tokio listener");
        let proxy = DelayProxy {
            port: listener.local_addr().expect("proxy address").port(),
            delay_ms: Arc::new(AtomicU64::new(0)),
        };
        let delay = proxy.delay_ms.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(("127.0.0.1", port))
                    .await
                    .expect("proxy reaches the server");
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(forward(client_read, server_write, delay.clone()));
                tokio::spawn(forward(server_read, client_write, delay.clone()));
            }
        });
        proxy
    }

    fn set_delay(&self, ms: u64) {
        self.delay_ms.store(ms, Relaxed);
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let delay = delay_ms.load(Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

#[tokio::test]
async fn auto_follows_a_round_trip_that_changes_without_a_reconnect() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut proxy = None;
    let (_cluster, mut sink) = super::pipeline_tests::connected_with(
        dir.path(),
        &fixtures::inserts(10, 0..1),
        |cluster| {
            let p = DelayProxy::start(cluster.port());
            let dsn = format!(
                "host=127.0.0.1 port={} user=postgres dbname=replica",
                p.port
            );
            proxy = Some(p);
            dsn
        },
        Duration::ZERO,
    )
    .await;
    let proxy = proxy.expect("proxy started");
    let connected = sink.round_trip().expect("measured at connect");
    assert!(sink.upkeep_due(), "sampled on every upkeep (interval zero)");
    let slow = Duration::from_millis(10);
    assert!(connected < slow, "no delay yet: {connected:?}");

    // The link slows down: 5 ms each way. Until the window holds only slow samples the
    // round trip stays the fast one (a single long sample may be noise).
    proxy.set_delay(5);
    for i in 1..WINDOW {
        sink.upkeep(false).await;
        assert_eq!(sink.round_trip(), Some(connected), "after {i} slow samples");
    }
    sink.upkeep(false).await;
    let rtt = sink.round_trip().expect("sampled");
    assert!(rtt >= slow, "a full window of slow samples: {rtt:?}");
    assert_eq!(auto_in_flight(Some(rtt)), AUTO_PIPELINE_DEPTH);

    // The link is fast again, but a group is in flight: no sample is taken behind it.
    proxy.set_delay(0);
    let group = fixtures::inserts(20, 1..3);
    sink.set_watermark(group.commit_lsn);
    let flight = sink
        .send(std::slice::from_ref(&group))
        .await
        .expect("sent in flight");
    sink.upkeep(false).await;
    assert_eq!(
        sink.round_trip(),
        Some(rtt),
        "nothing sampled while in flight"
    );
    assert!(
        sink.upkeep_due(),
        "still due: the task settles its groups for it"
    );
    let outcome = flight.await;
    outcome.as_ref().expect("group applied");
    sink.settle(&outcome);

    // Once settled, one fast sample is enough: a falling round trip shows at once.
    sink.upkeep(false).await;
    let fast = sink.round_trip().expect("sampled");
    assert!(fast < slow, "fast again: {fast:?}");

    // A target that does not answer a sample in time: the sink task waits at most
    // SAMPLE_TIMEOUT, and the connection stays usable once the answer comes.
    proxy.set_delay(3 * SAMPLE_TIMEOUT.as_millis() as u64 / 2);
    let started = std::time::Instant::now();
    sink.upkeep(false).await;
    let waited = started.elapsed();
    assert!(
        waited >= SAMPLE_TIMEOUT && waited < SAMPLE_TIMEOUT + Duration::from_millis(500),
        "gave up after {waited:?}"
    );
    proxy.set_delay(0);
    let after = fixtures::inserts(30, 3..4);
    sink.set_watermark(after.commit_lsn);
    sink.apply(std::slice::from_ref(&after))
        .await
        .expect("the connection still applies");
}
