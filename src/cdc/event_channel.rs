//! The channel from a job's reader to its dataflow, bounded in events and in estimated
//! bytes ([`crate::footprint`]): 8,192 events of 20 KB rows held 160 MB, so the bytes
//! bound too. While it is full the reader waits, which stops it reading and back-pressure
//! reaches the server through TCP.
//!
//! The bytes are permits of a semaphore: the reader takes an event's cost before it sends
//! it and sends the cost with it; the dataflow gives that cost back when it takes the
//! event out (estimated once per event). An event costs at most
//! the whole budget, so a single row larger than the budget still passes, alone.

use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore, SemaphorePermit};

use crate::cdc::stream::SourceEvent;
use crate::footprint::Footprint;

/// Most events waiting in the channel.
pub const EVENTS: usize = 8192;
/// Most estimated bytes waiting in the channel.
pub const EVENT_BYTES: usize = 16 << 20;

/// The reader's end.
#[derive(Clone)]
pub struct EventSender {
    tx: mpsc::Sender<(SourceEvent, u32)>,
    bytes: Arc<Semaphore>,
    budget: usize,
}

/// The dataflow's end (worker 0 takes it).
pub struct EventReceiver {
    rx: mpsc::Receiver<(SourceEvent, u32)>,
    bytes: Arc<Semaphore>,
}

/// Room for one event, taken before it is sent.
pub struct EventPermit<'a> {
    bytes: SemaphorePermit<'a>,
    slot: mpsc::Permit<'a, (SourceEvent, u32)>,
    cost: u32,
}

/// Why an event could not be sent now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoRoom {
    /// The channel holds its most events or bytes.
    #[error("the dataflow's event channel is full")]
    Full,
    /// The dataflow dropped its end.
    #[error("the dataflow stopped taking events")]
    Closed,
}

/// A channel holding at most [`EVENTS`] events and [`EVENT_BYTES`] bytes.
pub fn event_channel() -> (EventSender, EventReceiver) {
    event_channel_with(EVENTS, EVENT_BYTES)
}

/// A channel holding at most `events` events and `budget` bytes.
pub fn event_channel_with(events: usize, budget: usize) -> (EventSender, EventReceiver) {
    let budget = budget.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let (tx, rx) = mpsc::channel(events.max(1));
    let bytes = Arc::new(Semaphore::new(budget));
    (
        EventSender {
            tx,
            bytes: bytes.clone(),
            budget,
        },
        EventReceiver { rx, bytes },
    )
}

/// What an event takes of a channel's `budget`.
fn cost(event: &SourceEvent, budget: usize) -> u32 {
    // `budget` fits a u32 (event_channel_with).
    event.footprint().clamp(1, budget) as u32
}

impl EventSender {
    /// Room for `event` if there is some now.
    pub fn try_reserve(&self, event: &SourceEvent) -> Result<EventPermit<'_>, NoRoom> {
        let cost = cost(event, self.budget);
        if self.tx.is_closed() {
            return Err(NoRoom::Closed);
        }
        let bytes = self
            .bytes
            .try_acquire_many(cost)
            .map_err(|_| NoRoom::Full)?;
        let slot = self.tx.try_reserve().map_err(|e| match e {
            mpsc::error::TrySendError::Full(()) => NoRoom::Full,
            mpsc::error::TrySendError::Closed(()) => NoRoom::Closed,
        })?;
        Ok(EventPermit { bytes, slot, cost })
    }

    /// Waits for room for `event`. Cancel safe: dropped, it holds nothing.
    pub async fn reserve(&self, event: &SourceEvent) -> Result<EventPermit<'_>, NoRoom> {
        let cost = cost(event, self.budget);
        // Nobody gives bytes back once the dataflow's end is gone.
        let bytes = tokio::select! {
            bytes = self.bytes.acquire_many(cost) => {
                bytes.map_err(|_| NoRoom::Closed)?
            }
            () = self.tx.closed() => return Err(NoRoom::Closed),
        };
        let slot = self.tx.reserve().await.map_err(|_| NoRoom::Closed)?;
        Ok(EventPermit { bytes, slot, cost })
    }
}

