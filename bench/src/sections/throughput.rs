//! Lifecycle throughput: create + start → stopped of `/bin/true`, sent as
//! request lines on the control FIFO and driven by the events of a
//! subscriber FIFO, with 1 and 2 containers in flight; once with
//! `"start": true` and once as a `create` followed, on its `created` event,
//! by a separate `start`. The baseline is a posix_spawn + pidfd + epoll +
//! waitid loop with as many children in flight.

use std::os::fd::{AsRawFd, OwnedFd};

use rustix::event::epoll;
use rustix::io::Errno;
use serde_json::json;

use super::{order, progress, wire, Ctx, Side};
use crate::opts::Opts;
use crate::report::{section, Row, Target, Unit};
use crate::stats::median;
use crate::sys::{self, field, number_field, Ctl, Lines, Reply, Spawner};
use crate::time::now_ns;
use crate::Res;

/// The program every lifecycle runs.
const TRUE: &str = "/bin/true";

/// `count` lifecycles through pidvisor with `inflight` at a time; returns
/// lifecycles per second.
fn pidvisor_round(
    ctx: &Ctx,
    ctl: &Ctl,
    reply: &mut Reply,
    tag: &str,
    count: usize,
    inflight: usize,
    split: bool,
) -> Res<f64> {
    // A subscriber of its own, with only the types this mode needs, so
    // other rounds' subscribers cost nothing here; closed at the end.
    let sub = ctx.file(&format!("{tag}.sub"));
    sys::mkfifo(&sub)?;
    let mut lines = Lines::new(sys::open_reader(&sub)?, "subscriber fifo");
    let types = if split { json!(["created", "stopped"]) } else { json!(["stopped"]) };
    reply.request(ctl, json!({"op": "subscribe", "path": wire(&sub), "types": types}))?;
    let _ = std::fs::remove_file(&sub);
    let create = |n: usize| -> Res<()> {
        let line = format!(
            "{{\"op\":\"create\",\"id\":\"{tag}-{n}\",\"argv\":[\"{TRUE}\"],\"remove\":true{}}}\n",
            if split { "" } else { ",\"start\":true" }
        );
        ctl.send_raw(line.as_bytes())
    };
    let started = now_ns();
    let mut sent = 0;
    while sent < inflight.min(count) {
        create(sent)?;
        sent += 1;
    }
    let mut done = 0;
    while done < count {
        let (line, _) = lines.next_line()?;
        match field(&line, "type") {
            Some(b"created") => {
                let id = String::from_utf8_lossy(field(&line, "id").unwrap_or_default()).into_owned();
                ctl.send_raw(format!("{{\"op\":\"start\",\"id\":\"{id}\"}}\n").as_bytes())?;
            }
            Some(b"stopped") => {
                if number_field(&line, "status") != Some(0) {
                    return Err(format!("{TRUE} did not exit 0: {}", String::from_utf8_lossy(&line)));
                }
                done += 1;
                if sent < count {
                    create(sent)?;
                    sent += 1;
                }
            }
            _ => {}
        }
    }
    Ok(count as f64 / ((now_ns() - started) as f64 / 1e9))
}

/// The baseline: posix_spawn + pidfd_open + epoll + waitid(P_PIDFD) with
/// `inflight` children at a time; returns lifecycles per second.
fn baseline_round(spawner: &Spawner, count: usize, inflight: usize) -> Res<f64> {
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| format!("epoll_create: {e}"))?;
    let mut running: Vec<OwnedFd> = Vec::new();
    let spawn = |running: &mut Vec<OwnedFd>| -> Res<()> {
        let pidfd = sys::pidfd(spawner.spawn(&[], None)?)?;
        epoll::add(&ep, &pidfd, epoll::EventData::new_u64(pidfd.as_raw_fd() as u64), epoll::EventFlags::IN)
            .map_err(|e| format!("epoll_ctl: {e}"))?;
        running.push(pidfd);
        Ok(())
    };
    let started = now_ns();
    let mut sent = 0;
    while sent < inflight.min(count) {
        spawn(&mut running)?;
        sent += 1;
    }
    let mut done = 0;
    let mut events = Vec::with_capacity(8);
    while done < count {
        events.clear();
        match epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), None) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(format!("epoll_wait: {e}")),
        }
        for event in &events {
            let key = event.data.u64();
            let Some(pos) = running.iter().position(|fd| fd.as_raw_fd() as u64 == key) else { continue };
            let pidfd = running.swap_remove(pos);
            let status = sys::reap(&pidfd)?;
            if status != 0 {
                return Err(format!("{TRUE} exited with status {status}"));
            }
            drop(pidfd);
            done += 1;
            if sent < count {
                spawn(&mut running)?;
                sent += 1;
            }
        }
    }
    Ok(count as f64 / ((now_ns() - started) as f64 / 1e9))
}

