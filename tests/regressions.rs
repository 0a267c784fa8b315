//! Regression tests for the defects fixed in "Fixes from review": one test
//! per defect, named after the behaviour it protects, each with a line on
//! what went wrong before. Like the other suites they run the real binary on
//! roots of their own, block on FIFOs, pidfds, subscriptions and child exits
//! (never on a sleep), and kill every process they started, even on panic.
mod common;
use common::*;

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use rustix::fs::{FileType, FlockOperation, Mode, OFlags};
use serde_json::{json, Value};

// ---- helpers ----

fn deadline() -> Instant {
    Instant::now() + DEADLINE
}

fn exit_code(out: &Output) -> i32 {
    out.status.code().unwrap_or_else(|| panic!("killed by a signal: {out:?}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Makes a FIFO at `path` and leaves it unopened.
fn mkfifo(path: &Path) {
    rustix::fs::mknodat(rustix::fs::CWD, path, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
}

/// A FIFO at `path`, opened for reading, to read lines from.
fn fifo_lines(path: &Path) -> Sub {
    Sub::from_fd(fifo_reader(path), path)
}

/// The next line, or a panic naming the FIFO.
fn line(sub: &mut Sub) -> String {
    let path = sub.path.clone();
    sub.next_line(deadline()).unwrap_or_else(|| panic!("no line from {}", path.display()))
}

fn seq(ev: &Value) -> u64 {
    ev["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {ev}"))
}

/// `pidvisor --root ROOT ARGS...` run to completion (with the deadline).
fn cli(root: &Path, args: &[&str]) -> Output {
    run_with_deadline(Command::new(bin()).arg("--root").arg(root).args(args))
}

/// A process in the background, killed and reaped if the test ends before
/// it was waited for.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn spawn(cmd: &mut Command) -> ChildGuard {
        ChildGuard(Some(cmd.spawn().unwrap()))
    }

    /// `pidvisor --root ROOT ARGS...` in the background, stdin from
    /// /dev/null, stdout and stderr to pipes.
    fn cli(root: &Path, args: &[&str]) -> ChildGuard {
        ChildGuard::spawn(
            Command::new(bin())
                .arg("--root")
                .arg(root)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
    }

    /// Waits for the exit (with the deadline); the exit code or 128+signal.
    fn wait(&mut self) -> Option<i32> {
        wait_child(self.0.as_mut().expect("not waited for yet"))
    }

    /// What the exited process wrote on its piped stdout and stderr.
    fn outputs(&mut self) -> (String, String) {
        let child = self.0.as_mut().expect("not waited for yet");
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = child.stdout.take() {
            s.read_to_string(&mut out).unwrap();
        }
        if let Some(mut s) = child.stderr.take() {
            s.read_to_string(&mut err).unwrap();
        }
        (out, err)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Kills the supervisors CLIs started in the background on `root` (the one
/// whose PID is in ROOT/lock, and any other still starting or losing the
/// race for the lock), with everything below them.
struct AutoStarted(PathBuf);

impl Drop for AutoStarted {
    fn drop(&mut self) {
        for pid in supervisors_of(&self.0) {
            kill_tree(pid);
            wait_exited(pid);
        }
    }
}

/// The `pidvisor --root ROOT supervise` processes, by their command line
/// rather than ROOT/lock: one still starting (its client killed by a
/// failing test) has not written its PID there yet.
fn supervisors_of(root: &Path) -> Vec<i32> {
    let needle = format!("--root\0{}\0supervise\0", path_str(root)).into_bytes();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.windows(needle.len()).any(|w| w == needle.as_slice()) {
            pids.push(pid);
        }
    }
    pids
}

/// What became of a request sent while the supervisor may be exiting.
#[derive(Debug)]
enum Answer {
    /// The reply line.
    Reply(Value),
    /// `ctl` had no reader or no name any more (ENXIO, ENOENT, EPIPE):
    /// nothing was written and nothing is owed.
    NotSent,
    /// Written to `ctl`, but the supervisor exited without a reply.
    Silence,
}

impl Answer {
    /// The reply; a panic (with the log) for anything else.
    #[track_caller]
    fn reply(self, sv: &Sv) -> Value {
        match self {
            Answer::Reply(reply) => reply,
            other => panic!("no reply: {other:?}\n{}", sv.log()),
        }
    }
}

/// Writes `req` (with a reply FIFO) to ctl without blocking, then waits for
/// the reply or the supervisor's exit, whichever comes first.
fn request_watching(sv: &Sv, supervisor: &OwnedFd, name: &str, req: Value) -> Answer {
    let flags = OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let ctl = match rustix::fs::open(sv.root.join("ctl"), flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NXIO | rustix::io::Errno::NOENT) => return Answer::NotSent,
        Err(e) => panic!("open ctl: {e}"),
    };
    request_through(&ctl, sv, supervisor, name, req, || {})
}

/// [`request_watching`] through a write end of ctl opened earlier, running
/// `sent` once the request is in.
fn request_through(
    ctl: &OwnedFd,
    sv: &Sv,
    supervisor: &OwnedFd,
    name: &str,
    mut req: Value,
    sent: impl FnOnce(),
) -> Answer {
    let path = sv.dir.0.join(format!("reply-{name}"));
    let mut reply = fifo_lines(&path);
    req["reply"] = path_str(&path).into();
    let mut bytes = serde_json::to_vec(&req).unwrap();
    bytes.push(b'\n');
    // One write of less than PIPE_BUF: all of it or (pipe full) none.
    match rustix::io::write(ctl, &bytes) {
        Ok(n) => assert_eq!(n, bytes.len()),
        // No reader any more (SIGPIPE is ignored in Rust programs).
        Err(rustix::io::Errno::PIPE) => return Answer::NotSent,
        Err(e) => panic!("write ctl: {e}"),
    }
    sent();
    match wait_any(&[&reply.fd, supervisor], deadline()) {
        Some(0) => Answer::Reply(serde_json::from_str(&line(&mut reply)).unwrap()),
        // Gone: a reply it sent before exiting is in the FIFO by now.
        Some(_) => match reply.line_now() {
            Some(l) => Answer::Reply(serde_json::from_str(&l).unwrap()),
            None => Answer::Silence,
        },
        None => panic!("no reply to {req} and the supervisor still runs\n{}", sv.log()),
    }
}

/// Asserts a reply is `ok` or the `shutting_down` error.
#[track_caller]
fn assert_ok_or_shutting_down(answer: &Answer, sv: &Sv) {
    let Answer::Reply(reply) = answer else { panic!("expected a reply, got {answer:?}\n{}", sv.log()) };
    assert!(reply["ok"] == true || reply["error"]["kind"] == "shutting_down", "neither ok nor shutting_down: {reply}");
}

// ---- 1. a stdin FIFO ----

/// Sends `req` with a reply FIFO and returns the FIFO, not waiting.
fn send_with_reply(sv: &Sv, name: &str, mut req: Value) -> Sub {
    let path = sv.dir.0.join(format!("reply-{name}"));
    let reply = fifo_lines(&path);
    req["reply"] = path_str(&path).into();
    sv.client().send_raw(serde_json::to_string(&req).unwrap().as_bytes());
    reply
}

/// A process that writes "hello\n" to the FIFO at `path` (blocking in
/// open(2) until a reader comes) and exits.
fn fifo_writer(path: &Path) -> ChildGuard {
    ChildGuard::spawn(Command::new("sh").args(["-c", "printf 'hello\\n' > \"$1\"", "sh"]).arg(path))
}

// Before, the supervisor opened a stdin FIFO itself without blocking, so the
// container read end-of-file (and exited) before its writer had opened it.
#[test]
fn a_stdin_fifo_is_read_after_its_writer_opens_it() {
    let sv = Sv::start();
    let script = "cat; echo done";

    // On the wire: create then start, and create with "start": true (whose
    // child must not be a vfork child: it blocks before exec).
    for (id, start_now) in [("two-step", false), ("start-now", true)] {
        let stdin = sv.dir.0.join(format!("stdin-{id}"));
        mkfifo(&stdin);
        let stdout = sv.dir.0.join(format!("stdout-{id}"));
        let mut out = fifo_lines(&stdout);
        let mut sub = sv.subscribe(json!({"ids": [id]}));
        let create = json!({
            "op": "create", "id": id, "argv": ["sh", "-c", script], "start": start_now,
            "stdin": path_str(&stdin), "stdout": path_str(&stdout),
        });
        // A reply that waits for execve, which waits for the writer: read
        // it afterwards.
        let mut start_reply = if start_now {
            send_with_reply(&sv, id, create)
        } else {
            let reply = sv.request(create);
            assert_eq!(reply["ok"], true, "create {id}: {reply}\n{}", sv.log());
            send_with_reply(&sv, id, json!({"op": "start", "id": id}))
        };
        // Requests are handled in order: once the barrier (a whole other
        // container's life) is through, the start was handled long since,
        // and the loop is not stuck behind the child.
        sv.barrier();
        let state = sv.request(json!({"op": "state", "id": id}));
        assert_eq!(state["state"]["status"], "created", "{id} ran before its stdin had a writer: {state}");
        assert_eq!(sub.next().expect("created")["type"], "created");
        while let Some(l) = sub.line_now() {
            assert!(!l.contains("\"stopped\""), "{id} stopped before its stdin had a writer: {l}");
        }
        let mut writer = fifo_writer(&stdin);
        assert_eq!(line(&mut out), "hello", "{id}");
        assert_eq!(line(&mut out), "done", "{id}");
        assert_eq!(writer.wait(), Some(0));
        let reply: Value = serde_json::from_str(&line(&mut start_reply)).unwrap();
        assert_eq!(reply["ok"], true, "start {id}: {reply}");
        assert_eq!(sub.next().expect("started")["type"], "started");
        let stopped = sub.next().expect("stopped");
        assert_eq!((&stopped["type"], &stopped["status"]), (&json!("stopped"), &json!(0)), "{stopped}");
    }

    // Through the CLI: `run --stdin FIFO`, the writer waiting first.
    let stdin = sv.dir.0.join("stdin-cli");
    mkfifo(&stdin);
    let mut writer = fifo_writer(&stdin);
    let out = sv.cli(&["run", "--stdin", path_str(&stdin), "cli", "--", "sh", "-c", script]);
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\ndone\n");
    assert_eq!(writer.wait(), Some(0));
}

// ---- 2. lock probes during startup ----

// Before, a client's momentary shared flock on ROOT/lock (its "who holds the
// lock" probe) made a starting supervisor believe another one ran, and exit.
#[test]
fn clients_probing_the_lock_do_not_make_a_starting_supervisor_fail() {
    for round in 0..20 {
        let dir = TempDir::new("probe");
        let root = dir.0.join("root");
        // The lock file a previous supervisor leaves behind: clients probe
        // it from the first moment.
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::File::create(root.join("lock")).unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let (running_tx, running_rx) = mpsc::channel();
        let hammer = {
            let (root, stop, running) = (root.clone(), stop.clone(), running_tx.clone());
            std::thread::spawn(move || {
                let mut codes = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    for args in [&["list"][..], &["state", "x"][..]] {
                        let out = cli(&root, args);
                        codes.push((args[0], exit_code(&out), stderr(&out)));
                    }
                    let _ = running.send(());
                }
                codes
            })
        };
        // A CLI probes once per run, a few microseconds in milliseconds: a
        // startup rarely meets one. This thread takes the same probe (open,
        // shared flock, close) back to back, so that one does, often.
        let prober = {
            let (lock, stop, running) = (root.join("lock"), stop.clone(), running_tx);
            std::thread::spawn(move || {
                let mut held = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
                    let fd = rustix::fs::open(&lock, flags, Mode::empty()).unwrap();
                    if rustix::fs::flock(&fd, FlockOperation::NonBlockingLockShared).is_ok() {
                        held += 1;
                        let _ = running.send(());
                    }
                }
                held
            })
        };
        // Both probe before the supervisor starts.
        running_rx.recv().expect("a probe");
        running_rx.recv().expect("a probe");
        // Sv::start_on panics unless READY=1 comes.
        let sv = std::panic::catch_unwind(|| Sv::start_on(dir, root.clone(), &["--grace", "2s"], &[]));
        stop.store(true, Ordering::Relaxed);
        let codes = hammer.join().expect("the hammer");
        let held = prober.join().expect("the prober");
        let sv = sv.unwrap_or_else(|_| panic!("round {round}: the supervisor did not come up"));
        assert!(held > 0, "round {round}: the prober never held the lock");
        for (verb, code, err) in codes {
            // 1: no supervisor yet (or, for `state x`, no container x).
            assert!(code == 0 || code == 1, "round {round}: {verb} exited {code}: {err}");
        }
        assert_eq!(sv.cli(&["list"]).status.code(), Some(0), "round {round}\n{}", sv.log());
    }
}

// ---- 3. auto-start on a long root ----

// Before, auto-start bound its notify socket at ROOT/client-PID.notify, which
// fails for a root path longer than sun_path's 108 bytes.
#[test]
fn auto_start_works_on_a_root_path_longer_than_108_bytes() {
    let dir = TempDir::new("longroot");
    let root = dir.0.join("a".repeat(50)).join("b".repeat(50)).join("c".repeat(50));
    assert!(root.as_os_str().len() > 150, "{}", root.display());
    let _guard = AutoStarted(root.clone());
    let out = cli(&root, &["run", "x", "--", "true"]);
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("started a supervisor"), "{}", stderr(&out));
    // The next client uses it.
    let out = cli(&root, &["run", "y", "--", "sh", "-c", "exit 3"]);
    assert_eq!(exit_code(&out), 3, "{}", stderr(&out));
}

