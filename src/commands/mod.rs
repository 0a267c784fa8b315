//! One module a verb, each with its clap `Args` (whose doc comment is the
//! `--help` text) and a `run` that returns the process exit code.

pub mod create;
pub mod delete;
pub mod event;
pub mod kill;
pub mod list;
pub mod run;
pub mod shutdown;
pub mod start;
pub mod state;
pub mod supervise;
pub mod version;
pub mod wait;

mod common;
