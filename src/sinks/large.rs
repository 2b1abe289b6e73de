//! A large transaction's parts as they reach a sink task, for a sink that applies them
//! while the rest still arrives ([`crate::sinks::Sink::apply_large_live`]).
//!
//! The transaction is already committed on the source when its first part arrives (the
//! reader replays only committed transactions), so nothing is applied that the source
//! could still roll back. Each part is appended to the transaction's [`SpilledTxn`] before
//! the sink sees it: if the live attempt fails, the sink task takes the rest of the parts
//! into the spill file ([`LiveParts::finish`]) and retries the whole transaction from it,
//! as it would for a transaction spilled first.

use tokio::sync::mpsc;

use crate::change::Lsn;
use crate::sinks::backlog::Load;
use crate::sinks::spill::{SpillError, SpillParts, SpilledTxn};
use crate::sinks::versions::SameTxnVersions;
use crate::sinks::{ApplyBatch, Delivery, SinkError};

/// Why the parts stopped before the last one: the sink task gives up the transaction
/// (nothing past it is acknowledged, so the source sends it again after a restart).
#[derive(Debug, thiserror::Error)]
pub enum PartsStopped {
    /// The channel closed (the job is stopping).
    #[error("the job stopped before the transaction's last part arrived")]
    Closed,
    /// A part or batch of another transaction arrived inside this one.
    #[error("transaction {other} arrived inside large transaction {lsn}")]
    Foreign {
        /// The large transaction's commit LSN.
        lsn: Lsn,
        /// The other transaction's commit LSN.
        other: Lsn,
    },
    /// A part could not be spilled.
    #[error(transparent)]
    Spill(#[from] SpillError),
}

/// The parts of one large transaction, received from the sink task's channel and spilled
/// as they come. `after_part(load)` runs once a part is spilled (the sink task takes its
/// load off the backlog and lets the dataflow hand over the next part).
pub struct LiveParts<'a, F> {
    lsn: Lsn,
    first: Option<ApplyBatch>,
    batches: &'a mut mpsc::Receiver<Delivery>,
    spill: &'a mut SpilledTxn,
    after_part: F,
    complete: bool,
    history_seen: bool,
    stopped: Option<PartsStopped>,
}

impl<'a, F: FnMut(Load) + Send> LiveParts<'a, F> {
    /// The parts of the transaction whose first part is `first`; the others come from
    /// `batches`, each appended to `spill`.
    pub fn new(
        first: ApplyBatch,
        batches: &'a mut mpsc::Receiver<Delivery>,
        spill: &'a mut SpilledTxn,
        after_part: F,
    ) -> Self {
        LiveParts {
            lsn: first.commit_lsn,
            first: Some(first),
            batches,
            spill,
            after_part,
            complete: false,
            history_seen: false,
            stopped: None,
        }
    }

    /// The transaction's commit LSN.
    pub fn commit_lsn(&self) -> Lsn {
        self.lsn
    }

    /// Whether the last part was received.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Whether a part received so far carried history versions. A sink that writes
    /// versions applies such a transaction from its spill file instead, where versions
    /// it opens in one part and closes in a later one are matched first
    /// ([`SameTxnVersions`]).
    pub fn history_seen(&self) -> bool {
        self.history_seen
    }

    /// The next part once it is spilled, `None` after the last. An error when the parts
    /// stopped ([`Self::finish`] says why).
    pub async fn next_part(&mut self) -> Result<Option<ApplyBatch>, SinkError> {
        if self.complete {
            return Ok(None);
        }
        if let Some(stopped) = &self.stopped {
            return Err(SinkError::Transient(stopped.to_string()));
        }
        match self.receive().await {
            Ok(part) => Ok(Some(part)),
            Err(stopped) => {
                let err = SinkError::Transient(stopped.to_string());
                self.stopped = Some(stopped);
                Err(err)
            }
        }
    }

    /// Takes every part not yet received into the spill file, so the whole transaction
    /// can be read from it. Fails when the parts stopped before the last one.
    pub async fn finish(&mut self) -> Result<(), PartsStopped> {
        if let Some(stopped) = self.stopped.take() {
            return Err(stopped);
        }
        while !self.complete {
            drop(self.receive().await?);
        }
        Ok(())
    }

    /// The spill file (complete once [`Self::finish`] succeeded).
    pub fn spill(&mut self) -> &mut SpilledTxn {
        self.spill
    }

