//! The dataflow host: one set of timely workers for the life of the process, on which jobs'
//! dataflows are installed and removed at run time.
//!
//! Timely requires every worker to build the same dataflows in the same order (channel ids
//! are allocated in sequence). Commands therefore go into one ordered log that every worker
//! replays from its own cursor; a worker applies each command exactly once, in log order.
//! (The log is in-process: a cluster of processes would sequence the same commands through
//! a control dataflow instead, see `notes/timely-0.32` `e_dynamic`.)
//!
//! A single worker runs *inline* ([`WorkerPlacement`]): its thread also drives a
//! single-threaded tokio runtime on which its sink tasks run (the cold tier's stay on the
//! process's runtime: their file writes block), and with `Inline` the jobs' readers too
//! ([`DataflowHost::job_runtime`]). A caught-up transaction then crosses one
//! thread hand-over (reader → worker) or none, where a worker on a thread of its own has
//! two (reader → worker → sink task); each is a wake-up that waits to be scheduled when
//! the cores are busy. Several workers run each on its own thread, parking in timely
//! (their exchange channels wake threads, not a runtime), with sink tasks and readers on
//! the process's runtime.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use timely::communication::allocator::thread::Thread;
use timely::communication::Allocator;
use timely::worker::Worker;

use crate::dataflow::worker::{JobDataflow, SinkRuntimes, WorkerJob};

/// Longest a worker parks without being woken: also how late a sink's durable report may
/// be seen while nothing else happens (see `deliver::DeliveryLink`).
pub const PARK: Duration = Duration::from_millis(10);

/// Where a host with one worker runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkerPlacement {
    /// On a thread that also runs the sink tasks and the jobs' readers (see the module
    /// doc): the fewest thread hand-overs per transaction, and the least CPU.
    Inline,
    /// On a thread that also runs the sink tasks, with the jobs' readers on the process's
    /// runtime: one hand-over per transaction (reader → worker), and the reader's thread
    /// stays light, so the scheduler wakes it sooner when the cores are busy.
    #[default]
    InlineSinks,
    /// On a thread of its own, parking in timely, with the sink tasks and readers on the
    /// process's runtime: the dataflow's work and the readers' and sinks' in parallel.
    OwnThread,
}

/// A change to the set of running dataflows.
#[derive(Clone)]
enum HostCommand {
    Install(JobDataflow),
    Remove(String),
}

#[derive(Default)]
struct CommandLog {
    commands: Mutex<Vec<HostCommand>>,
    /// Threads of the workers, to wake them when a command arrives.
    threads: Mutex<Vec<std::thread::Thread>>,
    started: Condvar,
    /// Wakes the inline worker (parked in its runtime, not in timely).
    inline: tokio::sync::Notify,
}

impl CommandLog {
    fn push(&self, command: HostCommand) {
        if let Ok(mut c) = self.commands.lock() {
            c.push(command);
        }
        self.wake();
    }

    fn wake(&self) {
        if let Ok(threads) = self.threads.lock() {
            for t in threads.iter() {
                t.unpark();
            }
        }
        self.inline.notify_one();
    }

    fn since(&self, cursor: usize) -> Vec<HostCommand> {
        self.commands
            .lock()
            .map(|c| c.get(cursor..).map(<[_]>::to_vec).unwrap_or_default())
            .unwrap_or_default()
    }

    fn register(&self) {
        if let Ok(mut threads) = self.threads.lock() {
            threads.push(std::thread::current());
            self.started.notify_all();
        }
    }
}

/// Handle to the running workers.
pub struct DataflowHost {
    log: Arc<CommandLog>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    workers: usize,
    /// Where jobs' readers run: the inline worker's runtime, or the process's.
    job_runtime: tokio::runtime::Handle,
}

impl DataflowHost {
    /// Starts `workers` timely workers: a single one inline with its sink tasks
    /// ([`WorkerPlacement::default`], see the module doc); several on threads of their
    /// own, their sink tasks on `runtime`.
    pub fn start(workers: usize, runtime: tokio::runtime::Handle) -> Result<DataflowHost, String> {
        Self::start_with(workers, runtime, WorkerPlacement::default())
    }

