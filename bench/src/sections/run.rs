//! What a shell script sees: `pidvisor run --rm ID -- true` per second,
//! each a fresh CLI process with its own id, against running `true`
//! directly. Both are started the same way (std's spawn + wait, stdio on
//! /dev/null), so the difference is the CLI and the round trip through
//! the supervisor.

use std::process::{Command, Stdio};

use serde_json::json;

use super::{order, progress, Ctx, Side};
use crate::opts::Opts;
use crate::report::{section, Row, Target, Unit};
use crate::stats::median;
use crate::time::now_ns;
use crate::Res;

/// Runs `command` to completion with stdio on /dev/null; an error carries
/// its stderr when it does not exit 0.
fn run_one(command: &mut Command) -> Res<()> {
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("spawn {command:?}: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let output = command.stderr(Stdio::piped()).output().map_err(|e| format!("spawn {command:?}: {e}"))?;
    Err(format!("{command:?} exited with {status}; again: {}", String::from_utf8_lossy(&output.stderr).trim()))
}

/// `pidvisor-bench run --root R --pid P --dir D [--rounds N] [--count N]`.
pub fn run(opts: &Opts) -> Res<serde_json::Value> {
    let ctx = Ctx::new(opts)?;
    let count = opts.number("count", 200)?.max(1);
    let pidvisor = ctx.helper("pidvisor")?;
    // Wait until the supervisor reads ctl: `run` would otherwise start one.
    drop(crate::sys::Ctl::connect(&ctx.root, ctx.pid)?);
    let mut rates = [Vec::new(), Vec::new()];
    for round in 0..ctx.rounds {
        for side in order(round) {
            let started = now_ns();
            for i in 0..count {
                match side {
                    Side::Pidvisor => run_one(
                        Command::new(&pidvisor)
                            .arg("--root")
                            .arg(&ctx.root)
                            .args(["run", "--rm", &format!("run-{round}-{i}"), "--", "true"])
                            .env_remove("PIDVISOR_ROOT"),
                    )?,
                    Side::Baseline => run_one(&mut Command::new("true"))?,
                }
            }
            rates[side as usize].push(count as f64 / ((now_ns() - started) as f64 / 1e9));
        }
        progress(
            "run",
            format!(
                "round {}/{}: pidvisor run {:.0}/s, true {:.0}/s",
                round + 1,
                ctx.rounds,
                rates[0].last().unwrap_or(&0.0),
                rates[1].last().unwrap_or(&0.0)
            ),
        );
    }
    let rows = [Row {
        name: "`pidvisor run --rm ID -- true`/s".into(),
        unit: Unit::PerSecond,
        pidvisor: median(&rates[0]),
        baseline: Some(median(&rates[1])),
        baseline_name: "`true` directly".into(),
        target: Target::None,
        note: Some(format!("{count} runs a round, {} rounds, sequential, stdio on /dev/null", ctx.rounds)),
    }];
    let raw = json!({ "count": count, "rounds": ctx.rounds, "pidvisor_run_per_s": rates[0], "true_per_s": rates[1] });
    Ok(section("run", &rows, raw))
}
