//! Exit → subscriber latency. One container at a time runs `bench-exit`;
//! once its `started` event has arrived (the supervisor is idle again) the
//! benchmark writes the `go` byte, the child stamps CLOCK_MONOTONIC into a
//! shared page and `_exit`s, and the time is taken when the `stopped` line
//! is read from the subscriber FIFO. The baseline is `bench-mini`, the
//! least a supervisor can do, read by the same reader.

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};

use serde_json::json;

use super::{order, progress, wire, Ctx, Side};
use crate::opts::Opts;
use crate::report::{section, Row, Target, Unit};
use crate::stats::{median, percentile};
use crate::sys::{self, field, Ctl, Lines, Reply, Stamps};
use crate::Res;

/// `bench-mini` as a child of the benchmark, killed and reaped on drop.
pub struct Mini {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Mini {
    /// Starts `bench-mini SUB GO ARGV...`.
    pub fn start(ctx: &Ctx, sub: &str, go: &str, argv: &[String]) -> Res<Mini> {
        let mut child = Command::new(ctx.helper("bench-mini")?)
            .arg(sub)
            .arg(go)
            .args(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("start bench-mini: {e}"))?;
        let stdin = child.stdin.take();
        Ok(Mini { child, stdin })
    }

    /// Asks for one child: `ID ARG...`.
    pub fn spawn(&mut self, id: &str, args: &str) -> Res<()> {
        let stdin = self.stdin.as_mut().expect("open until drop");
        writeln!(stdin, "{id} {args}").and_then(|_| stdin.flush()).map_err(|e| format!("write to bench-mini: {e}"))
    }
}

impl Drop for Mini {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads lines until the event `kind` of container `id`; returns when it
/// was read. A `stopped` while waiting for `started` is an error.
pub fn wait_event(lines: &mut Lines, kind: &str, id: &str) -> Res<u64> {
    loop {
        let (line, at) = lines.next_line()?;
        if field(&line, "id") != Some(id.as_bytes()) {
            continue;
        }
        let got = field(&line, "type").unwrap_or_default();
        if got == kind.as_bytes() {
            return Ok(at);
        }
        if got == b"stopped" {
            return Err(format!("{id} stopped before {kind}: {}", String::from_utf8_lossy(&line)));
        }
    }
}

/// `pidvisor-bench latency --root R --pid P --dir D [--rounds N] [--count N]`.
pub fn run(opts: &Opts) -> Res<serde_json::Value> {
    let ctx = Ctx::new(opts)?;
    let count = opts.number("count", 2000)?.max(1) as usize;
    let stamps_path = ctx.file("stamps");
    let stamps = Stamps::create(&stamps_path, count)?;
    let go_path = ctx.file("go");
    sys::mkfifo(&go_path)?;
    // Read-write: the FIFO always has a writer, so a child never reads EOF.
    let go = sys::open_rdwr(&go_path)?;
    let exit_bin = wire(&ctx.helper("bench-exit")?);

    let ctl = Ctl::connect(&ctx.root, ctx.pid)?;
    let mut reply = Reply::create(&ctx.file("reply"))?;
    let pv_sub = ctx.file("pidvisor.sub");
    sys::mkfifo(&pv_sub)?;
    let mut pv_lines = Lines::new(sys::open_reader(&pv_sub)?, "pidvisor subscriber fifo");
    reply.request(&ctl, json!({"op": "subscribe", "path": wire(&pv_sub), "types": ["started", "stopped"]}))?;

    let mini_sub = ctx.file("mini.sub");
    sys::mkfifo(&mini_sub)?;
    let mut mini_lines = Lines::new(sys::open_reader(&mini_sub)?, "bench-mini subscriber fifo");
    let mut mini = Mini::start(&ctx, &wire(&mini_sub), &wire(&go_path), &[exit_bin.clone(), wire(&stamps_path)])?;

    let mut all: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    let mut per_round: [Vec<(u64, u64)>; 2] = [Vec::new(), Vec::new()];
    for round in 0..ctx.rounds {
        for side in order(round) {
            let mut samples = Vec::with_capacity(count);
            for i in 0..count {
                stamps.clear(i);
                let id = format!("lat-{round}-{i}");
                let lines = match side {
                    Side::Pidvisor => {
                        ctl.send(&json!({
                            "op": "create", "id": id,
                            "argv": [exit_bin, wire(&stamps_path), i.to_string()],
                            "stdin": wire(&go_path), "start": true, "remove": true,
                        }))?;
                        &mut pv_lines
                    }
                    Side::Baseline => {
                        mini.spawn(&id, &i.to_string())?;
                        &mut mini_lines
                    }
                };
                wait_event(lines, "started", &id)?;
                sys::write_all(&go, b"g", "go fifo")?;
                let read_at = wait_event(lines, "stopped", &id)?;
                let stamp = stamps.get(i);
                if stamp == 0 || stamp > read_at {
                    return Err(format!("{id}: bad exit stamp {stamp} (event read at {read_at})"));
                }
                samples.push(read_at - stamp);
            }
            let k = side as usize;
            per_round[k].push((percentile(&samples, 50.0), percentile(&samples, 99.0)));
            progress(
                "latency",
                format!(
                    "round {}/{} {:?}: p50 {:.1} µs, p99 {:.1} µs over {count} exits",
                    round + 1,
                    ctx.rounds,
                    side,
                    percentile(&samples, 50.0) as f64 / 1e3,
                    percentile(&samples, 99.0) as f64 / 1e3
                ),
            );
            all[k].extend(samples);
        }
    }
    drop(mini);

    let us = |ns: u64| ns as f64 / 1e3;
    let [pv, base] = &all;
    // With --one-cpu (scripts/bench runs both sides under taskset): the same
    // measurement without cross-CPU wake-ups, for information.
    let one_cpu = opts.flag("one-cpu");
    let (suffix, targets) = if one_cpu {
        (", all on one CPU", [Target::None, Target::None])
    } else {
        ("", [Target::RatioAtMost(1.3), Target::RatioAtMost(1.5)])
    };
    let [p50_target, p99_target] = targets;
    let note = format!(
        "{} exits per side over {} interleaved rounds, pooled; median of per-round p50: pidvisor {:.1} µs, base {:.1} µs",
        pv.len(),
        ctx.rounds,
        median(&per_round[0].iter().map(|r| us(r.0)).collect::<Vec<_>>()),
        median(&per_round[1].iter().map(|r| us(r.0)).collect::<Vec<_>>()),
    );
    let rows = [
        Row {
            name: format!("exit → subscriber latency p50{suffix}"),
            unit: Unit::Micros,
            pidvisor: us(percentile(pv, 50.0)),
            baseline: Some(us(percentile(base, 50.0))),
            baseline_name: "bench-mini".into(),
            target: p50_target,
            note: Some(note),
        },
        Row {
            name: format!("exit → subscriber latency p99{suffix}"),
            unit: Unit::Micros,
            pidvisor: us(percentile(pv, 99.0)),
            baseline: Some(us(percentile(base, 99.0))),
            baseline_name: "bench-mini".into(),
            target: p99_target,
            note: None,
        },
    ];
    let raw = json!({
        "exits_per_side": pv.len(),
        "rounds": ctx.rounds,
        "pidvisor_rounds_p50_p99_ns": per_round[0],
        "baseline_rounds_p50_p99_ns": per_round[1],
        "pidvisor_p90_ns": percentile(pv, 90.0),
        "baseline_p90_ns": percentile(base, 90.0),
        "pidvisor_max_ns": pv.iter().max(),
        "baseline_max_ns": base.iter().max(),
    });
    Ok(section(if one_cpu { "latency-one-cpu" } else { "latency" }, &rows, raw))
}