/// `pidvisor-bench throughput --root R --pid P --dir D [--rounds N] [--count N]`.
pub fn run(opts: &Opts) -> Res<serde_json::Value> {
    let ctx = Ctx::new(opts)?;
    let count = opts.number("count", 1000)?.max(1) as usize;
    let ctl = Ctl::connect(&ctx.root, ctx.pid)?;
    let mut reply = Reply::create(&ctx.file("reply"))?;
    let spawner = Spawner::new(&[TRUE])?;
    let modes: [(&str, usize); 2] = [("1", 1), ("2", 2)];
    let mut start_rates = vec![Vec::new(); 2];
    let mut split_rates = vec![Vec::new(); 2];
    let mut base_rates = vec![Vec::new(); 2];
    for round in 0..ctx.rounds {
        for (m, (label, inflight)) in modes.iter().enumerate() {
            for side in order(round + m as u64) {
                match side {
                    Side::Pidvisor => {
                        let tag = format!("tp{label}-r{round}");
                        let start =
                            pidvisor_round(&ctx, &ctl, &mut reply, &format!("{tag}-s"), count, *inflight, false)?;
                        let split =
                            pidvisor_round(&ctx, &ctl, &mut reply, &format!("{tag}-c"), count, *inflight, true)?;
                        start_rates[m].push(start);
                        split_rates[m].push(split);
                    }
                    Side::Baseline => base_rates[m].push(baseline_round(&spawner, count, *inflight)?),
                }
            }
            progress(
                "throughput",
                format!(
                    "round {}/{} {label} in flight: start:true {:.0}/s, create+start {:.0}/s, posix_spawn {:.0}/s",
                    round + 1,
                    ctx.rounds,
                    start_rates[m].last().unwrap_or(&0.0),
                    split_rates[m].last().unwrap_or(&0.0),
                    base_rates[m].last().unwrap_or(&0.0),
                ),
            );
        }
    }
    let mut rows = Vec::new();
    for (m, (label, _)) in modes.iter().enumerate() {
        let base = median(&base_rates[m]);
        rows.push(Row {
            name: format!("lifecycles/s, \"start\":true, {label} in flight"),
            unit: Unit::PerSecond,
            pidvisor: median(&start_rates[m]),
            baseline: Some(base),
            baseline_name: "posix_spawn loop".into(),
            target: Target::RatioAtLeast(0.8),
            note: (m == 0).then(|| {
                format!(
                    "{count} lifecycles of {TRUE} a round, {} rounds; requests without reply, \"remove\":true",
                    ctx.rounds
                )
            }),
        });
        rows.push(Row {
            name: format!("lifecycles/s, create + start, {label} in flight"),
            unit: Unit::PerSecond,
            pidvisor: median(&split_rates[m]),
            baseline: Some(base),
            baseline_name: "posix_spawn loop".into(),
            target: Target::RatioAtLeast(0.6),
            note: None,
        });
    }
    let raw = json!({
        "count": count,
        "rounds": ctx.rounds,
        "start_true_per_s": start_rates,
        "create_then_start_per_s": split_rates,
        "posix_spawn_per_s": base_rates,
        "inflight": [1, 2],
    });
    Ok(section("throughput", &rows, raw))
}