// ---- 4. the hook workflow from a clean slate, subscriber first ----

// Before, `event` did not start a supervisor: run first on a root with none,
// it failed with "no supervisor" instead of waiting for `created`.
#[test]
fn event_first_then_create_wait_works_from_a_clean_slate() {
    for round in 0..5 {
        let dir = TempDir::new("slate");
        let root = dir.0.join("root");
        let _guard = AutoStarted(root.clone());
        let mut event = ChildGuard::cli(&root, &["event", "--type", "created", "job"]);
        let mut create = ChildGuard::cli(&root, &["create", "--wait", "job", "--", "sh", "-c", "exit 17"]);
        let code = event.wait();
        let (out, err) = event.outputs();
        assert_eq!(code, Some(0), "round {round}: event: {err}");
        let ev: Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("round {round}: event printed {out:?}"));
        assert_eq!((&ev["type"], &ev["id"]), (&json!("created"), &json!("job")), "{ev}");
        let out = cli(&root, &["start", "job"]);
        assert_eq!(exit_code(&out), 0, "round {round}: start: {}", stderr(&out));
        let code = create.wait();
        assert_eq!(code, Some(17), "round {round}: create --wait: {}", create.outputs().1);
    }
}

// ---- 5. a tiny subscriber buffer ----

// Before, an event line longer than --subscriber-buffer could never be
// queued: every subscriber got an overflow line at once, and `run` livelocked
// resubscribing.
#[test]
fn a_subscriber_buffer_smaller_than_one_event_still_delivers_events() {
    const BUFFER: usize = 64;
    let sv = Sv::start_with(&["--grace", "2s", "--subscriber-buffer", &BUFFER.to_string()], &[]);
    let mut sub = sv.subscribe(json!({}));
    let out = sv.cli(&["run", "x", "--", "sh", "-c", "exit 4"]);
    assert_eq!(exit_code(&out), 4, "{}\n{}", stderr(&out), sv.log());
    let mut types = Vec::new();
    while types.last() != Some(&"stopped".to_string()) {
        let l =
            sub.next_line(deadline()).unwrap_or_else(|| panic!("the subscription ended after {types:?}\n{}", sv.log()));
        let ev: Value = serde_json::from_str(&l).unwrap();
        assert_ne!(ev["type"], "overflow", "{ev}");
        assert_eq!(ev["id"], "x", "{ev}");
        assert!(l.len() + 1 > BUFFER, "a line that fits the buffer proves nothing: {l}");
        types.push(ev["type"].as_str().unwrap().to_string());
    }
    assert_eq!(types, ["created", "started", "stopped"]);
}

