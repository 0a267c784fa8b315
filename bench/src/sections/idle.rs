//! Idle cost: the supervisor's wakeups per second (voluntary + involuntary
//! context switches from /proc/PID/status over a window in which nothing
//! happens) and its resident memory, with 100 and then with many more
//! sleeping containers (`sleep 100000`). There is no baseline process: an
//! idle supervisor should not wake at all, and memory is judged against
//! absolute targets.

use std::time::Duration;

use serde_json::json;

use super::{progress, Ctx};
use crate::opts::Opts;
use crate::report::{section, Row, Target, Unit};
use crate::sys::{proc_status, Ctl, ProcStatus, Reply};
use crate::Res;

/// Requests sent before waiting for their replies.
const BATCH: u64 = 100;

/// One measurement at a number of containers.
struct Sample {
    containers: u64,
    wakeups_per_s: f64,
    status: ProcStatus,
}

/// Sleeps `settle` (the loop finishes what the last request caused), then
/// counts the supervisor's context switches over `window`.
fn measure(pid: i32, containers: u64, settle: Duration, window: Duration) -> Res<Sample> {
    std::thread::sleep(settle);
    let before = proc_status(pid)?;
    std::thread::sleep(window);
    let after = proc_status(pid)?;
    Ok(Sample {
        containers,
        wakeups_per_s: (after.switches - before.switches) as f64 / window.as_secs_f64(),
        status: after,
    })
}

/// `pidvisor-bench idle --root R --pid P --dir D [--counts 100,10000]
/// [--window SECONDS]`.
pub fn run(opts: &Opts) -> Res<serde_json::Value> {
    let ctx = Ctx::new(opts)?;
    let counts = opts.numbers("counts", &[100, 10_000])?;
    let window = Duration::from_secs(opts.number("window", 10)?.max(1));
    let settle = Duration::from_millis(opts.number("settle-ms", 1000)?);
    let ctl = Ctl::connect(&ctx.root, ctx.pid)?;
    let mut reply = Reply::create(&ctx.file("reply"))?;
    let before_any = measure(ctx.pid, 0, settle, window.min(Duration::from_secs(2)))?;
    progress(
        "idle",
        format!("no containers: {:.2} wakeups/s, RSS {} KiB", before_any.wakeups_per_s, before_any.status.rss_kib),
    );
    let mut samples = Vec::new();
    let mut created = 0u64;
    let mut limit_error: Option<String> = None;
    for &target in &counts {
        while created < target && limit_error.is_none() {
            let batch = BATCH.min(target - created);
            let mut lines = Vec::new();
            for i in created..created + batch {
                let request = json!({
                    "op": "create", "id": format!("idle-{i}"), "argv": ["sleep", "100000"],
                    "start": true, "reply": reply.path(),
                });
                lines.extend(serde_json::to_vec(&request).expect("serializes"));
                lines.push(b'\n');
            }
            ctl.send_raw(&lines)?;
            for _ in 0..batch {
                match reply.read() {
                    Ok(_) => created += 1,
                    Err(e) => limit_error = Some(e),
                }
            }
        }
        if created == 0 {
            return Err(format!("no container could be created: {}", limit_error.unwrap_or_default()));
        }
        let sample = measure(ctx.pid, created, settle, window)?;
        progress(
            "idle",
            format!(
                "{created} sleeping containers: {:.2} wakeups/s, RSS {} KiB",
                sample.wakeups_per_s, sample.status.rss_kib
            ),
        );
        let reached_target = created == target;
        samples.push(sample);
        if !reached_target {
            break;
        }
    }
    let first = &samples[0];
    let mut rows = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        rows.push(Row {
            name: format!("idle wakeups/s, {} containers", s.containers),
            unit: Unit::Wakeups,
            pidvisor: s.wakeups_per_s,
            baseline: None,
            baseline_name: "target 0".into(),
            target: Target::AtMost(0.0),
            note: (i == 0).then(|| {
                format!(
                    "context switches of the supervisor over {} s, {:.1} s after the last request",
                    window.as_secs(),
                    settle.as_secs_f64()
                )
            }),
        });
    }
    rows.push(Row {
        name: format!("RSS, {} containers", first.containers),
        unit: Unit::Kib,
        pidvisor: first.status.rss_kib as f64,
        baseline: None,
        baseline_name: format!("{} with none", Unit::Kib.show(before_any.status.rss_kib as f64)),
        target: Target::AtMost(4096.0),
        note: None,
    });
    if let Some(last) = samples.last().filter(|s| s.containers > first.containers) {
        let per =
            (last.status.rss_kib as f64 - first.status.rss_kib as f64) / (last.containers - first.containers) as f64;
        let note = match &limit_error {
            Some(e) => format!(
                "the machine held only {} of the {} containers asked for (create failed: {e}); measured at {}",
                last.containers,
                counts.last().unwrap_or(&0),
                last.containers
            ),
            None => format!(
                "(RSS@{} {} − RSS@{} {}) / {}",
                last.containers,
                Unit::Kib.show(last.status.rss_kib as f64),
                first.containers,
                Unit::Kib.show(first.status.rss_kib as f64),
                last.containers - first.containers
            ),
        };
        rows.push(Row {
            name: format!("RSS per further container ({}→{})", first.containers, last.containers),
            unit: Unit::Kib,
            pidvisor: per,
            baseline: None,
            baseline_name: format!("RSS@{}: {}", last.containers, Unit::Kib.show(last.status.rss_kib as f64)),
            target: Target::AtMost(2.0),
            note: Some(note),
        });
    }
    let raw = json!({
        "window_s": window.as_secs(),
        "none": { "wakeups_per_s": before_any.wakeups_per_s, "rss_kib": before_any.status.rss_kib },
        "samples": samples.iter().map(|s| json!({
            "containers": s.containers, "wakeups_per_s": s.wakeups_per_s, "rss_kib": s.status.rss_kib,
        })).collect::<Vec<_>>(),
        "limit_error": limit_error,
    });
    Ok(section("idle", &rows, raw))
}
