//! The recorded history: what each worker did, one JSON line per event, one file per worker.
//!
//! A worker writes every event with a single `write` call on an unbuffered file, so an event
//! is in the kernel before the worker goes on; a worker killed with SIGKILL loses at most
//! the event it was writing (the reader skips a torn last line).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::clock::Stamp;

/// A worker: one OS process (or, for the in-process backend, one `LockService`).
pub type WorkerId = u32;
/// One call of the locked function by one task, numbered per worker.
pub type OpId = u64;

/// How a task takes its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Through `#[distributed_lock]`.
    Attribute,
    /// Through `service.lock(key).ttl(..).wait(..).await` and `guard.release()`.
    Manual,
}

/// One step of the read–think–write a section does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Read the fenced register, presenting the fencing token.
    FencedRead,
    /// Write the fenced register, presenting the fencing token.
    FencedWrite,
    /// Read the unfenced counter.
    CounterRead,
    /// Write the unfenced counter.
    CounterWrite,
}

/// What a step got back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
pub enum StepResult {
    /// A read returned this value.
    Value {
        /// The register's value.
        v: i64,
    },
    /// A write was applied.
    Written,
    /// The fenced store refused the token: it has seen `max`, which is greater.
    Rejected {
        /// The highest token the store has seen for the key.
        max: u64,
    },
    /// The store did not answer, or failed.
    Error {
        /// What went wrong.
        msg: String,
    },
}

/// How a call of the locked function ended, as the task saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "o", rename_all = "snake_case")]
pub enum Outcome {
    /// The body ran to its end and the lock was released.
    Ok,
    /// `Error::Timeout`: not acquired within `wait`; the body did not run.
    Timeout,
    /// `Error::Lost`: the body was dropped because the lease was lost.
    Lost {
        /// `LostReason`, as text.
        reason: String,
    },
    /// Manual mode: the body finished, but `guard.release()` said the lock was no longer ours.
    LostAtRelease,
    /// `Error::Backend`: the lock backend failed.
    Backend {
        /// The error's message.
        msg: String,
    },
    /// Anything else dlock returned.
    Failed {
        /// The error's message.
        msg: String,
    },
}

/// A backend call, as the recording wrapper saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    /// `try_acquire`.
    Acquire,
    /// `renew`.
    Renew,
    /// `release`.
    Release,
}

/// What a backend call answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
pub enum CallResult {
    /// `try_acquire` took the key under this token.
    Acquired {
        /// The fencing token.
        token: u64,
    },
    /// `try_acquire` found the key held.
    Held,
    /// `renew` / `release` answered `true`.
    True,
    /// `renew` / `release` answered `false`.
    False,
    /// The call failed.
    Error {
        /// The error's message.
        msg: String,
    },
}

/// One line of a worker's history file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "e", rename_all = "snake_case")]
pub enum Event {
    /// The worker started.
    Hello {
        /// Its id.
        worker: WorkerId,
        /// Its process id.
        pid: u32,
        /// The slot (network namespace) it runs in.
        slot: u32,
        /// When.
        at: Stamp,
    },
    /// A task calls the locked function.
    Invoke {
        /// The call.
        op: OpId,
        /// The task of the worker.
        task: u32,
        /// The lock key (without the service prefix).
        key: String,
        /// Attribute or manual API.
        mode: Mode,
        /// A long section (thinks for longer than the ttl, so its lease must be renewed).
        long: bool,
        /// When.
        at: Stamp,
    },
    /// The body started: the lock is held.
    Enter {
        /// The call.
        op: OpId,
        /// The fencing token the body sees.
        token: u64,
        /// When.
        at: Stamp,
    },
    /// A step was sent to the store.
    StepStart {
        /// The call.
        op: OpId,
        /// Which step.
        step: StepKind,
        /// When.
        at: Stamp,
    },
    /// A step came back.
    StepEnd {
        /// The call.
        op: OpId,
        /// Which step.
        step: StepKind,
        /// What it got.
        result: StepResult,
        /// When.
        at: Stamp,
    },
    /// The body ended: returned, or dropped because the lease was lost.
    BodyEnd {
        /// The call.
        op: OpId,
        /// When.
        at: Stamp,
    },
    /// The locked function returned.
    Done {
        /// The call.
        op: OpId,
        /// How it ended.
        outcome: Outcome,
        /// When.
        at: Stamp,
    },
    /// dlock called the backend (seen by the recording wrapper).
    Call {
        /// The lock key (without the service prefix).
        key: String,
        /// The owner token of the call.
        owner: String,
        /// Which call.
        call: CallKind,
        /// The ttl asked for (acquire, renew), in milliseconds.
        ttl_ms: Option<u64>,
        /// When it was sent.
        sent: Stamp,
        /// When it came back.
        returned: Stamp,
        /// What it answered.
        result: CallResult,
    },
    /// The backend handed a released key straight to a waiting owner (a release notice).
    Granted {
        /// The lock key (without the service prefix).
        key: String,
        /// The owner it went to.
        owner: String,
        /// Its fencing token.
        token: u64,
        /// When the notice arrived.
        at: Stamp,
    },
    /// The worker stopped on request.
    Bye {
        /// Whether every event was written.
        complete: bool,
        /// When.
        at: Stamp,
    },
}

