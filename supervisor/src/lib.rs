//! pidvisor's supervisor: the protocol types, the single-threaded mio event
//! loop that owns every container process through its pidfd, the spawn path
//! with its create/start split, the one reaper, the event log with its
//! journal, and the fan-out to subscriber FIFOs. The `pidvisor` CLI is a thin
//! client of this crate's protocol.

pub mod container;
pub mod error;
pub mod event;
pub mod fifo;
pub mod journal;
pub mod notify;
pub mod protocol;
pub mod reaper;
pub mod root;
pub mod runtime;
pub mod signals;
pub mod sink;
pub mod spawn;
pub mod supervisor;
pub mod time;

pub use error::{Error, ErrorKind, Result};
pub use supervisor::{Config, Supervisor};
