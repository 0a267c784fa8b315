//! The five measurements, one module each. Every section runs against a
//! fresh supervisor that `scripts/bench` started on a private root, owns a
//! scratch directory for its FIFOs, and alternates pidvisor's rounds with
//! the baseline's (which goes first swaps every round) so that both see the
//! same load from the rest of the machine.

pub mod fanout;
pub mod idle;
pub mod latency;
pub mod run;
pub mod throughput;

use std::path::{Path, PathBuf};

use crate::opts::Opts;
use crate::Res;

/// What every section is given.
pub struct Ctx {
    /// The supervisor's root.
    pub root: PathBuf,
    /// The supervisor's PID.
    pub pid: i32,
    /// A fresh scratch directory for this section's FIFOs and files.
    pub dir: PathBuf,
    /// Rounds per side.
    pub rounds: u64,
    /// The directory holding `bench-exit`, `bench-mini` and `pidvisor`.
    pub bin_dir: PathBuf,
}

impl Ctx {
    /// Reads `--root`, `--pid`, `--dir` and `--rounds` (at least 1).
    pub fn new(opts: &Opts) -> Res<Ctx> {
        let dir = opts.path("dir")?;
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let bin_dir = exe.parent().map(Path::to_path_buf).ok_or("current_exe has no directory")?;
        Ok(Ctx { root: opts.path("root")?, pid: opts.pid()?, dir, rounds: opts.number("rounds", 5)?.max(1), bin_dir })
    }

    /// A helper binary built next to this one.
    pub fn helper(&self, name: &str) -> Res<PathBuf> {
        let path = self.bin_dir.join(name);
        if path.exists() {
            Ok(path)
        } else {
            Err(format!("{} is missing: build with `cargo build --release -p pidvisor-bench`", path.display()))
        }
    }

    /// A path in the scratch directory, as the string the wire protocol wants.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Which side of a comparison a round measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// pidvisor.
    Pidvisor,
    /// The baseline.
    Baseline,
}

/// The order of the two sides in round `round`: alternating, so neither
/// always runs right after the other's warm-up.
pub fn order(round: u64) -> [Side; 2] {
    if round % 2 == 0 {
        [Side::Pidvisor, Side::Baseline]
    } else {
        [Side::Baseline, Side::Pidvisor]
    }
}

/// Prints progress on stderr (stdout carries the section's JSON).
pub fn progress(section: &str, what: impl std::fmt::Display) {
    eprintln!("  [{section}] {what}");
}

/// A path as a string for a JSON request.
pub fn wire(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
