//! Fan-out: the time from a container's exit to the last of 1,000
//! subscriber FIFOs receiving its `stopped` line. The benchmark holds the
//! 1,000 read ends in one epoll set. The baseline is the benchmark itself
//! writing one line of the same size to the same 1,000 FIFOs (from a
//! thread, timed from its first write), read by the same epoll loop.

use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::time::Instant;

use rustix::event::{epoll, Timespec};
use rustix::io::Errno;
use serde_json::json;

use super::{order, progress, wire, Ctx, Side};
use crate::opts::Opts;
use crate::report::{section, Row, Target, Unit};
use crate::stats::median;
use crate::sys::{self, Ctl, Reply, Stamps, DEADLINE};
use crate::time::now_ns;
use crate::Res;

/// The 1,000 read ends in an epoll set.
struct Readers {
    ep: OwnedFd,
    fds: Vec<OwnedFd>,
}

impl Readers {
    /// Waits until every FIFO has delivered one line; returns when the
    /// first and the last were read. Fails when a FIFO gets more than one.
    fn collect(&self) -> Res<(u64, u64)> {
        let n = self.fds.len();
        let mut newlines = vec![0u32; n];
        let mut left = n;
        let mut first = 0;
        let mut events = Vec::with_capacity(1024);
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + DEADLINE;
        loop {
            let rest = deadline.saturating_duration_since(Instant::now());
            if rest.is_zero() {
                return Err(format!("{left} of {n} subscribers got nothing within {DEADLINE:?}"));
            }
            let timeout = Timespec { tv_sec: rest.as_secs() as i64, tv_nsec: 0 };
            events.clear();
            match epoll::wait(&self.ep, rustix::buffer::spare_capacity(&mut events), Some(&timeout)) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(format!("epoll_wait: {e}")),
            }
            for event in &events {
                let i = event.data.u64() as usize;
                loop {
                    match rustix::io::read(&self.fds[i], &mut buf) {
                        Ok(0) => return Err(format!("subscriber fifo {i}: end of file")),
                        Ok(k) => {
                            let lines = buf[..k].iter().filter(|b| **b == b'\n').count() as u32;
                            if newlines[i] == 0 && lines > 0 {
                                left -= 1;
                                let at = now_ns();
                                if first == 0 {
                                    first = at;
                                }
                                if left == 0 {
                                    return Ok((first, at));
                                }
                            }
                            newlines[i] += lines;
                            if newlines[i] > 1 {
                                return Err(format!("subscriber fifo {i} got {} lines for one event", newlines[i]));
                            }
                        }
                        Err(Errno::AGAIN) => break,
                        Err(Errno::INTR) => {}
                        Err(e) => return Err(format!("read subscriber fifo {i}: {e}")),
                    }
                }
            }
        }
    }
}

