//! pidvisor's benchmark suite. `scripts/bench` starts a supervisor on a
//! private root for each section and runs `pidvisor-bench SECTION` against
//! it; every section measures pidvisor and a baseline in the same run,
//! interleaving their rounds so that both see the same machine, and prints
//! one JSON object with its table rows. `pidvisor-bench report` turns those
//! objects into the table (or, with `--json`, one JSON document).
//!
//! The baselines are what the kernel offers without a supervisor in the
//! way: `bench-mini` (spawn + pidfd + epoll + waitid + one JSON line to a
//! FIFO), a posix_spawn loop, running `true` directly, and the benchmark
//! itself writing one line to every FIFO. `bench-exit` is the container
//! process whose exit is timed.

pub mod opts;
pub mod report;
pub mod sections;
pub mod stats;
pub mod sys;
pub mod time;

/// Results and errors of the benchmark programs: errors are messages that
/// name what failed, printed once by `main`.
pub type Res<T> = Result<T, String>;
