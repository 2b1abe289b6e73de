//! Writes a spill file's frames on a thread of its own, so the sink task's thread only
//! encodes them.
//!
//! A large transaction's parts are applied while they arrive, each appended to its spill
//! file first (for a retry). The copy of each frame into the page cache was about a third
//! of the sink thread's work on such a transaction (`perf`, a 2M-row transaction in
//! `cargo bench --bench e2e`), and the target waited for it. The writer takes frames over
//! a channel of [`QUEUED_FRAMES`], so memory stays bounded: an append waits once that
//! many frames are queued. Reading the file back first waits until every frame queued is
//! written ([`FrameWriter::file`]).

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Frames queued for the writer at most, beside the one it writes (each is one part, up
/// to 16 MiB of values).
pub const QUEUED_FRAMES: usize = 1;

/// The writer's side of a spill file: idle (holding the file), or writing on its thread.
pub struct FrameWriter {
    state: State,
    /// Set when the spill is dropped: frames still queued are not written.
    dropped: Arc<AtomicBool>,
}

enum State {
    Idle(File),
    Writing {
        frames: SyncSender<Vec<u8>>,
        thread: JoinHandle<std::io::Result<File>>,
    },
    /// The writer failed and its error was returned; the file is gone.
    Failed,
}

impl FrameWriter {
    /// A writer of `file`, which starts its thread at the first frame.
    pub fn new(file: File) -> Self {
        FrameWriter {
            state: State::Idle(file),
            dropped: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Queues `frame` to be written after those queued before; waits while
    /// [`QUEUED_FRAMES`] are queued. An error of an earlier write is returned here.
    pub fn write(&mut self, frame: Vec<u8>) -> std::io::Result<()> {
        // A failed start leaves the writer failed.
        self.state = match std::mem::replace(&mut self.state, State::Failed) {
            State::Idle(file) => self.start(file)?,
            other => other,
        };
        match &self.state {
            State::Writing { frames, .. } => match frames.send(frame) {
                Ok(()) => Ok(()),
                // The thread stopped on an error: that error.
                Err(_) => self.file().map(|_| ()).and(Err(stopped())),
            },
            State::Idle(_) | State::Failed => Err(failed()),
        }
    }

    /// The file once every frame queued is written (the thread ends; the next frame
    /// starts another).
    pub fn file(&mut self) -> std::io::Result<&mut File> {
        // A writer that failed, or a thread that panicked, leaves the writer failed.
        self.state = match std::mem::replace(&mut self.state, State::Failed) {
            State::Writing { frames, thread } => {
                drop(frames);
                let file = thread
                    .join()
                    .map_err(|_| std::io::Error::other("the spill writer thread panicked"))??;
                State::Idle(file)
            }
            other => other,
        };
        match &mut self.state {
            State::Idle(file) => Ok(file),
            State::Writing { .. } | State::Failed => Err(failed()),
        }
    }

    fn start(&self, mut file: File) -> std::io::Result<State> {
        // A read back may have left the position anywhere: frames go at the end.
        file.seek(SeekFrom::End(0))?;
        let (frames, queue) = sync_channel::<Vec<u8>>(QUEUED_FRAMES);
        let dropped = self.dropped.clone();
        let thread = std::thread::Builder::new()
            .name("helios-spill".into())
            .spawn(move || {
                let mut out = BufWriter::with_capacity(1 << 20, file);
                for frame in queue {
                    if dropped.load(Ordering::Relaxed) {
                        break;
                    }
                    out.write_all(&frame)?;
                }
                out.flush()?;
                out.into_inner().map_err(|e| e.into_error())
            })?;
        Ok(State::Writing { frames, thread })
    }
}

impl Drop for FrameWriter {
    fn drop(&mut self) {
        // The thread ends once the channel closes, without writing what is queued.
        self.dropped.store(true, Ordering::Relaxed);
    }
}

fn stopped() -> std::io::Error {
    std::io::Error::other("the spill writer stopped")
}

fn failed() -> std::io::Error {
    std::io::Error::other("the spill file failed earlier and holds an incomplete transaction")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn frames_are_in_the_file_in_order_once_it_is_asked_for() {
        let mut writer = FrameWriter::new(tempfile::tempfile().expect("temp file"));
        for i in 0..10u8 {
            writer.write(vec![i; 1000]).expect("write");
        }
        let file = writer.file().expect("file");
        file.seek(SeekFrom::Start(0)).expect("seek");
        let mut all = Vec::new();
        file.read_to_end(&mut all).expect("read");
        assert_eq!(all.len(), 10_000);
        assert!(all
            .chunks(1000)
            .enumerate()
            .all(|(i, c)| c == [i as u8; 1000]));
        // Writing goes on after a read, at the end.
        file.seek(SeekFrom::Start(3)).expect("seek");
        writer.write(vec![42; 10]).expect("write after the read");
        let file = writer.file().expect("file");
        assert_eq!(file.metadata().expect("metadata").len(), 10_010);
    }

    #[test]
    fn a_failed_write_is_returned_and_the_file_stays_failed() {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full");
        let Ok(full) = full else {
            return; // no /dev/full on this system
        };
        let mut writer = FrameWriter::new(full);
        // The buffer takes the first frames; the error comes at a later write or at the end.
        let mut first_error = None;
        for _ in 0..8 {
            if let Err(e) = writer.write(vec![1; 1 << 20]) {
                first_error = Some(e);
                break;
            }
        }
        let err = match first_error {
            Some(e) => e,
            None => writer.file().map(|_| ()).expect_err("the device is full"),
        };
        assert_eq!(
            err.raw_os_error(),
            Some(28),
            "ENOSPC, as the writer met it: {err}"
        );
        let again = writer.file().map(|_| ()).expect_err("stays failed");
        assert!(again.to_string().contains("failed earlier"), "{again}");
        assert!(writer.write(vec![1]).is_err());
    }
}