/// Where a worker writes its events.
#[derive(Debug)]
pub struct Recorder {
    file: Mutex<File>,
    broken: AtomicBool,
}

impl Recorder {
    /// Create (truncate) the history file at `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        File::create(path)?;
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Self { file: Mutex::new(file), broken: AtomicBool::new(false) })
    }

    /// Append one event (one `write` call). A failure is remembered, not returned: the worker
    /// goes on, and says in its [`Event::Bye`] that its history is incomplete.
    pub fn record(&self, event: &Event) {
        let Ok(mut line) = serde_json::to_vec(event) else {
            self.broken.store(true, Ordering::Relaxed);
            return;
        };
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if file.write_all(&line).is_err() {
            self.broken.store(true, Ordering::Relaxed);
        }
    }

    /// Whether every event so far was written.
    pub fn complete(&self) -> bool {
        !self.broken.load(Ordering::Relaxed)
    }
}

/// Reads a history file as it grows: each call returns the events completed since the last.
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl Tail {
    /// A reader of `path` from its start (the file need not exist yet).
    pub fn new(path: PathBuf) -> Self {
        Self { path, offset: 0, partial: Vec::new() }
    }

    /// The events whose lines were completed since the last call. Lines that do not parse (a
    /// torn last line of a killed worker) are skipped once complete.
    pub fn read_new(&mut self) -> Vec<Event> {
        let Ok(mut file) = File::open(&self.path) else { return Vec::new() };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        let Ok(read) = file.read_to_end(&mut bytes) else { return Vec::new() };
        self.offset += read as u64;
        self.partial.extend_from_slice(&bytes);
        let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(last_newline + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        complete
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .filter_map(|line| serde_json::from_slice(line).ok())
            .collect()
    }
}

/// Every complete event of the file at `path`.
pub fn read_all(path: &Path) -> Vec<Event> {
    Tail::new(path.to_path_buf()).read_new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_a_torn_line_is_skipped() {
        let dir = std::env::temp_dir().join(format!("dlock-check-history-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w0.jsonl");
        let recorder = Recorder::create(&path).unwrap();
        let enter = Event::Enter { op: 1, token: 7, at: Stamp::at_wall(5) };
        recorder.record(&enter);
        let mut tail = Tail::new(path.clone());
        assert_eq!(tail.read_new(), vec![enter.clone()]);
        // A torn line (a worker killed mid-write) is held back, then skipped once completed.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"e\":\"ent").unwrap();
        assert_eq!(tail.read_new(), vec![]);
        let done = Event::Done { op: 1, outcome: Outcome::Ok, at: Stamp::at_wall(6) };
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"\n").unwrap();
        recorder.record(&done);
        assert_eq!(tail.read_new(), vec![done.clone()]);
        assert_eq!(read_all(&path), vec![enter, done]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
