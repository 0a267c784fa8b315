//! `bench-mini SUB_FIFO GO_FIFO PROG [ARG...]`: the baseline for exit
//! latency — the least a supervisor must do. For each line `ID [ARG...]` on
//! stdin it posix_spawns `PROG ARG... ARG...` with the `go` FIFO as stdin,
//! opens a pidfd and adds it to an epoll set, and writes a `started` line to
//! SUB_FIFO; when a pidfd polls readable it reaps the child with waitid(2)
//! and writes a `stopped` line shaped like pidvisor's. Nothing else: no
//! journal, no log, no request parsing beyond splitting on spaces.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use rustix::event::epoll;
use rustix::io::Errno;

use pidvisor_bench::sys::{self, Spawner};
use pidvisor_bench::time::rfc3339_now;
use pidvisor_bench::Res;

/// The epoll token of stdin; children are keyed by their pidfd's number.
const STDIN: u64 = u64::MAX;

struct Child {
    id: String,
    pid: i32,
    seq: u64,
    pidfd: OwnedFd,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-mini: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        return Err("usage: bench-mini SUB_FIFO GO_FIFO PROG [ARG...]".into());
    }
    let sub = sys::open_writer(Path::new(&args[0]))?;
    sys::set_blocking(&sub, "subscriber fifo")?;
    let go = sys::open_reader(Path::new(&args[1]))?;
    sys::set_blocking(&go, "go fifo")?;
    let spawner = Spawner::new(&args[2..])?;
    let stdin = rustix::stdio::stdin();
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| format!("epoll_create: {e}"))?;
    epoll::add(&ep, stdin, epoll::EventData::new_u64(STDIN), epoll::EventFlags::IN)
        .map_err(|e| format!("epoll_ctl stdin: {e}"))?;
    let mut children: Vec<Child> = Vec::new();
    let mut pending = Vec::new();
    let mut seq = 0u64;
    let mut events = Vec::with_capacity(64);
    loop {
        events.clear();
        match epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), None) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(format!("epoll_wait: {e}")),
        }
        for event in &events {
            let key = event.data.u64();
            if key == STDIN {
                let mut buf = [0u8; 4096];
                let n = match rustix::io::read(stdin, &mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(Errno::INTR) | Err(Errno::AGAIN) => continue,
                    Err(e) => return Err(format!("read stdin: {e}")),
                };
                pending.extend_from_slice(&buf[..n]);
                while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=pos).collect();
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    let mut words = text.split(' ');
                    let id = words.next().unwrap_or("x").to_string();
                    let extra: Vec<CString> =
                        words.map(|w| CString::new(w).map_err(|_| "NUL in request".to_string())).collect::<Res<_>>()?;
                    let extra: Vec<&CString> = extra.iter().collect();
                    let pid = spawner.spawn(&extra, Some(go.as_raw_fd()))?;
                    let pidfd = sys::pidfd(pid)?;
                    epoll::add(&ep, &pidfd, epoll::EventData::new_u64(pidfd.as_raw_fd() as u64), epoll::EventFlags::IN)
                        .map_err(|e| format!("epoll_ctl pidfd: {e}"))?;
                    seq += 1;
                    let started = format!(
                        "{{\"seq\":{seq},\"type\":\"started\",\"id\":\"{id}\",\"instance\":{seq},\"pid\":{pid},\"time\":\"{}\"}}\n",
                        rfc3339_now()
                    );
                    sys::write_all(&sub, started.as_bytes(), "subscriber fifo")?;
                    children.push(Child { id, pid, seq, pidfd });
                }
            } else {
                let Some(pos) = children.iter().position(|c| c.pidfd.as_raw_fd() as u64 == key) else { continue };
                let child = children.swap_remove(pos);
                let status = sys::reap(&child.pidfd)?;
                let (code, signal) = if status >= 128 {
                    ("null".to_string(), format!("\"SIG{}\"", status - 128))
                } else {
                    (status.to_string(), "null".into())
                };
                seq += 1;
                let stopped = format!(
                    "{{\"seq\":{seq},\"type\":\"stopped\",\"id\":\"{}\",\"instance\":{},\"pid\":{},\"time\":\"{}\",\"exit_code\":{code},\"signal\":{signal},\"core_dumped\":false,\"status\":{status}}}\n",
                    child.id,
                    child.seq,
                    child.pid,
                    rfc3339_now()
                );
                sys::write_all(&sub, stopped.as_bytes(), "subscriber fifo")?;
            }
        }
    }
}
