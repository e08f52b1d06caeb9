//! `dlock-check`: a fault-injecting safety checker for dlock (being built: see README.md).

pub mod analysis;
pub mod backends;
pub mod clock;
pub mod history;
pub mod netns;
pub mod proxy;
pub mod registers;
pub mod schedule;
pub mod servers;
pub mod worker;
pub mod workload;