impl EventPermit<'_> {
    /// Sends `event` (the one the room was taken for); its bytes stay taken until the
    /// dataflow takes it out.
    pub fn send(self, event: SourceEvent) {
        self.bytes.forget();
        self.slot.send((event, self.cost));
    }
}

impl EventReceiver {
    /// The next event if one waits and the bytes it took (its estimate, at most the
    /// channel's budget), giving them back.
    pub fn try_recv(&mut self) -> Result<(SourceEvent, usize), mpsc::error::TryRecvError> {
        let (event, cost) = self.rx.try_recv()?;
        self.bytes.add_permits(cost as usize);
        Ok((event, cost as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Cell, RowOp, SourceRecord};

    fn row_event(text_len: usize) -> SourceEvent {
        let table = Arc::new(crate::change::fixtures::table("t", &[("v", "text")], &[]));
        SourceEvent::Record(SourceRecord::Change {
            seq: 0,
            table,
            op: RowOp::Insert {
                new: vec![Cell::text(&"x".repeat(text_len))],
            },
        })
    }

    fn commit() -> SourceEvent {
        SourceEvent::Commit {
            commit_lsn: 1,
            end_lsn: 2,
            commit_time_micros: 0,
        }
    }

    #[test]
    fn the_channel_holds_no_more_bytes_than_its_budget() {
        let (tx, mut rx) = event_channel_with(100, 10_000);
        let wide = row_event(4_000);
        for _ in 0..2 {
            let permit = tx.try_reserve(&wide).expect("room");
            permit.send(wide.clone());
        }
        assert_eq!(
            tx.try_reserve(&wide).err(),
            Some(NoRoom::Full),
            "a third 4 KB row passes the 10,000 bytes"
        );
        // A small event still fits beside them.
        tx.try_reserve(&commit()).expect("room").send(commit());
        assert!(matches!(rx.try_recv(), Ok((SourceEvent::Record(_), _))));
        // Taking one out gives its bytes back.
        tx.try_reserve(&wide)
            .expect("room again")
            .send(wide.clone());
        let mut taken = 0;
        while rx.try_recv().is_ok() {
            taken += 1;
        }
        assert_eq!(taken, 3);
        assert_eq!(
            tx.bytes.available_permits(),
            10_000,
            "every byte given back"
        );
    }

    #[test]
    fn a_row_larger_than_the_budget_passes_alone() {
        let (tx, mut rx) = event_channel_with(100, 1_000);
        let huge = row_event(50_000);
        tx.try_reserve(&huge)
            .expect("an empty channel takes it")
            .send(huge.clone());
        assert_eq!(tx.try_reserve(&commit()).err(), Some(NoRoom::Full));
        assert!(rx.try_recv().is_ok());
        assert!(tx.try_reserve(&commit()).is_ok());
    }

    #[test]
    fn the_event_count_still_bounds_and_a_closed_end_says_so() {
        let (tx, rx) = event_channel_with(2, 1 << 20);
        for _ in 0..2 {
            tx.try_reserve(&commit()).expect("room").send(commit());
        }
        assert_eq!(tx.try_reserve(&commit()).err(), Some(NoRoom::Full));
        drop(rx);
        assert_eq!(tx.try_reserve(&commit()).err(), Some(NoRoom::Closed));
    }

    #[tokio::test]
    async fn a_reader_waiting_for_bytes_learns_the_dataflow_is_gone() {
        let (tx, rx) = event_channel_with(100, 5_000);
        let wide = row_event(4_000);
        tx.try_reserve(&wide).expect("room").send(wide.clone());
        drop(rx);
        assert_eq!(tx.reserve(&wide).await.err(), Some(NoRoom::Closed));
    }

    #[tokio::test]
    async fn a_waiting_reader_gets_room_once_the_dataflow_takes_an_event() {
        let (tx, mut rx) = event_channel_with(100, 5_000);
        let wide = row_event(4_000);
        tx.try_reserve(&wide).expect("room").send(wide.clone());
        let waiter = {
            let tx = tx.clone();
            let wide = wide.clone();
            tokio::spawn(async move {
                let permit = tx.reserve(&wide).await.expect("room");
                permit.send(wide);
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert!(rx.try_recv().is_ok());
        waiter.await.expect("sent");
        assert!(rx.try_recv().is_ok());
    }
}
