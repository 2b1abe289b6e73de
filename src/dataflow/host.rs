//! The dataflow host: one set of timely workers for the life of the process, on which jobs'
//! dataflows are installed and removed at run time.
//!
//! Timely requires every worker to build the same dataflows in the same order (channel ids
//! are allocated in sequence). Commands therefore go into one ordered log that every worker
//! replays from its own cursor; a worker applies each command exactly once, in log order.
//! (The log is in-process: a cluster of processes would sequence the same commands through
//! a control dataflow instead, see `notes/timely-0.32` `e_dynamic`.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::dataflow::worker::{JobDataflow, WorkerJob};

/// Longest a worker parks without being woken: also how late a sink's durable report may
/// be seen while nothing else happens (see `deliver::DeliveryLink`).
pub const PARK: Duration = Duration::from_millis(10);

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
    }

    fn since(&self, cursor: usize) -> Vec<HostCommand> {
        self.commands
            .lock()
            .map(|c| c.get(cursor..).map(<[_]>::to_vec).unwrap_or_default())
            .unwrap_or_default()
    }
}

/// Handle to the running workers.
pub struct DataflowHost {
    log: Arc<CommandLog>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    workers: usize,
}

impl DataflowHost {
    /// Starts `workers` timely worker threads; sink tasks run on `runtime`.
    pub fn start(workers: usize, runtime: tokio::runtime::Handle) -> Result<DataflowHost, String> {
        let workers = workers.max(1);
        let log = Arc::new(CommandLog::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("helios-dataflow".into())
            .spawn(move || run_workers(workers, log2, stop2, runtime))
            .map_err(|e| e.to_string())?;
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
        })
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers
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

fn run_workers(
    workers: usize,
    log: Arc<CommandLog>,
    stop: Arc<AtomicBool>,
    runtime: tokio::runtime::Handle,
) -> Result<(), String> {
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        if let Ok(mut threads) = log.threads.lock() {
            threads.push(std::thread::current());
            log.started.notify_all();
        }
        let mut cursor = 0;
        let mut jobs: HashMap<String, WorkerJob> = HashMap::new();
        loop {
            for command in log.since(cursor) {
                cursor += 1;
                match command {
                    HostCommand::Install(job) => {
                        let built = WorkerJob::build(worker, &job, &runtime);
                        if let Some(old) = jobs.insert(job.job.clone(), built) {
                            worker.drop_dataflow(old.dataflow);
                        }
                    }
                    HostCommand::Remove(name) => {
                        if let Some(job) = jobs.remove(&name) {
                            let index = job.dataflow;
                            drop(job);
                            worker.drop_dataflow(index);
                        }
                    }
                }
            }
            let mut busy = false;
            for job in jobs.values_mut() {
                busy |= job.feed();
                job.take_reports();
            }
            if busy {
                worker.step();
            } else {
                worker.step_or_park(Some(PARK));
            }
            for job in jobs.values() {
                job.report();
            }
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