// ---- 6. since near u64::MAX ----

// Before, `since + 1` overflowed at u64::MAX, and live events started after
// the last published seq rather than after `since`.
#[test]
fn since_near_u64_max_is_accepted_and_live_events_start_after_since() {
    let sv = Sv::start();
    // Events in the ring and the journal, which a wrong reading would replay.
    assert_eq!(sv.run_to_stop("before", &["true"])["status"], 0);

    let path = sv.dir.0.join("events-max");
    let mut max_sub = fifo_lines(&path);
    // Watching the supervisor: until 5f4077c, EventLog::recent_since still
    // computed `since + 1`, and a debug build's supervisor panicked here.
    let supervisor = pidfd(sv.pid).unwrap();
    let req = json!({"op": "subscribe", "path": path_str(&path), "since": u64::MAX});
    let reply = request_watching(&sv, &supervisor, "since-max", req).reply(&sv);
    assert_eq!(reply["ok"], true, "since u64::MAX: {reply}\n{}", sv.log());
    let version = sv.request(json!({"op": "version"}));
    assert_eq!(version["ok"], true, "the supervisor stopped answering: {version}\n{}", sv.log());
    // A replay is written before the reply.
    assert_eq!(max_sub.line_now(), None, "replayed past u64::MAX");

    let last = reply["next"].as_u64().expect("next") - 1;
    let since = last + 5;
    let mut sub = sv.subscribe(json!({"since": since}));
    // Nine events: last+1 to last+9.
    for i in 0..3 {
        assert_eq!(sv.run_to_stop(&format!("after{i}"), &["true"])["status"], 0);
    }
    let first = sub.next().expect("an event");
    assert!(seq(&first) > since, "got seq {} with since {since}: {first}", seq(&first));
    assert_eq!(seq(&first), since + 1, "{first}");
    loop {
        let ev = sub.next().expect("an event");
        assert!(seq(&ev) > since, "{ev}");
        if ev["id"] == "after2" && ev["type"] == "stopped" {
            break;
        }
    }
    // Fanned out in the same iteration as the last one `sub` read.
    assert_eq!(max_sub.line_now(), None, "a live event past u64::MAX");
}