/// `pidvisor-bench fanout --root R --pid P --dir D [--rounds N] [--subscribers N]`.
pub fn run(opts: &Opts) -> Res<serde_json::Value> {
    let ctx = Ctx::new(opts)?;
    let n = opts.number("subscribers", 1000)?.max(1) as usize;
    let nofile = sys::raise_nofile();
    if nofile < (2 * n + 64) as u64 {
        return Err(format!("RLIMIT_NOFILE is {nofile}; {} subscribers need {}", n, 2 * n + 64));
    }
    let ctl = Ctl::connect(&ctx.root, ctx.pid)?;
    let mut reply = Reply::create(&ctx.file("reply"))?;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| format!("epoll_create: {e}"))?;
    let mut fds = Vec::with_capacity(n);
    let mut paths = Vec::with_capacity(n);
    let mut subscribe = Vec::new();
    for i in 0..n {
        let path = ctx.file(&format!("sub-{i}"));
        sys::mkfifo(&path)?;
        let fd = sys::open_reader(&path)?;
        epoll::add(&ep, &fd, epoll::EventData::new_u64(i as u64), epoll::EventFlags::IN)
            .map_err(|e| format!("epoll_ctl: {e}"))?;
        fds.push(fd);
        let request = json!({"op": "subscribe", "path": wire(&path), "types": ["stopped"]});
        subscribe.extend(serde_json::to_vec(&request).expect("serializes"));
        subscribe.push(b'\n');
        paths.push(path);
    }
    ctl.send_raw(&subscribe)?;
    // Requests are handled in order: once `version` is answered, every
    // subscription before it is in place.
    reply.request(&ctl, json!({"op": "version"}))?;
    progress("fanout", format!("{n} subscribers registered"));
    let readers = Readers { ep, fds };

    let stamps_path = ctx.file("stamps");
    let stamps = Stamps::create(&stamps_path, 1)?;
    let go_path = ctx.file("go");
    sys::mkfifo(&go_path)?;
    let go = sys::open_rdwr(&go_path)?;
    let exit_bin = wire(&ctx.helper("bench-exit")?);

    // The baseline's writer: a thread holding write ends to the same FIFOs.
    let writers: Vec<OwnedFd> = paths.iter().map(|p| sys::open_writer(p)).collect::<Res<_>>()?;
    let line = format!(
        "{{\"seq\":1000000,\"type\":\"stopped\",\"id\":\"fan-0\",\"instance\":999999,\"pid\":123456,\"time\":\"{}\",\"exit_code\":0,\"signal\":null,\"core_dumped\":false,\"status\":0}}\n",
        crate::time::rfc3339_now()
    );
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (t0_tx, t0_rx) = mpsc::channel::<Res<u64>>();
    let writer = std::thread::spawn(move || {
        while go_rx.recv().is_ok() {
            let t0 = now_ns();
            let result = writers.iter().try_for_each(|fd| sys::write_all(fd, line.as_bytes(), "subscriber fifo"));
            if t0_tx.send(result.map(|_| t0)).is_err() {
                break;
            }
        }
    });

    let mut last = [Vec::new(), Vec::new()];
    let mut first = [Vec::new(), Vec::new()];
    let mut result = Ok(());
    'rounds: for round in 0..ctx.rounds {
        for side in order(round) {
            let (t_first, t_last, t0) = match side {
                Side::Pidvisor => {
                    stamps.clear(0);
                    let id = format!("fan-{round}");
                    let r = reply.request(
                        &ctl,
                        json!({
                            "op": "create", "id": id, "argv": [exit_bin, wire(&stamps_path), "0"],
                            "stdin": wire(&go_path), "start": true, "remove": true,
                        }),
                    );
                    if let Err(e) = r {
                        result = Err(e);
                        break 'rounds;
                    }
                    sys::write_all(&go, b"g", "go fifo")?;
                    let (a, b) = match readers.collect() {
                        Ok(t) => t,
                        Err(e) => {
                            result = Err(e);
                            break 'rounds;
                        }
                    };
                    (a, b, stamps.get(0))
                }
                Side::Baseline => {
                    go_tx.send(()).map_err(|_| "the writer thread is gone")?;
                    let (a, b) = readers.collect()?;
                    let t0 = t0_rx.recv().map_err(|_| "the writer thread is gone")??;
                    (a, b, t0)
                }
            };
            if t0 == 0 || t0 > t_first {
                return Err(format!("round {round}: bad start stamp {t0}"));
            }
            last[side as usize].push((t_last - t0) as f64 / 1e3);
            first[side as usize].push((t_first - t0) as f64 / 1e3);
        }
        progress(
            "fanout",
            format!(
                "round {}/{}: pidvisor exit → last {:.0} µs, baseline first write → last {:.0} µs",
                round + 1,
                ctx.rounds,
                last[0].last().unwrap_or(&0.0),
                last[1].last().unwrap_or(&0.0)
            ),
        );
    }
    drop(go_tx);
    let _ = writer.join();
    result?;
    let rows = [Row {
        name: format!("fan-out to {n} subscribers (exit → last)"),
        unit: Unit::Micros,
        pidvisor: median(&last[0]),
        baseline: Some(median(&last[1])),
        baseline_name: format!("{n} writes"),
        target: Target::AtMost(2000.0),
        note: Some(format!(
            "median of {} rounds; exit → first subscriber: pidvisor {:.0} µs, baseline first write → first {:.0} µs",
            ctx.rounds,
            median(&first[0]),
            median(&first[1])
        )),
    }];
    let raw = json!({
        "subscribers": n,
        "rounds": ctx.rounds,
        "pidvisor_exit_to_last_us": last[0],
        "baseline_first_write_to_last_us": last[1],
        "pidvisor_exit_to_first_us": first[0],
        "baseline_first_write_to_first_us": first[1],
    });
    Ok(section("fanout", &rows, raw))
}
