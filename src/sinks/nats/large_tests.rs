//! The NATS sink's large-transaction path against a real `nats-server -js` (started on a
//! free port in a temporary directory): the parts are published as they arrive, every
//! frame marked partial, an empty frame ends the transaction on each subject, and an
//! attempt after a failed one publishes every row exactly once.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Array, StringArray, UInt64Array};
use tokio::sync::mpsc;

use super::consumer::{DecodedFrame, StartAt, StreamTail};
use super::{NatsSink, NatsSinkConfig};
use crate::change::{fixtures, Cell, Lsn, Scope, TenantAction, TenantChange};
use crate::operators::columnar::LSN_COLUMN;
use crate::sinks::large::LiveParts;
use crate::sinks::spill::SpilledTxn;
use crate::sinks::{ApplyBatch, Delivery, Sink};

/// The large transaction's commit LSN.
const LSN: Lsn = 0x5000;
/// Rows per part (half per tenant).
const PART: usize = 400;
/// Parts of the large transaction.
const PARTS: usize = 4;

/// A `nats-server -js` on a free port, killed on drop.
struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = crate::embedded::pg_cluster::free_port().expect("free port");
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on PATH (scripts/install-deps.sh installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Server {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connected_sink(url: &str) -> NatsSink {
    let config = NatsSinkConfig {
        url: url.to_string(),
        stream: "HELIOS_big".into(),
        subject_prefix: "helios".into(),
        key_frame_every: 4,
        // Small frames: each part is several frames per subject.
        max_frame_bytes: 1024,
        duplicate_window: Duration::from_secs(120),
        max_encode_share: 1.0,
        access: Default::default(),
    };
    let mut sink = NatsSink::new(
        "big",
        0,
        config,
        Arc::new(Default::default()),
        Arc::new(Default::default()),
    );
    sink.reconnect().await.expect("connect to nats-server");
    sink
}

/// Inserts of ids `ids` at `lsn`, alternating between tenants 1 and 2.
fn inserts(lsn: Lsn, ids: std::ops::Range<usize>) -> ApplyBatch {
    let table = Arc::new(fixtures::table("t", &[("id", "text")], &[0]));
    ApplyBatch {
        commit_lsn: lsn,
        changes: ids
            .map(|i| TenantChange {
                scope: Scope::Tenant((1 + i % 2).to_string()),
                seq: i as u32,
                table: table.clone(),
                action: TenantAction::Upsert {
                    old: None,
                    new: vec![Cell::Text(i.to_string().into())],
                    insert: true,
                },
            })
            .collect(),
        history: Vec::new(),
    }
}

fn large_parts() -> Vec<ApplyBatch> {
    (0..PARTS)
        .map(|k| inserts(LSN, k * PART..(k + 1) * PART))
        .collect()
}

/// Every frame of the stream, from its start.
async fn read_stream(url: &str) -> Vec<DecodedFrame> {
    let mut tail = StreamTail::open(url, &Default::default(), "HELIOS_big", "", StartAt::First)
        .await
        .expect("open the stream");
    let mut frames = Vec::new();
    while let Some(f) = tail
        .next(Duration::from_millis(500))
        .await
        .expect("frames decode")
    {
        frames.push(f);
    }
    frames
}

/// The large transaction's frames on tenant `tenant`'s subject.
fn frames_of(frames: &[DecodedFrame], tenant: &str) -> Vec<DecodedFrame> {
    frames
        .iter()
        .filter(|f| f.tenant == tenant && f.last_lsn == LSN)
        .cloned()
        .collect()
}

/// The ids in `frames`, in order; every row at `LSN`.
fn ids(frames: &[DecodedFrame]) -> Vec<String> {
    let mut out = Vec::new();
    for f in frames {
        let lsns = f.batch.column_by_name(LSN_COLUMN).expect("lsn column");
        let lsns = lsns
            .as_any()
            .downcast_ref::<UInt64Array>()
            .expect("u64 lsn");
        assert!(lsns.iter().all(|l| l == Some(LSN)), "only the large one");
        let id = f.batch.column_by_name("id").expect("id column");
        let id = id.as_any().downcast_ref::<StringArray>().expect("text id");
        out.extend(id.iter().map(|v| v.expect("id").to_string()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transaction_is_published_part_by_part_and_once_after_a_failed_attempt() {
    let server = Server::start();
    let mut sink = connected_sink(&server.url).await;
    // A whole transaction first: the subjects hold a complete one before the large one.
    sink.apply(&[inserts(0x4000, 1_000_000..1_000_010)])
        .await
        .expect("apply a group");
    let parts = large_parts();

    // First attempt: the job stops after two parts arrived (the channel closes).
    let (tx, mut rx) = mpsc::channel(8);
    tx.send(Delivery::Part(parts[1].clone()))
        .await
        .expect("send");
    drop(tx);
    let mut spill = SpilledTxn::create(LSN).expect("spill");
    let mut live = LiveParts::new(parts[0].clone(), &mut rx, &mut spill, |_| {});
    assert!(sink.apply_large_live(&mut live).await.is_err());
    drop(sink);
    let early = read_stream(&server.url).await;
    for tenant in ["1", "2"] {
        let published = frames_of(&early, tenant);
        assert!(
            !published.is_empty(),
            "tenant {tenant}: the parts were published as they arrived, before the last"
        );
        assert!(
            published.iter().all(|f| f.partial_rows.is_some()),
            "tenant {tenant}: the transaction goes on after every frame published so far"
        );
    }
    let published_early: usize = ["1", "2"]
        .iter()
        .map(|t| ids(&frames_of(&early, t)).len())
        .sum();
    assert_eq!(published_early, 2 * PART, "the two parts that arrived");

    // A restarted sink applies the whole transaction from its spill file: it skips what
    // the stream has and goes on from there.
    let mut whole = SpilledTxn::create(LSN).expect("spill");
    for p in &parts {
        whole.append(p).expect("append");
    }
    let mut restarted = connected_sink(&server.url).await;
    let report = restarted.apply_large(&mut whole).await.expect("apply");
    assert_eq!(report.skipped, published_early as u64);
    assert_eq!(report.upserted as usize, PARTS * PART - published_early);
    let mut tenants: Vec<_> = report
        .tenants
        .iter()
        .map(|t| (t.tenant.as_str(), t.lsn))
        .collect();
    tenants.sort();
    assert_eq!(tenants, [("1", LSN), ("2", LSN)]);

    let frames = read_stream(&server.url).await;
    for tenant in ["1", "2"] {
        let mine = frames_of(&frames, tenant);
        let want: Vec<String> = (0..PARTS * PART)
            .filter(|i| (1 + i % 2).to_string() == tenant)
            .map(|i| i.to_string())
            .collect();
        assert_eq!(
            ids(&mine),
            want,
            "tenant {tenant}: every row once, in order"
        );
        let (last, leading) = mine.split_last().expect("frames");
        assert_eq!(
            last.partial_rows, None,
            "tenant {tenant}: the last frame ends it"
        );
        assert_eq!(
            last.batch.num_rows(),
            0,
            "tenant {tenant}: an empty end frame"
        );
        let mut so_far = 0;
        for f in leading {
            so_far += f.batch.num_rows();
            assert_eq!(f.partial_rows, Some(so_far), "tenant {tenant}: rows so far");
        }
    }

    // A replay of the whole transaction (a restart before it was acknowledged) publishes
    // nothing.
    let again = restarted.apply_large(&mut whole).await.expect("replay");
    assert_eq!((again.upserted, again.skipped), (0, (PARTS * PART) as u64));
    assert_eq!(read_stream(&server.url).await.len(), frames.len());
}