    /// [`DataflowHost::start`] with the single worker placed as `placement` says (several
    /// workers always have threads of their own).
    pub fn start_with(
        workers: usize,
        runtime: tokio::runtime::Handle,
        placement: WorkerPlacement,
    ) -> Result<DataflowHost, String> {
        let workers = workers.max(1);
        let inline = workers == 1 && placement != WorkerPlacement::OwnThread;
        let readers_inline = inline && placement == WorkerPlacement::Inline;
        let log = Arc::new(CommandLog::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let runtime_for_jobs = runtime.clone();
        let (inline_tx, inline_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("helios-dataflow".into())
            .spawn(move || {
                if inline {
                    run_inline(log2, stop2, runtime, inline_tx)
                } else {
                    drop(inline_tx);
                    run_workers(workers, log2, stop2, runtime)
                }
            })
            .map_err(|e| e.to_string())?;
        let job_runtime = match inline_rx.recv() {
            Ok(Ok(handle)) if readers_inline => handle,
            Ok(Ok(_)) => runtime_for_jobs,
            Ok(Err(e)) => return Err(e),
            // Workers on threads of their own: nothing is sent.
            Err(_) if !inline => runtime_for_jobs,
            Err(_) => return Err("the dataflow thread ended before it started".into()),
        };
        // Wait until every worker registered its thread, so wake-ups are never lost.
        {
            let guard = log.threads.lock().map_err(|e| e.to_string())?;
            let _ready = log
                .started
                .wait_while(guard, |t| t.len() < workers)
                .map_err(|e| e.to_string())?;
        }
        Ok(DataflowHost {
            log,
            stop,
            thread: Some(thread),
            workers,
            job_runtime,
        })
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The runtime a job's task (its reader) should run on: the single worker's own with
    /// [`WorkerPlacement::Inline`] (the reader, the dataflow and the sinks on one thread);
    /// otherwise the runtime the host was started from.
    pub fn job_runtime(&self) -> tokio::runtime::Handle {
        self.job_runtime.clone()
    }

    /// Installs a job's dataflow on every worker.
    pub fn install(&self, job: JobDataflow) {
        self.log.push(HostCommand::Install(job));
    }

    /// Removes a job's dataflow from every worker (its sink tasks end).
    pub fn remove(&self, job: &str) {
        self.log.push(HostCommand::Remove(job.to_string()));
    }

    /// Wakes the workers (a reader sent events).
    pub fn wake(&self) {
        self.log.wake();
    }

    /// A cheap handle that wakes the workers.
    pub fn waker(&self) -> impl Fn() + Send + Sync + 'static {
        let log = self.log.clone();
        move || log.wake()
    }

    /// Stops every worker and waits for them.
    pub fn shutdown(mut self) -> Result<(), String> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        self.log.wake();
        match self.thread.take() {
            // The last handle may go on the inline worker's own thread (a job's task
            // ending there): it stops at its next turn, and cannot wait for itself.
            Some(t) if t.thread().id() == std::thread::current().id() => Ok(()),
            Some(t) => t
                .join()
                .map_err(|_| "a dataflow worker panicked".to_string())?,
            None => Ok(()),
        }
    }
}

impl Drop for DataflowHost {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// What one worker keeps between turns: its place in the command log and its jobs.
struct WorkerState {
    log: Arc<CommandLog>,
    cursor: usize,
    jobs: HashMap<String, WorkerJob>,
    /// Where this worker's sink tasks run.
    runtimes: SinkRuntimes,
    /// Wakes this worker when a sink needs it at once.
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl WorkerState {
    /// Applies the commands logged since the last turn, then moves readers' events into
    /// the inputs; whether more events wait.
    fn before_step(&mut self, worker: &mut Worker) -> bool {
        for command in self.log.since(self.cursor) {
            self.cursor += 1;
            match command {
                HostCommand::Install(job) => {
                    let built = WorkerJob::build(worker, &job, &self.runtimes, self.wake.clone());
                    if let Some(old) = self.jobs.insert(job.job.clone(), built) {
                        worker.drop_dataflow(old.dataflow);
                    }
                }
                HostCommand::Remove(name) => {
                    if let Some(job) = self.jobs.remove(&name) {
                        let index = job.dataflow;
                        drop(job);
                        worker.drop_dataflow(index);
                    }
                }
            }
        }
        let mut busy = false;
        for job in self.jobs.values_mut() {
            busy |= job.feed();
            job.take_reports();
        }
        busy
    }

    /// Publishes the durable frontiers after a step.
    fn after_step(&self) {
        for job in self.jobs.values() {
            job.report();
        }
    }
}

fn run_workers(
    workers: usize,
    log: Arc<CommandLog>,
    stop: Arc<AtomicBool>,
    runtime: tokio::runtime::Handle,
) -> Result<(), String> {
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        log.register();
        let mut state = WorkerState {
            log: log.clone(),
            cursor: 0,
            jobs: HashMap::new(),
            runtimes: SinkRuntimes::one(runtime.clone()),
            // A sink's activation of the delivery operator unparks this thread.
            wake: Arc::new(|| {}),
        };
        loop {
            if state.before_step(worker) {
                worker.step();
            } else {
                worker.step_or_park(Some(PARK));
            }
            state.after_step();
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
    })?;
    for result in guards.join() {
        result?;
    }
    Ok(())
}

/// The single worker, inline: a timely worker built on this thread and stepped from a
/// task of this thread's runtime, which runs the sink tasks and readers between steps
/// and parks (in epoll) when neither has work.
fn run_inline(
    log: Arc<CommandLog>,
    stop: Arc<AtomicBool>,
    process: tokio::runtime::Handle,
    started: std::sync::mpsc::Sender<Result<tokio::runtime::Handle, String>>,
) -> Result<(), String> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let e = format!("cannot start the dataflow's runtime: {e}");
            let _ = started.send(Err(e.clone()));
            return Err(e);
        }
    };
    let allocator = Allocator::Thread(Thread::default());
    // Messages between operators not yet seen by the worker: work for another step.
    let channel_events: Rc<RefCell<Vec<usize>>> = allocator.events().clone();
    let mut worker = Worker::new(
        timely::WorkerConfig::default().idle_spin(Duration::ZERO),
        allocator,
        Some(std::time::Instant::now()),
    );
    let wake_log = log.clone();
    let mut state = WorkerState {
        log: log.clone(),
        cursor: 0,
        jobs: HashMap::new(),
        runtimes: SinkRuntimes {
            worker: runtime.handle().clone(),
            process,
        },
        wake: Arc::new(move || wake_log.inline.notify_one()),
    };
    log.register();
    let _ = started.send(Ok(runtime.handle().clone()));
    runtime.block_on(async {
        loop {
            let busy = state.before_step(&mut worker);
            worker.step();
            state.after_step();
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let next = worker.activations().borrow().empty_for();
            if busy || next == Some(Duration::ZERO) || !channel_events.borrow().is_empty() {
                // Let the readers and sinks run, then step again.
                tokio::task::yield_now().await;
            } else {
                let wait = next.map_or(PARK, |d| d.min(PARK));
                tokio::select! {
                    _ = log.inline.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    });
    // Dataflows go before the runtime their sink tasks run on.
    drop(state);
    drop(worker);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_name() -> Option<String> {
        std::thread::current().name().map(str::to_string)
    }

    fn start(workers: usize, placement: WorkerPlacement) -> DataflowHost {
        DataflowHost::start_with(workers, tokio::runtime::Handle::current(), placement).unwrap()
    }

    #[tokio::test]
    async fn jobs_run_on_the_workers_thread_only_when_it_is_inline_with_them() {
        let inline = start(1, WorkerPlacement::Inline);
        let on = inline.job_runtime().spawn(async { thread_name() });
        assert_eq!(on.await.unwrap().as_deref(), Some("helios-dataflow"));
        inline.shutdown().unwrap();

        let here = thread_name();
        for placement in [WorkerPlacement::InlineSinks, WorkerPlacement::OwnThread] {
            let host = start(1, placement);
            let on = host.job_runtime().spawn(async { thread_name() });
            assert_eq!(on.await.unwrap(), here, "{placement:?}");
            host.shutdown().unwrap();
        }

        let several = start(2, WorkerPlacement::Inline);
        assert_eq!(several.workers(), 2);
        let on = several.job_runtime().spawn(async { thread_name() });
        assert_eq!(on.await.unwrap(), here);
        several.shutdown().unwrap();
    }

    #[tokio::test]
    async fn the_last_handle_dropped_on_the_workers_own_thread_stops_it_without_waiting_for_itself()
    {
        let host = Arc::new(start(1, WorkerPlacement::Inline));
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let mine = host.clone();
        host.job_runtime().spawn(async move {
            let _ = go_rx.await;
            drop(mine);
            let _ = done_tx.send(thread_name());
        });
        // The caller's handle goes first: the task's is the last, dropped on the worker's
        // thread (which would wait forever for itself if it joined).
        drop(host);
        go_tx.send(()).unwrap();
        let dropped_on = tokio::time::timeout(Duration::from_secs(10), done_rx).await;
        assert_eq!(
            dropped_on.expect("the drop returned").unwrap().as_deref(),
            Some("helios-dataflow")
        );
    }
}