// ---- 7. requests during shutdown ----

// Before, a request still in ctl when the supervisor left its loop (grace
// over, final kill and reap) was never answered: a raw client waited forever.
#[test]
fn a_request_sent_during_shutdown_gets_an_answer() {
    let mut sv = Sv::start();
    let supervisor = pidfd(sv.pid).unwrap();
    let stdout = sv.dir.0.join("stdout");
    let mut out = fifo_lines(&stdout);
    let reply = sv.request(json!({
        "op": "create", "id": "stubborn", "start": true, "stdout": path_str(&stdout),
        "argv": ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"],
    }));
    assert_eq!(reply["ok"], true, "create: {reply}\n{}", sv.log());
    let container = pidfd(reply["pid"].as_i64().unwrap() as i32).unwrap();
    assert_eq!(line(&mut out), "ready");

    sv.client().send_raw(br#"{"op":"shutdown"}"#);
    // Within the grace period, answered by the loop.
    let answer = request_watching(&sv, &supervisor, "grace", json!({"op": "version"}));
    assert_ok_or_shutting_down(&answer, &sv);
    // The container ignores SIGTERM: it dies of the SIGKILL sent once the
    // grace is over, after which the loop no longer reads ctl.
    assert!(wait_any(&[&container], deadline()).is_some(), "the container outlived the grace\n{}", sv.log());
    // (Until 5f4077c this failed about 1 run in 10: the request could land
    // after finish() last drained ctl, and was never answered.)
    match request_watching(&sv, &supervisor, "killed", json!({"op": "list"})) {
        Answer::NotSent => {}
        answer => assert_ok_or_shutting_down(&answer, &sv),
    }
    assert_eq!(sv.wait_exit(), Some(0), "{}", sv.log());
}

// The same promise while finish() lets slow subscribers drain (up to 2 s,
// ctl still open). Before 5da106e, ctl was read once before the `shutdown`
// reply and never again: a request written during the drain was dropped.
#[test]
fn a_request_sent_while_subscribers_drain_at_exit_gets_an_answer() {
    let mut sv = Sv::start();
    let supervisor = pidfd(sv.pid).unwrap();
    // A subscriber that reads nothing, its pipe shrunk to one page: events
    // stay queued, and the exit waits for them.
    let stalled = sv.subscribe(json!({}));
    // SAFETY: fcntl(2) on an fd we own.
    let size = unsafe { libc::fcntl(stalled.fd.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(size >= 4096, "F_SETPIPE_SZ: {}", std::io::Error::last_os_error());
    // 60 events of more than 100 bytes each: more than the page holds.
    for i in 0..20 {
        assert_eq!(sv.run_to_stop(&format!("fill{i}"), &["true"])["status"], 0);
    }
    // Answered after the requests still in ctl were refused.
    let reply = sv.request(json!({"op": "shutdown"}));
    assert_eq!(reply["ok"], true, "shutdown: {reply}");
    match request_watching(&sv, &supervisor, "draining", json!({"op": "version"})) {
        Answer::NotSent => {}
        answer => assert_ok_or_shutting_down(&answer, &sv),
    }
    assert_eq!(sv.wait_exit(), Some(0), "{}", sv.log());
    drop(stalled);
}

// The same promise up to the very end, for a client that opened ctl before
// the supervisor stopped taking requests and writes only after the
// `shutdown` reply (a slow or preempted client: removing ctl does not take
// its open fd away). Before fd5a0cd, finish() drained ctl for the last time
// before that reply and then exited with ctl open: such a request was read
// and answered by no one. The supervisor is frozen in that window here
// (SIGSTOP, as a busy scheduler would).
#[test]
fn a_request_written_after_the_shutdown_reply_gets_an_answer() {
    // A round counts when the request was written: the supervisor was
    // frozen before it closed ctl. Frozen later (or too late), it had no
    // reader (EPIPE), and the next round tries again.
    for _ in 0..50 {
        let mut sv = Sv::start();
        let supervisor = pidfd(sv.pid).unwrap();
        let flags = OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let ctl = rustix::fs::open(sv.root.join("ctl"), flags, Mode::empty()).unwrap();
        let reply = sv.request(json!({"op": "shutdown"}));
        assert_eq!(reply["ok"], true, "shutdown: {reply}");
        // SAFETY: kill(2) on our own child, which is not reaped yet.
        assert_eq!(unsafe { libc::kill(sv.pid, libc::SIGSTOP) }, 0);
        if !stopped_or_exited(sv.pid) {
            assert_eq!(sv.wait_exit(), Some(0), "{}", sv.log());
            continue;
        }
        let answer = request_through(&ctl, &sv, &supervisor, "frozen", json!({"op": "version"}), || {
            // SAFETY: as above.
            assert_eq!(unsafe { libc::kill(sv.pid, libc::SIGCONT) }, 0);
        });
        // The supervisor reads ctl until its last writer is gone.
        drop(ctl);
        // SAFETY: as above (NotSent did not continue it).
        assert_eq!(unsafe { libc::kill(sv.pid, libc::SIGCONT) }, 0);
        assert_eq!(sv.wait_exit(), Some(0), "{}", sv.log());
        if let Answer::NotSent = answer {
            continue;
        }
        assert_ok_or_shutting_down(&answer, &sv);
        return;
    }
}

/// Blocks until our child `pid` has stopped (true) or exited (false),
/// leaving it waitable.
fn stopped_or_exited(pid: i32) -> bool {
    // SAFETY: a zeroed siginfo_t is valid; waitid(2) fills it in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waitid(2) on our own child, with WNOWAIT: it stays waitable.
        let rc = unsafe {
            libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WSTOPPED | libc::WEXITED | libc::WNOWAIT)
        };
        if rc == 0 {
            return info.si_code == libc::CLD_STOPPED;
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(err.kind(), std::io::ErrorKind::Interrupted, "waitid {pid}: {err}");
    }
}

// ---- 8. a supervisor that dies without replying ----

// Before, a client whose supervisor died left the pidfd out of its poll and
// waited on the reply FIFO forever.
#[test]
fn a_client_returns_when_its_supervisor_dies_without_replying() {
    let mut sv = Sv::start();
    // A second reader of ctl: readable once the client wrote its request
    // (poll does not consume it).
    let ctl = rustix::fs::open(sv.root.join("ctl"), OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())
        .unwrap();
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(sv.pid, libc::SIGSTOP) }, 0);
    let mut list = ChildGuard::cli(&sv.root, &["list"]);
    assert!(wait_any(&[&ctl], deadline()).is_some(), "the client never wrote its request");
    assert_eq!(sv.stop_with(libc::SIGKILL), Some(128 + libc::SIGKILL));
    let code = list.wait().expect("an exit code");
    let (out, err) = list.outputs();
    assert_ne!(code, 0, "list succeeded without a supervisor: {out}");
    assert!(err.contains("supervisor"), "list exited {code} with stderr {err:?}");
}