    async fn receive(&mut self) -> Result<ApplyBatch, PartsStopped> {
        let (part, last) = match self.first.take() {
            Some(first) => (first, false),
            None => match self.batches.recv().await {
                Some(Delivery::Part(p)) if p.commit_lsn == self.lsn => (p, false),
                Some(Delivery::Batch(b)) if b.commit_lsn == self.lsn => (b, true),
                Some(Delivery::Part(other) | Delivery::Batch(other)) => {
                    return Err(PartsStopped::Foreign {
                        lsn: self.lsn,
                        other: other.commit_lsn,
                    })
                }
                None => return Err(PartsStopped::Closed),
            },
        };
        self.spill.append(&part)?;
        self.history_seen |= !part.history.is_empty();
        (self.after_part)(Load::of(&part));
        self.complete = last;
        Ok(part)
    }
}

/// Where a sink that writes a large transaction in pieces reads its parts: the spill
/// file (a retry, or a sink that waits for the last part), or the sink task's channel
/// while they arrive.
pub enum PartSource<'s, 'l, 'p, F> {
    /// Read back from the spill file, from the first part, without the versions the
    /// transaction opens and closes itself.
    Spilled(SpillParts<'s>, SameTxnVersions),
    /// Received as they arrive (each spilled first).
    Live(&'l mut LiveParts<'p, F>),
}

impl<'s, F: FnMut(Load) + Send> PartSource<'s, '_, '_, F> {
    /// The parts of a spilled transaction, from its first (one pass over the file first
    /// when it has history events, see [`SameTxnVersions`]).
    pub fn spilled(txn: &'s mut SpilledTxn) -> Result<Self, SinkError> {
        let definite = |e: SpillError| SinkError::Definite(e.to_string());
        let versions = SameTxnVersions::of(txn).map_err(definite)?;
        Ok(PartSource::Spilled(
            txn.parts().map_err(definite)?,
            versions,
        ))
    }

    /// The next part, `None` after the last.
    pub async fn next_part(&mut self) -> Result<Option<ApplyBatch>, SinkError> {
        match self {
            PartSource::Spilled(parts, versions) => {
                let mut part = parts
                    .next_part()
                    .map_err(|e| SinkError::Definite(e.to_string()))?;
                if let Some(part) = part.as_mut() {
                    versions.strip(part);
                }
                Ok(part)
            }
            PartSource::Live(parts) => parts.next_part().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::fixtures;

    fn part(lsn: Lsn, ids: std::ops::Range<usize>) -> ApplyBatch {
        fixtures::inserts(lsn, ids)
    }

    #[tokio::test]
    async fn parts_are_spilled_as_they_are_handed_out_and_finish_takes_the_rest() {
        let (tx, mut rx) = mpsc::channel(8);
        tx.send(Delivery::Part(part(7, 2..4))).await.unwrap();
        tx.send(Delivery::Batch(part(7, 4..5))).await.unwrap();
        let mut spill = SpilledTxn::create(7).unwrap();
        let mut taken = Vec::new();
        let mut live = LiveParts::new(part(7, 0..2), &mut rx, &mut spill, |load: Load| {
            taken.push(load.rows)
        });
        let first = live.next_part().await.unwrap().unwrap();
        assert_eq!(first.changes.len(), 2);
        assert!(!live.is_complete());
        // The sink gives up after one part: the rest goes to the spill file.
        live.finish().await.unwrap();
        assert!(live.is_complete());
        assert!(live.next_part().await.unwrap().is_none());
        drop(live);
        assert_eq!(taken, [2, 2, 1]);
        assert_eq!(spill.read_all().unwrap(), part(7, 0..5));
    }

    #[tokio::test]
    async fn a_closed_channel_or_another_transaction_stops_the_parts() {
        let (tx, mut rx) = mpsc::channel(8);
        drop(tx);
        let mut spill = SpilledTxn::create(7).unwrap();
        let mut live = LiveParts::new(part(7, 0..2), &mut rx, &mut spill, |_| {});
        assert!(live.next_part().await.unwrap().is_some());
        assert!(live.next_part().await.is_err());
        assert!(live.next_part().await.is_err(), "stays stopped");
        assert!(matches!(live.finish().await, Err(PartsStopped::Closed)));

        let (tx, mut rx) = mpsc::channel(8);
        tx.send(Delivery::Batch(part(9, 0..1))).await.unwrap();
        let mut spill = SpilledTxn::create(7).unwrap();
        let mut live = LiveParts::new(part(7, 0..2), &mut rx, &mut spill, |_| {});
        let stopped = live.finish().await.unwrap_err();
        assert!(
            matches!(stopped, PartsStopped::Foreign { lsn: 7, other: 9 }),
            "{stopped}"
        );
    }
}
