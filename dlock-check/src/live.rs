//! What the coordinator knows while the run goes on: which worker is inside a section on
//! which key right now (to aim a fault at a holder), read from the growing history files.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use crate::history::{Event, OpId, Tail, WorkerId};

/// A section running now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    /// The worker.
    pub worker: WorkerId,
    /// The call.
    pub op: OpId,
    /// The key it holds.
    pub key: String,
    /// When its body entered (wall ns).
    pub since: i64,
    /// A long section (thinks for longer than the ttl).
    pub long: bool,
}

/// The live view over every worker's history.
#[derive(Debug, Default)]
pub struct Live {
    tails: Vec<(WorkerId, Tail)>,
    keys: HashMap<(WorkerId, OpId), (String, bool)>,
    open: BTreeMap<(WorkerId, OpId), Holding>,
    entered: HashMap<WorkerId, usize>,
    pids: HashMap<WorkerId, u32>,
}

impl Live {
    /// Follow `worker`'s history file too.
    pub fn follow(&mut self, worker: WorkerId, path: PathBuf) {
        self.tails.push((worker, Tail::new(path)));
    }

    /// Stop following a worker (it was killed): it holds nothing any more.
    pub fn forget(&mut self, worker: WorkerId) {
        self.poll();
        self.tails.retain(|(w, _)| *w != worker);
        self.open.retain(|(w, _), _| *w != worker);
    }

    /// Read what the workers wrote since the last call.
    pub fn poll(&mut self) {
        for (worker, tail) in &mut self.tails {
            for event in tail.read_new() {
                match event {
                    Event::Hello { pid, .. } => {
                        self.pids.insert(*worker, pid);
                    }
                    Event::Invoke { op, key, long, .. } => {
                        self.keys.insert((*worker, op), (key, long));
                    }
                    Event::Enter { op, at, .. } => {
                        *self.entered.entry(*worker).or_default() += 1;
                        if let Some((key, long)) = self.keys.get(&(*worker, op)) {
                            let holding = Holding {
                                worker: *worker,
                                op,
                                key: key.clone(),
                                since: at.wall,
                                long: *long,
                            };
                            self.open.insert((*worker, op), holding);
                        }
                    }
                    Event::BodyEnd { op, .. } => {
                        self.open.remove(&(*worker, op));
                        self.keys.remove(&(*worker, op));
                    }
                    Event::Done { op, .. } => {
                        self.keys.remove(&(*worker, op));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sections running now.
    pub fn holdings(&self) -> impl Iterator<Item = &Holding> {
        self.open.values()
    }

    /// Whether `worker`'s call `op` is still inside its section.
    pub fn is_open(&self, worker: WorkerId, op: OpId) -> bool {
        self.open.contains_key(&(worker, op))
    }

    /// How many sections `worker` has entered.
    pub fn entered(&self, worker: WorkerId) -> usize {
        self.entered.get(&worker).copied().unwrap_or(0)
    }

    /// The process id `worker` reported.
    pub fn pid(&self, worker: WorkerId) -> Option<u32> {
        self.pids.get(&worker).copied()
    }
}
