//! The event system against DESIGN.md's contract: lifecycle order and event
//! fields, fan-out to many subscribers, filters, replay (`ids`, `since`,
//! the journal), overflow, dropped subscribers, the journal across a
//! `kill -9`, bad subscriber paths, and the CLI verbs built on events
//! (`event`, `wait`, `run --rm`, `create --wait`). Every wait blocks on a
//! FIFO, a pipe or a pidfd; the deadlines only fire on failure.
mod common;
use common::*;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use serde_json::{json, Value};

// ---- helpers ----

/// An event's seq.
fn seq(ev: &Value) -> u64 {
    ev["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {ev}"))
}

/// Parses an event line.
fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
}

/// The next line of a subscription; panics (with the log) at EOF or the deadline.
fn next_line(sub: &mut Sub, sv: &Sv) -> String {
    sub.next_line(Instant::now() + DEADLINE)
        .unwrap_or_else(|| panic!("subscription {} ended or stalled; log:\n{}", sub.path.display(), tail(&sv.log())))
}

/// Reads lines until one (parsed) satisfies `last`; returns them all, that one included.
fn lines_until(sub: &mut Sub, sv: &Sv, last: impl Fn(&Value) -> bool) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let line = next_line(sub, sv);
        let done = last(&parse(&line));
        lines.push(line);
        if done {
            return lines;
        }
    }
}

/// Reads events until one satisfies `last`; returns them all, that one included.
fn events_until(sub: &mut Sub, sv: &Sv, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    lines_until(sub, sv, last).iter().map(|l| parse(l)).collect()
}

/// A predicate: the event of container `id` of type `kind`.
fn is(id: &str, kind: &str) -> impl Fn(&Value) -> bool {
    let (id, kind) = (id.to_string(), kind.to_string());
    move |ev| ev["id"] == id.as_str() && ev["type"] == kind.as_str()
}

/// The end of a log, for failure messages.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Asserts a reply is ok.
fn ok(reply: Value) -> Value {
    assert_eq!(reply["ok"], true, "request failed: {reply}");
    reply
}

/// Asserts that the subscription is at end-of-file: the supervisor closed
/// its write end (not merely a deadline without data).
fn assert_eof(sub: &mut Sub) {
    assert!(sub.next_line(Instant::now() + DEADLINE).is_none(), "a line after the expected end-of-file");
    let mut byte = [0u8; 1];
    assert_eq!(
        rustix::io::read(&sub.fd, &mut byte),
        Ok(0),
        "no end-of-file on {}: the supervisor still holds the FIFO",
        sub.path.display()
    );
}

/// Asserts that `seqs` is a contiguous run (no gap, no duplicate, in order).
fn assert_contiguous(seqs: &[u64], what: &str) {
    for pair in seqs.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "{what}: seq {} follows {}", pair[1], pair[0]);
    }
}

/// The bytes a process has read so far (/proc/PID/io rchar).
fn read_bytes(pid: i32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).and_then(|n| n.trim().parse().ok()).unwrap()
}

/// Whether `t` is RFC 3339 in UTC with exactly nine fractional digits and
/// sane field ranges: "2026-12-03T18:10:41.123456789Z".
fn is_rfc3339_utc_nanos(t: &str) -> bool {
    let b = t.as_bytes();
    let shape = b.len() == 30
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            29 => *c == b'Z',
            _ => c.is_ascii_digit(),
        });
    if !shape {
        return false;
    }
    let num = |r: std::ops::Range<usize>| t[r].parse::<u32>().unwrap();
    (1..=12).contains(&num(5..7))
        && (1..=31).contains(&num(8..10))
        && num(11..13) < 24
        && num(14..16) < 60
        && num(17..19) < 61
}

/// Seconds since the epoch of an RFC 3339 UTC time (days from civil, as in
/// Howard Hinnant's date algorithms).
fn epoch_secs(t: &str) -> i64 {
    let num = |r: std::ops::Range<usize>| t[r].parse::<i64>().unwrap();
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + num(11..13) * 3600 + num(14..16) * 60 + num(17..19)
}

/// The journal's lines, the rotated file first.
fn journal_lines(root: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for name in ["events.jsonl.1", "events.jsonl"] {
        if let Ok(text) = std::fs::read_to_string(root.join(name)) {
            lines.extend(text.lines().map(String::from));
        }
    }
    lines
}

/// Whether process `pid` has the file at `path` open (a FIFO's fd links to its path).
fn holds_path(pid: i32, path: &Path) -> bool {
    open_fds(pid).iter().any(|fd| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).is_ok_and(|l| l == path))
}

/// The resident set size of a process in KiB.
fn vm_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The argv of short container `i` of a churn, and the status it must stop with.
fn churn_argv(i: usize) -> (Vec<String>, u64) {
    match i % 10 {
        0 => {
            let code = (i / 10) % 256;
            (vec!["sh".into(), "-c".into(), format!("exit {code}")], code as u64)
        }
        n if n % 2 == 1 => (vec!["false".into()], 1),
        _ => (vec!["true".into()], 0),
    }
}

/// Runs `n` short containers `{prefix}{i}` (created with start and remove,
/// fire and forget), at most `in_flight` unstopped at a time, gated on the
/// `stopped` events read from `driver` (an unfiltered subscription); checks
/// each status. Returns every line `driver` received up to the last
/// `deleted`, in order.
fn churn(sv: &Sv, driver: &mut Sub, prefix: &str, n: usize, in_flight: usize) -> Vec<String> {
    let client = sv.client();
    let mut lines = Vec::new();
    let (mut sent, mut stopped, mut deleted) = (0, 0, 0);
    while stopped < n || deleted < n {
        while sent < n && sent - stopped < in_flight {
            let (argv, _) = churn_argv(sent);
            let req =
                json!({"op": "create", "id": format!("{prefix}{sent}"), "argv": argv, "start": true, "remove": true});
            client.send_raw(&serde_json::to_vec(&req).unwrap());
            sent += 1;
        }
        let line = next_line(driver, sv);
        let ev = parse(&line);
        assert_ne!(ev["type"], "overflow", "the driver subscription overflowed: {line}");
        if ev["type"] == "stopped" {
            let i: usize = ev["id"].as_str().unwrap().strip_prefix(prefix).unwrap().parse().unwrap();
            assert_eq!(ev["status"], churn_argv(i).1, "wrong status: {ev}");
            stopped += 1;
        }
        if ev["type"] == "deleted" {
            deleted += 1;
        }
        lines.push(line);
    }
    lines
}

/// Checks what a churn's events say: one contiguous seq run; per container
/// created, started, stopped, deleted in that order with one instance; each
/// status right.
fn check_churn_events(lines: &[String], prefix: &str, n: usize) {
    let events: Vec<Value> = lines.iter().map(|l| parse(l)).collect();
    assert_eq!(events.len(), 4 * n, "event count");
    assert_contiguous(&events.iter().map(seq).collect::<Vec<_>>(), "churn");
    let mut per_id: HashMap<&str, Vec<&Value>> = HashMap::new();
    for ev in &events {
        per_id.entry(ev["id"].as_str().unwrap()).or_default().push(ev);
    }
    assert_eq!(per_id.len(), n);
    for (id, evs) in per_id {
        let kinds: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["created", "started", "stopped", "deleted"], "{id}");
        assert!(evs.iter().all(|e| e["instance"] == evs[0]["instance"]), "{id}: instances differ");
        let i: usize = id.strip_prefix(prefix).unwrap().parse().unwrap();
        assert_eq!(evs[2]["status"], churn_argv(i).1, "{id}");
    }
}

/// A CLI process in the background, killed and reaped if the test ends
/// before it exited.
struct Bg {
    child: Option<Child>,
}

impl Bg {
    fn spawn(sv: &Sv, args: &[&str], stdout: Stdio, stderr: Stdio) -> Bg {
        let child = Command::new(bin())
            .arg("--root")
            .arg(&sv.root)
            .args(args)
            .stdin(Stdio::null())
            // `event` says on stderr when it fell behind and resumes.
            .env("PIDVISOR_DEBUG", "1")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        Bg { child: Some(child) }
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().unwrap()
    }

    /// Waits for it to exit (with the deadline); its exit code or 128+signal.
    fn wait(&mut self) -> Option<i32> {
        wait_child(self.child())
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A line reader over a pipe from a child, with deadlines.
struct Lines {
    fd: OwnedFd,
    buf: Vec<u8>,
    eof: bool,
}

impl Lines {
    fn new(fd: impl Into<OwnedFd>) -> Lines {
        Lines { fd: fd.into(), buf: Vec::new(), eof: false }
    }

    /// A complete line already read, if any.
    fn take_line(&mut self) -> Option<String> {
        let pos = self.buf.iter().position(|b| *b == b'\n')?;
        let line: Vec<u8> = self.buf.drain(..=pos).collect();
        Some(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned())
    }

    /// Reads what is there (call when poll says readable); false at EOF.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match rustix::io::read(&self.fd, &mut chunk) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => true,
            Err(e) => panic!("read: {e}"),
        }
    }

    /// The next line; None at EOF; panics at the deadline.
    fn next_line(&mut self) -> Option<String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(line) = self.take_line() {
                return Some(line);
            }
            if self.eof {
                return None;
            }
            assert!(wait_any(&[&self.fd], deadline).is_some(), "no line within the deadline");
            self.fill();
        }
    }
}

// ---- lifecycle and event fields ----

#[test]
fn churn_checker_catches_gaps_duplicates_and_wrong_status() {
    // Negative control for check_churn_events, which the fan-out and
    // overflow tests rely on.
    let line = |seq: u64, kind: &str, i: usize, status: Option<u64>| {
        let mut ev = json!({"seq": seq, "type": kind, "id": format!("k{i}"), "instance": 10 + i});
        if let Some(status) = status {
            ev["status"] = status.into();
        }
        ev.to_string()
    };
    let good: Vec<String> = (0..2)
        .flat_map(|i| {
            let base = 1 + 4 * i as u64;
            let status = churn_argv(i).1;
            vec![
                line(base, "created", i, None),
                line(base + 1, "started", i, None),
                line(base + 2, "stopped", i, Some(status)),
                line(base + 3, "deleted", i, None),
            ]
        })
        .collect();
    check_churn_events(&good, "k", 2);
    let mut gap = good.clone();
    gap[5] = line(7, "started", 1, None);
    let mut duplicate = good.clone();
    duplicate[5] = good[4].clone();
    let mut status = good.clone();
    status[6] = line(7, "stopped", 1, Some(0));
    let mut order = good.clone();
    order[1] = line(2, "stopped", 0, Some(churn_argv(0).1));
    order[2] = line(3, "started", 0, None);
    for (what, lines) in [("gap", gap), ("duplicate", duplicate), ("status", status), ("order", order)] {
        let caught = std::panic::catch_unwind(|| check_churn_events(&lines, "k", 2)).is_err();
        assert!(caught, "check_churn_events missed a {what}");
    }
}

#[test]
fn time_checker_rejects_other_formats() {
    // Negative control for the time assertions below.
    assert!(is_rfc3339_utc_nanos("2026-12-03T18:10:41.123456789Z"));
    for bad in [
        "2026-12-03T18:10:41.123Z",
        "2026-12-03T18:10:41.123456789+00:00",
        "2026-12-03 18:10:41.123456789Z",
        "2026-13-03T18:10:41.123456789Z",
        "2026-12-03T18:10:41Z",
    ] {
        assert!(!is_rfc3339_utc_nanos(bad), "{bad}");
    }
    assert_eq!(epoch_secs("1970-01-01T00:00:00.000000000Z"), 0);
    assert_eq!(epoch_secs("2026-12-03T18:10:41.123456789Z"), 1_796_321_441);
}

#[test]
fn lifecycle_events_come_in_order_once_with_their_fields() {
    let sv = Sv::start();
    let mut all = sv.subscribe(json!({}));
    let created = ok(sv.request(json!({"op": "create", "id": "life", "argv": ["sh", "-c", "exit 7"]})));
    let instance = created["instance"].as_u64().unwrap();
    let pid = created["pid"].as_i64().unwrap();
    ok(sv.request(json!({"op": "start", "id": "life"})));
    let mut live = events_until(&mut all, &sv, is("life", "stopped"));
    ok(sv.request(json!({"op": "delete", "id": "life"})));
    // A signalled one too, for the signal fields.
    ok(sv.request(json!({"op": "create", "id": "killed", "argv": ["sleep", "1000"], "start": true})));
    ok(sv.request(json!({"op": "kill", "id": "killed", "signal": 9})));
    live.extend(events_until(&mut all, &sv, is("killed", "stopped")));
    ok(sv.request(json!({"op": "delete", "id": "killed"})));
    // Everything up to the end marker's stop: nothing of `life` may follow
    // its `deleted`.
    sv.run_to_stop("end", &["true"]);
    live.extend(events_until(&mut all, &sv, is("end", "stopped")));

    // Read again from the start through a `since` replay, to see them all at once.
    let mut replay = sv.subscribe(json!({"since": 0}));
    let events = events_until(&mut replay, &sv, is("end", "stopped"));
    let seqs: Vec<u64> = events.iter().map(seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq not strictly increasing: {seqs:?}");

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    for ev in &events {
        let t = ev["time"].as_str().unwrap_or_else(|| panic!("no time: {ev}"));
        assert!(is_rfc3339_utc_nanos(t), "time {t:?} is not RFC 3339 UTC with nanoseconds");
        assert!((epoch_secs(t) - now).abs() < 86_400, "time {t} is not today");
    }

    let life: Vec<&Value> = events.iter().filter(|e| e["id"] == "life").collect();
    let kinds: Vec<&str> = life.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["created", "started", "stopped", "deleted"], "{life:?}");
    for ev in &life {
        assert_eq!(ev["instance"], instance, "{ev}");
    }
    for ev in &life[..3] {
        assert_eq!(ev["pid"], pid, "{ev}");
    }
    let deleted = life[3].as_object().unwrap();
    assert!(!deleted.contains_key("pid"), "deleted has a pid: {}", life[3]);
    assert!(!deleted.contains_key("status"), "deleted has exit fields: {}", life[3]);
    let stopped = life[2].as_object().unwrap();
    for key in ["exit_code", "signal", "core_dumped", "status"] {
        assert!(stopped.contains_key(key), "stopped lacks {key}: {}", life[2]);
    }
    assert_eq!(life[2]["exit_code"], 7);
    assert_eq!(life[2]["signal"], Value::Null);
    assert_eq!(life[2]["core_dumped"], false);
    assert_eq!(life[2]["status"], 7);
    for ev in &life[..2] {
        assert!(!ev.as_object().unwrap().contains_key("status"), "{ev}");
    }

    let killed: Vec<&Value> = events.iter().filter(|e| e["id"] == "killed").collect();
    let kinds: Vec<&str> = killed.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["created", "started", "stopped", "deleted"]);
    assert_eq!(killed[2]["exit_code"], Value::Null);
    assert_eq!(killed[2]["signal"], "SIGKILL");
    assert_eq!(killed[2]["core_dumped"], false);
    assert_eq!(killed[2]["status"], 137);

    // The live subscriber got the same events as the replay.
    assert_eq!(live, events);
}

#[test]
fn exec_failure_is_stopped_127_or_126_without_started() {
    let sv = Sv::start();
    let noexec = sv.dir.0.join("not-executable");
    std::fs::write(&noexec, "#!/bin/sh\nexit 0\n").unwrap();
    let mut sub = sv.subscribe(json!({}));
    for (id, argv, status, errno) in
        [("enoent", "/nonexistent/command", 127, "ENOENT"), ("eacces", noexec.to_str().unwrap(), 126, "EACCES")]
    {
        let reply = sv.request(json!({"op": "create", "id": id, "argv": [argv], "start": true}));
        assert_eq!(reply["ok"], false, "{reply}");
        let events = events_until(&mut sub, &sv, is(id, "stopped"));
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["created", "stopped"], "{events:?}");
        let stopped = &events[1];
        assert_eq!(stopped["exit_code"], status, "{stopped}");
        assert_eq!(stopped["status"], status, "{stopped}");
        assert_eq!(stopped["signal"], Value::Null, "{stopped}");
        let error = stopped["error"].as_str().unwrap_or_else(|| panic!("no error string: {stopped}"));
        assert!(error.contains(errno), "error {error:?} does not name {errno}");
    }
}

// ---- fan-out ----

#[test]
fn two_thousand_lifecycles_reach_ten_subscribers_identically() {
    const N: usize = 2000;
    // The subscribers' buffers hold the whole run, so a reader thread that
    // the loaded machine does not schedule for a while cannot overflow.
    let sv = Sv::start_with(&["--grace", "2s", "--subscriber-buffer", "16M"], &[]);
    let subs: Vec<Sub> = (0..10).map(|_| sv.subscribe(json!({}))).collect();
    let mut driver = sv.subscribe(json!({}));
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut sub| {
            std::thread::spawn(move || {
                let mut lines = Vec::with_capacity(4 * N);
                while lines.len() < 4 * N {
                    match sub.next_line(Instant::now() + DEADLINE) {
                        Some(line) => lines.push(line),
                        None => panic!("subscriber ended or stalled after {} lines", lines.len()),
                    }
                }
                lines
            })
        })
        .collect();
    let driven = churn(&sv, &mut driver, "c", N, 20);
    check_churn_events(&driven, "c", N);
    for (i, reader) in readers.into_iter().enumerate() {
        let lines = reader.join().unwrap_or_else(|_| panic!("subscriber {i} failed"));
        assert!(lines == driven, "subscriber {i} got other lines than the driver");
    }
    // Memory stays flat: every container was removed.
    let list = ok(sv.request(json!({"op": "list"})));
    assert_eq!(list["containers"].as_array().unwrap().len(), 0, "{list}");
    assert!(vm_rss_kib(sv.pid) < 64 * 1024, "supervisor RSS {} KiB", vm_rss_kib(sv.pid));
}

// ---- filters ----

#[test]
fn filters_by_ids_by_types_and_both() {
    let sv = Sv::start();
    let mut all = sv.subscribe(json!({}));
    let mut by_ids = sv.subscribe(json!({"ids": ["fa", "fb", "fend"]}));
    let mut by_types = sv.subscribe(json!({"types": ["stopped"]}));
    let mut both = sv.subscribe(json!({"ids": ["fa", "fend"], "types": ["stopped"]}));
    let mut two_types = sv.subscribe(json!({"types": ["created", "deleted"]}));
    for (id, code) in [("fa", 1), ("fb", 2), ("fc", 3)] {
        let ev = sv.run_to_stop(id, &["sh", "-c", &format!("exit {code}")]);
        assert_eq!(ev["status"], code);
        ok(sv.request(json!({"op": "delete", "id": id})));
    }
    sv.run_to_stop("fend", &["true"]);
    let end = is("fend", "stopped");
    let all = events_until(&mut all, &sv, &end);
    // Negative control: the unfiltered stream has what the filters must drop.
    assert_eq!(all.len(), 15, "{all:?}");
    assert!(all.iter().any(|e| e["id"] == "fc"));

    let wanted = |f: &dyn Fn(&Value) -> bool| all.iter().filter(|e| f(e)).cloned().collect::<Vec<Value>>();
    let got = events_until(&mut by_ids, &sv, &end);
    assert_eq!(got, wanted(&|e| ["fa", "fb", "fend"].iter().any(|id| e["id"] == *id)));
    assert_eq!(got.len(), 11);
    let got = events_until(&mut by_types, &sv, &end);
    assert_eq!(got, wanted(&|e| e["type"] == "stopped"));
    assert_eq!(got.len(), 4);
    let got = events_until(&mut both, &sv, &end);
    assert_eq!(got, wanted(&|e| e["type"] == "stopped" && (e["id"] == "fa" || e["id"] == "fend")));
    assert_eq!(got.len(), 2);
    let got = events_until(&mut two_types, &sv, is("fend", "created"));
    assert_eq!(got, wanted(&|e| e["type"] == "created" || e["type"] == "deleted")[..got.len()]);
    assert_eq!(got.len(), 7);
}

// ---- replay ----

#[test]
fn subscribing_by_id_replays_retained_events_until_deleted() {
    let sv = Sv::start();
    let stopped = sv.run_to_stop("r1", &["sh", "-c", "exit 4"]);
    let instance = stopped["instance"].clone();
    // No event happens from here until these three are read: they can only
    // come from the replay.
    let mut replay = sv.subscribe(json!({"ids": ["r1"]}));
    let got: Vec<Value> = (0..3).map(|_| parse(&next_line(&mut replay, &sv))).collect();
    let kinds: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["created", "started", "stopped"], "{got:?}");
    assert!(got.iter().all(|e| e["instance"] == instance));
    assert!(seq(&got[0]) < seq(&got[1]) && seq(&got[1]) < seq(&got[2]));
    assert_eq!(got[2], stopped, "the replayed stopped differs from the live one");
    // The type filter applies to the replay too.
    let mut replay_started = sv.subscribe(json!({"ids": ["r1"], "types": ["started"]}));
    assert_eq!(parse(&next_line(&mut replay_started, &sv)), got[1]);
    // Negative control: without ids or since nothing is replayed, so the
    // first thing this one gets is the `deleted` below.
    let mut plain = sv.subscribe(json!({}));

    ok(sv.request(json!({"op": "delete", "id": "r1"})));
    let deleted = parse(&next_line(&mut replay, &sv));
    assert_eq!((deleted["type"].as_str(), &deleted["instance"]), (Some("deleted"), &instance));
    assert_eq!(parse(&next_line(&mut plain, &sv)), deleted);

    // After delete, the instance is forgotten: a subscription by id replays
    // nothing of it, so its first event is r2's, which comes later.
    let mut after = sv.subscribe(json!({"ids": ["r1", "r2"]}));
    sv.run_to_stop("r2", &["true"]);
    let first = parse(&next_line(&mut after, &sv));
    assert!(is("r2", "created")(&first), "expected r2's created first, got {first}");

    // The id can be reused; the new container is a new instance.
    let again = sv.run_to_stop("r1", &["true"]);
    assert_ne!(again["instance"], instance);
    let started = parse(&next_line(&mut replay_started, &sv));
    assert!(is("r1", "started")(&started) && started["instance"] == again["instance"], "{started}");
}

#[test]
fn replay_of_several_containers_is_in_seq_order() {
    let sv = Sv::start();
    let mut stops = sv.subscribe(json!({"types": ["stopped"]}));
    ok(sv.request(json!({"op": "create", "id": "x", "argv": ["sh", "-c", "exit 1"]})));
    ok(sv.request(json!({"op": "create", "id": "y", "argv": ["sh", "-c", "exit 2"], "start": true})));
    events_until(&mut stops, &sv, is("y", "stopped"));
    ok(sv.request(json!({"op": "start", "id": "x"})));
    events_until(&mut stops, &sv, is("x", "stopped"));
    let mut replay = sv.subscribe(json!({"ids": ["y", "x"]}));
    let got: Vec<Value> = (0..6).map(|_| parse(&next_line(&mut replay, &sv))).collect();
    let order: Vec<(&str, &str)> =
        got.iter().map(|e| (e["id"].as_str().unwrap(), e["type"].as_str().unwrap())).collect();
    assert_eq!(
        order,
        [("x", "created"), ("y", "created"), ("y", "started"), ("y", "stopped"), ("x", "started"), ("x", "stopped")]
    );
    assert!(got.windows(2).all(|w| seq(&w[0]) < seq(&w[1])));
}

/// `since` replays every later event, in order, line for line, alone and
/// combined with `types` and `ids`; the CLI's `event --since` prints the
/// next one.
fn check_since(sv: &Sv) {
    let mut rec = sv.subscribe(json!({}));
    for i in 0..4 {
        sv.run_to_stop(&format!("s{i}"), &["sh", "-c", &format!("exit {i}")]);
        ok(sv.request(json!({"op": "delete", "id": format!("s{i}")})));
    }
    let before = lines_until(&mut rec, sv, is("s3", "deleted"));
    assert_eq!(before.len(), 16);
    let n = seq(&parse(&before[5]));
    let mut since = sv.subscribe(json!({"since": n}));
    let mut since_stopped = sv.subscribe(json!({"since": n, "types": ["stopped"]}));
    let mut since_ids = sv.subscribe(json!({"since": n, "ids": ["s1", "tail"]}));
    let cli = sv.cli(&["event", "--since", &n.to_string()]);
    assert!(cli.status.success(), "{cli:?}");
    assert_eq!(parse(String::from_utf8_lossy(&cli.stdout).trim()), parse(&before[6]));
    sv.run_to_stop("tail", &["true"]);
    let mut all = before;
    all.extend(lines_until(&mut rec, sv, is("tail", "stopped")));
    let end = is("tail", "stopped");
    let after_n: Vec<String> = all.iter().filter(|l| seq(&parse(l)) > n).cloned().collect();
    assert_eq!(lines_until(&mut since, sv, &end), after_n);
    let want: Vec<String> = after_n.iter().filter(|l| parse(l)["type"] == "stopped").cloned().collect();
    assert_eq!(lines_until(&mut since_stopped, sv, &end), want);
    let want: Vec<String> =
        after_n.iter().filter(|l| parse(l)["id"] == "s1" || parse(l)["id"] == "tail").cloned().collect();
    assert_eq!(lines_until(&mut since_ids, sv, &end), want);
}

#[test]
fn since_replays_every_later_event_in_order() {
    check_since(&Sv::start());
}

#[test]
fn since_reaches_back_past_the_in_memory_ring_into_the_journal() {
    check_since(&Sv::start_with(&["--grace", "2s", "--retained-events", "3"], &[]));
}

// ---- overflow ----

#[test]
fn slow_subscriber_gets_a_contiguous_prefix_then_one_overflow_line() {
    const N: usize = 1500;
    let sv = Sv::start_with(&["--grace", "2s", "--subscriber-buffer", "64K"], &[]);
    // Opened for reading, never read until the end.
    let mut slow = sv.subscribe(json!({}));
    // The normal subscriber drives the run, so it is never more than 20
    // lifecycles behind: far below 64K.
    let mut normal = sv.subscribe(json!({}));
    let lines = churn(&sv, &mut normal, "o", N, 20);
    check_churn_events(&lines, "o", N);
    let rss = vm_rss_kib(sv.pid);
    assert!(rss < 64 * 1024, "supervisor RSS {rss} KiB with a stuck subscriber");

    let mut prefix = Vec::new();
    let overflow = loop {
        let line = next_line(&mut slow, &sv);
        if parse(&line)["type"] == "overflow" {
            break parse(&line);
        }
        prefix.push(line);
    };
    assert!(!prefix.is_empty(), "nothing before the overflow line");
    assert!(prefix.len() < lines.len(), "the slow subscriber got everything: no overflow was tested");
    assert!(prefix == lines[..prefix.len()], "the slow subscriber's prefix is not the normal one's");
    assert_eq!(overflow["next"], seq(&parse(prefix.last().unwrap())) + 1, "{overflow}");
    assert_eq!(overflow.as_object().unwrap().len(), 2, "{overflow}");
    assert_eof(&mut slow);
    assert!(!holds_path(sv.pid, &slow.path), "the supervisor still holds the overflowed FIFO");
}

#[test]
fn since_replay_larger_than_the_subscriber_buffer_still_makes_progress() {
    // DESIGN: after an overflow "a client resumes with since". The range it
    // missed is at least the buffer it overflowed, so the resumed replay is
    // larger than the buffer too; it must still deliver events (a replay
    // is queued at its reader's pace, so it never overflows at all).
    const N: usize = 150;
    let sv = Sv::start_with(&["--grace", "2s", "--subscriber-buffer", "16K"], &[]);
    let mut driver = sv.subscribe(json!({}));
    let lines = churn(&sv, &mut driver, "p", N, 10);
    let first = seq(&parse(&lines[0]));
    let last = seq(&parse(lines.last().unwrap()));
    // A client that resumes after every overflow, as `event --follow` does.
    let mut since = first - 1;
    let mut got: Vec<String> = Vec::new();
    while since < last {
        let mut sub = sv.subscribe(json!({"since": since}));
        let mut progressed = false;
        loop {
            let line = next_line(&mut sub, &sv);
            let ev = parse(&line);
            if ev["type"] == "overflow" {
                // A replay larger than --subscriber-buffer must still make
                // progress (the sink writes into the pipe before it
                // overflows), or `event --follow` re-subscribes forever.
                assert!(progressed, "resuming with since={since} delivered nothing, only {line}");
                assert_eq!(ev["next"], since + 1, "{line}");
                break;
            }
            assert_eq!(seq(&ev), since + 1, "gap or duplicate: {line}");
            since += 1;
            progressed = true;
            got.push(line);
            if since == last {
                break;
            }
        }
    }
    assert!(got == lines, "the resumed client got other lines than the driver");
}

#[test]
fn a_replay_longer_than_the_buffer_comes_whole_at_its_readers_pace() {
    // A 4K queue and a ring of 16 events: the replay of 1,200 events comes
    // from the journal, some 60 times what the queue and the pipe hold.
    const N: usize = 300;
    let sv = Sv::start_with(&["--grace", "2s", "--subscriber-buffer", "4K", "--retained-events", "16"], &[]);
    let mut driver = sv.subscribe(json!({}));
    let lines = churn(&sv, &mut driver, "r", N, 10);
    let first = seq(&parse(&lines[0]));
    let read_before = read_bytes(sv.pid);
    // Subscribed and not read yet: the replay waits for its reader while
    // the supervisor serves others, and what happens meanwhile follows it.
    let mut replay = sv.subscribe(json!({"since": first - 1}));
    let later = sv.run_to_stop("later", &["true"]);
    ok(sv.request(json!({"op": "version"})));
    let got = lines_until(&mut replay, &sv, |ev| {
        assert_ne!(ev["type"], "overflow", "the replay overflowed: {ev}");
        *ev == later
    });
    assert!(got[..lines.len()] == lines[..], "the replay differs from what the live subscriber got");
    assert_contiguous(&got.iter().map(|l| seq(&parse(l))).collect::<Vec<_>>(), "replay");
    // Read at the pace of a 4K queue, the journal is read about once, not
    // a 64K chunk for every 4K taken (that was 16 times).
    let journal = std::fs::metadata(sv.root.join("events.jsonl")).unwrap().len();
    let read = read_bytes(sv.pid) - read_before;
    assert!(read < 3 * journal, "the supervisor read {read} bytes to replay a journal of {journal}");
}

#[test]
fn a_subscriber_that_reads_nothing_at_shutdown_ends_with_an_overflow_line() {
    // 1,600 events: more than the pipe holds, less than the 1 MiB queue,
    // so nothing overflows before the shutdown.
    const N: usize = 400;
    let mut sv = Sv::start();
    let mut stuck = sv.subscribe(json!({}));
    let mut driver = sv.subscribe(json!({}));
    let lines = churn(&sv, &mut driver, "s", N, 10);
    drop(driver);
    ok(sv.request(json!({"op": "shutdown"})));
    assert_eq!(sv.wait_exit(), Some(0));
    let mut got = Vec::new();
    let overflow = loop {
        let line = stuck.next_line(Instant::now() + DEADLINE).expect("a line before end-of-file");
        if parse(&line)["type"] == "overflow" {
            break parse(&line);
        }
        got.push(line);
    };
    assert!(!got.is_empty() && got.len() < lines.len(), "{} of {} lines before the overflow", got.len(), lines.len());
    assert!(got == lines[..got.len()], "the stuck subscriber's prefix is not the live one");
    assert_eq!(overflow["next"], seq(&parse(got.last().unwrap())) + 1, "{overflow}");
    assert_eof(&mut stuck);
}

#[test]
fn event_follow_resumes_after_overflow_without_gaps_or_duplicates() {
    const N: usize = 1000;
    let sv = Sv::start_with(&["--grace", "2s", "--subscriber-buffer", "64K"], &[]);
    let before = sv.run_to_stop("before", &["true"]);
    let s = seq(&before);
    let mut follow =
        Bg::spawn(&sv, &["event", "--follow", "--since", &(s - 1).to_string()], Stdio::piped(), Stdio::piped());
    let mut out = Lines::new(follow.child().stdout.take().unwrap());
    let mut err = Lines::new(follow.child().stderr.take().unwrap());
    // Its first line (the replayed `stopped` of `before`) shows it is
    // subscribed; from here its stdout is not read until the run is over,
    // so it must fall behind (pipe, FIFO and 64K queue hold far less).
    let first = out.next_line().expect("the replayed event");
    assert_eq!(parse(&first), before);
    let mut driver = sv.subscribe(json!({}));
    let lines = churn(&sv, &mut driver, "f", N, 20);
    let last = seq(&parse(lines.last().unwrap()));

    let deadline = Instant::now() + DEADLINE;
    let mut expected = s + 1;
    let mut resumes: Vec<u64> = Vec::new();
    let mut stderr_lines = Vec::new();
    while expected <= last {
        while let Some(line) = out.take_line() {
            let ev = parse(&line);
            assert_eq!(ev["seq"], expected, "gap or duplicate in `event --follow` output: {line}");
            expected += 1;
        }
        while let Some(line) = err.take_line() {
            if let Some(n) = line.rsplit_once("resuming from seq ").and_then(|(_, n)| n.trim().parse::<u64>().ok()) {
                // A resumed replay that overflowed at once with the same
                // `next` would loop forever.
                assert!(
                    resumes.last() != Some(&n),
                    "`event --follow` resumed from seq {n} twice in a row without any event between: livelock"
                );
                resumes.push(n);
            }
            stderr_lines.push(line);
        }
        if expected > last {
            break;
        }
        // Both, when both are ready: stdout may never pause to let stderr's
        // notes through.
        if wait_any(&[&out.fd, &err.fd], deadline).is_none() {
            panic!("`event --follow` stalled at seq {expected} of {last}; stderr: {stderr_lines:?}");
        }
        if ready_now(&err.fd) {
            err.fill();
        }
        if ready_now(&out.fd) {
            assert!(out.fill(), "`event --follow` exited; stderr: {stderr_lines:?}");
        }
    }
    // The notes written before its last event are in the pipe by now.
    while ready_now(&err.fd) && err.fill() {}
    while let Some(line) = err.take_line() {
        if let Some(n) = line.rsplit_once("resuming from seq ").and_then(|(_, n)| n.trim().parse::<u64>().ok()) {
            resumes.push(n);
        }
        stderr_lines.push(line);
    }
    assert!(
        !resumes.is_empty(),
        "`event --follow` never fell behind: the resume was not tested; stderr: {stderr_lines:?}"
    );
    assert!(stderr_lines.iter().all(|l| l.contains("fell behind") || l.contains("subscribed")), "{stderr_lines:?}");
}

// ---- vanished subscribers ----

/// The supervisor's open fds, less the reply FIFOs it may not have closed
/// yet when the client has read its reply.
fn subscriber_fds(sv: &Sv) -> usize {
    let reply = sv.dir.0.join("reply-");
    let reply = reply.to_str().unwrap();
    open_fds(sv.pid)
        .into_iter()
        .filter(|fd| {
            std::fs::read_link(format!("/proc/{}/fd/{fd}", sv.pid))
                .map_or(true, |l| !l.to_str().is_some_and(|l| l.starts_with(reply)))
        })
        .count()
}

#[test]
fn a_vanished_subscriber_is_dropped_with_no_event_due() {
    let sv = Sv::start();
    let gone = sv.subscribe(json!({}));
    let kept = sv.subscribe(json!({}));
    assert!(holds_path(sv.pid, &gone.path) && holds_path(sv.pid, &kept.path), "subscriber FIFOs not held");
    let fds_before = subscriber_fds(&sv);
    let path = gone.path.clone();
    // The supervisor's close of its write end shows as IN_CLOSE_WRITE on the
    // FIFO: waited for with no request and no event, nothing to wake the
    // loop but the hang-up itself.
    use rustix::fs::inotify;
    let watch = inotify::init(inotify::CreateFlags::CLOEXEC).unwrap();
    inotify::add_watch(&watch, &path, inotify::WatchFlags::CLOSE_WRITE).unwrap();
    drop(gone);
    let closed = wait_any(&[&watch], Instant::now() + DEADLINE);
    assert_eq!(closed, Some(0), "the vanished subscriber was never dropped:\n{}", tail(&sv.log()));
    assert!(!holds_path(sv.pid, &path), "a writer closed the FIFO, but the supervisor still holds it");
    // Negative control: the subscriber still reading is kept.
    ok(sv.request(json!({"op": "version"})));
    assert!(holds_path(sv.pid, &kept.path), "the live subscriber was dropped too");
    assert_eq!(subscriber_fds(&sv), fds_before - 1, "fd count did not drop by one");
    let log = sv.log();
    assert!(log.contains(&format!("subscriber {} dropped", path.display())), "no debug line:\n{}", tail(&log));
    assert!(!log.contains(&format!("subscriber {} dropped", kept.path.display())));
}

// ---- journal ----

#[test]
fn journal_holds_every_event_and_seq_survives_kill_9() {
    let mut sv = Sv::start();
    let mut rec = sv.subscribe(json!({}));
    for (i, code) in [0, 3, 5].iter().enumerate() {
        sv.run_to_stop(&format!("j{i}"), &["sh", "-c", &format!("exit {code}")]);
    }
    ok(sv.request(json!({"op": "delete", "id": "j0"})));
    let seen = lines_until(&mut rec, &sv, is("j0", "deleted"));
    let old_j0 = parse(&seen[0]);
    assert!(is("j0", "created")(&old_j0));
    // The journal is appended before fan-out: it holds what the subscriber saw, exactly.
    assert_eq!(journal_lines(&sv.root), seen);
    sv.stop_with(libc::SIGKILL);
    assert_eq!(journal_lines(&sv.root), seen, "the journal lost events in the kill -9");
    let last = seq(&parse(seen.last().unwrap()));

    let (dir, root) = take_root_of_exited(sv);
    let sv = Sv::start_on(dir, root, &["--grace", "2s"], &[]);
    let mut from_zero = sv.subscribe(json!({"since": 0}));
    let again = sv.run_to_stop("j0", &["sh", "-c", "exit 9"]);
    assert!(seq(&again) > last, "seq went back after the restart: {again}");
    assert_ne!(again["instance"], old_j0["instance"], "instance reused across the restart");
    let got = lines_until(&mut from_zero, &sv, |e| e["seq"] == again["seq"]);
    assert_eq!(got[..seen.len()], seen[..], "since=0 did not replay the old journal");
    let new: Vec<Value> = got[seen.len()..].iter().map(|l| parse(l)).collect();
    let kinds: Vec<&str> = new.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["created", "started", "stopped"]);
    assert!(new.iter().all(|e| seq(e) > last));
    assert!(got.windows(2).all(|w| seq(&parse(&w[0])) < seq(&parse(&w[1]))));
    // The journal goes on: the old lines, then the new ones.
    let journal = journal_lines(&sv.root);
    assert_eq!(journal[..seen.len()], seen[..]);
    assert_eq!(journal[seen.len()..], got[seen.len()..]);
}

#[test]
fn journal_rotates_within_its_size_and_since_reads_the_rotated_file() {
    let sv = Sv::start_with(&["--grace", "2s", "--journal-size", "4K", "--retained-events", "3"], &[]);
    let mut rec = sv.subscribe(json!({}));
    for i in 0..30 {
        sv.run_to_stop(&format!("rot{i}"), &["true"]);
        ok(sv.request(json!({"op": "delete", "id": format!("rot{i}")})));
    }
    let seen = lines_until(&mut rec, &sv, is("rot29", "deleted"));
    let rotated = sv.root.join("events.jsonl.1");
    let current = sv.root.join("events.jsonl");
    assert!(
        rotated.exists(),
        "no events.jsonl.1 after {} bytes of events",
        seen.iter().map(|l| l.len() + 1).sum::<usize>()
    );
    for path in [&rotated, &current] {
        let size = std::fs::metadata(path).unwrap().len();
        assert!(size <= 4096, "{} is {size} bytes", path.display());
    }
    let journal = journal_lines(&sv.root);
    assert!(journal.len() > 4 && journal.len() < seen.len(), "{} journal lines", journal.len());
    // Both files hold the newest events, whole and contiguous.
    assert!(seen.ends_with(&journal), "the journal is not the tail of what was published");
    // `since` reads the rotated file (the ring holds 3 events only).
    let oldest = seq(&parse(&journal[0]));
    let mut since = sv.subscribe(json!({"since": oldest - 1}));
    sv.run_to_stop("tail", &["true"]);
    let got = lines_until(&mut since, &sv, is("tail", "stopped"));
    assert_eq!(got[..journal.len()], journal[..]);
}

#[test]
fn since_older_than_the_journal_is_not_a_silent_gap() {
    let sv = Sv::start_with(&["--grace", "2s", "--journal-size", "4K", "--retained-events", "3"], &[]);
    let mut rec = sv.subscribe(json!({}));
    for i in 0..30 {
        sv.run_to_stop(&format!("g{i}"), &["true"]);
        ok(sv.request(json!({"op": "delete", "id": format!("g{i}")})));
    }
    let seen = lines_until(&mut rec, &sv, is("g29", "deleted"));
    let first = seq(&parse(&seen[0]));
    let oldest = seq(&parse(&journal_lines(&sv.root)[0]));
    assert!(oldest > first + 1, "nothing was rotated away (oldest journaled seq {oldest})");
    // Ask for everything after `first`: events first+1..oldest are in
    // neither the ring nor the journal any more.
    let path = sv.dir.0.join("gap-events");
    let fd = fifo_reader(&path);
    let reply = sv.request(json!({"op": "subscribe", "path": path.to_str().unwrap(), "since": first}));
    // The supervisor refuses, naming what is lost.
    assert_eq!(reply["ok"], false, "a since older than the journal was served: {reply}");
    assert_eq!(reply["error"]["kind"], "expired", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("events {} to", first + 1)), "{message}");
    let reply = sv.request(json!({"op": "subscribe", "path": path.to_str().unwrap(), "since": oldest - 1}));
    assert_eq!(reply["ok"], true, "since just before the oldest kept event is served: {reply}");
    let mut lines = Lines::new(fd);
    let line = lines.next_line().expect("a first line");
    let ev = parse(&line);
    assert_eq!(seq(&ev), oldest, "{line}");
}

// ---- bad paths ----

#[test]
fn subscribe_refuses_paths_that_are_not_fifos() {
    let sv = Sv::start();
    let dir = &sv.dir.0;
    let regular = dir.join("regular");
    std::fs::write(&regular, "").unwrap();
    let target = dir.join("target-fifo");
    let target_fd = fifo_reader(&target);
    let link = dir.join("link-to-fifo");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let no_reader = dir.join("no-reader-fifo");
    drop(fifo_reader(&no_reader));
    let missing = dir.join("missing");
    for path in [
        regular.to_str().unwrap(),
        link.to_str().unwrap(),
        "relative-events",
        missing.to_str().unwrap(),
        no_reader.to_str().unwrap(),
    ] {
        let reply = sv.request(json!({"op": "subscribe", "path": path}));
        assert_eq!(reply["ok"], false, "{path}: {reply}");
        assert_eq!(reply["error"]["kind"], "bad_path", "{path}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(path), "{path}: message does not name the path: {message}");
    }
    // Negative control: a real FIFO with a reader is accepted.
    let good = sv.subscribe(json!({}));
    sv.run_to_stop("x", &["true"]);
    assert_eq!(std::fs::read(&regular).unwrap(), b"", "events were written into a regular file");
    let mut byte = [0u8; 1];
    assert!(!matches!(rustix::io::read(&target_fd, &mut byte), Ok(n) if n > 0), "events went through the symlink");
    assert!(!holds_path(sv.pid, &target) && holds_path(sv.pid, &good.path));
    ok(sv.request(json!({"op": "version"})));
}

// ---- the CLI ----

#[test]
fn seed_workflow_via_the_cli_in_both_orders() {
    let sv = Sv::start();
    for i in 0..100 {
        let id = format!("job{i}");
        // Each order made certain, and both launched at once (left to the
        // scheduler), in turn.
        let order = ["event first", "created first", "together"][i % 3];
        let event_args = ["event", "--type", "created", id.as_str()];
        let mut event = None;
        if order == "event first" {
            // With PIDVISOR_DEBUG, `event` says on stderr once it is subscribed.
            let mut bg = Bg::spawn(&sv, &event_args, Stdio::piped(), Stdio::piped());
            let mut err = Lines::new(bg.child().stderr.take().unwrap());
            let said = err.next_line().unwrap_or_default();
            assert!(said.contains("subscribed"), "{id}: event said {said:?}");
            event = Some((bg, err));
        }
        let mut watch = (order == "created first").then(|| sv.subscribe(json!({"ids": [&id], "types": ["created"]})));
        let create_err = sv.dir.0.join(format!("create-{i}.stderr"));
        let mut create = Bg::spawn(
            &sv,
            &["create", "--wait", &id, "--", "sh", "-c", "exit 17"],
            Stdio::null(),
            Stdio::from(std::fs::File::create(&create_err).unwrap()),
        );
        if let Some(watch) = &mut watch {
            let ev = watch.next().expect("created");
            assert!(is(&id, "created")(&ev), "{ev}");
        }
        if event.is_none() {
            let mut bg = Bg::spawn(&sv, &event_args, Stdio::piped(), Stdio::piped());
            let err = Lines::new(bg.child().stderr.take().unwrap());
            event = Some((bg, err));
        }
        let (mut bg, mut err) = event.expect("spawned");
        let mut out = Lines::new(bg.child().stdout.take().unwrap());
        let code = bg.wait();
        let stdout: Vec<String> = std::iter::from_fn(|| out.next_line()).collect();
        let stderr: Vec<String> = std::iter::from_fn(|| err.next_line()).collect();
        assert_eq!(code, Some(0), "{id} ({order}): event exited {code:?}; stderr: {stderr:?}");
        assert_eq!(stdout.len(), 1, "{id} ({order}): event printed {stdout:?}");
        let ev = parse(&stdout[0]);
        assert!(is(&id, "created")(&ev), "{id} ({order}): event printed {stdout:?}");
        let start = sv.cli(&["start", &id]);
        assert!(start.status.success(), "{id}: start: {start:?}");
        let status = create.wait();
        assert_eq!(status, Some(17), "{id}: create --wait: {}", std::fs::read_to_string(&create_err).unwrap());
    }
}

#[test]
fn event_timeout_exits_124() {
    let sv = Sv::start();
    let out = sv.cli(&["event", "--timeout", "1s", "--type", "created", "nosuchid"]);
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn event_follow_ends_quietly_when_stdout_closes() {
    // With an event due after the close (its write would fail), and with
    // none: it must see by itself that nobody reads its stdout any more, as
    // `event --follow | head -1` on a quiet root needs.
    for event_due in [true, false] {
        let sv = Sv::start();
        let a = sv.run_to_stop("a", &["true"]);
        let since = (seq(&a) - 1).to_string();
        let mut follow = Bg::spawn(&sv, &["event", "--follow", "--since", &since], Stdio::piped(), Stdio::piped());
        let mut err = Lines::new(follow.child().stderr.take().unwrap());
        {
            let mut out = Lines::new(follow.child().stdout.take().unwrap());
            assert_eq!(parse(&out.next_line().expect("the replayed event")), a);
            // Dropping `out` closes the only read end of its stdout.
        }
        if event_due {
            sv.run_to_stop("b", &["true"]);
        }
        assert_eq!(follow.wait(), Some(0), "`event --follow` did not end with 0 (event due: {event_due})");
        let stderr: Vec<String> = std::iter::from_fn(|| err.next_line()).collect();
        assert!(stderr.iter().all(|l| l.starts_with("pidvisor event: subscribed")), "stderr: {stderr:?}");
    }
}

#[test]
fn wait_on_a_stopped_container_exits_with_its_status() {
    let sv = Sv::start();
    sv.run_to_stop("w", &["sh", "-c", "exit 42"]);
    // Nothing happens after this: a `wait` that waited for a new event would hang.
    let out = sv.cli(&["wait", "w"]);
    assert_eq!(out.status.code(), Some(42), "{out:?}");
    let ev = sv.run_to_stop("sig", &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(ev["status"], 143);
    assert_eq!(sv.cli(&["wait", "sig"]).status.code(), Some(143));
    let out = sv.cli(&["wait", "nosuch"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(!out.stderr.is_empty(), "no message for an unknown id");
}

#[test]
fn run_rm_deletes_its_container_after_the_stopped_event() {
    let sv = Sv::start();
    let out = sv.cli(&["run", "--rm", "rr", "--", "sh", "-c", "exit 9"]);
    assert_eq!(out.status.code(), Some(9), "{out:?}");
    let state = sv.request(json!({"op": "state", "id": "rr"}));
    assert_eq!(state["ok"], false, "{state}");
    assert_eq!(state["error"]["kind"], "not_found", "{state}");
    let journal: Vec<Value> = journal_lines(&sv.root).iter().map(|l| parse(l)).filter(|e| e["id"] == "rr").collect();
    let kinds: Vec<&str> = journal.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["created", "started", "stopped", "deleted"], "{journal:?}");
    assert_eq!(journal[2]["status"], 9);
    // Negative control: without --rm the container stays.
    assert_eq!(sv.cli(&["run", "kept", "--", "true"]).status.code(), Some(0));
    assert_eq!(ok(sv.request(json!({"op": "state", "id": "kept"})))["state"]["status"], "stopped");
}

// ---- the stopped-container limit ----

#[test]
fn stopped_containers_beyond_the_limit_are_deleted_oldest_first() {
    let sv = Sv::start_with(&["--grace", "2s", "--max-stopped", "5"], &[]);
    let mut rec = sv.subscribe(json!({}));
    for i in 0..8 {
        let ev = sv.run_to_stop(&format!("m{i}"), &["sh", "-c", &format!("exit {i}")]);
        assert_eq!(ev["status"], i);
    }
    // m2 is deleted once m7 has stopped; nothing else happens after that.
    let events = events_until(&mut rec, &sv, is("m2", "deleted"));
    assert!(events.iter().any(is("m7", "stopped")));
    let deleted: Vec<&str> =
        events.iter().filter(|e| e["type"] == "deleted").map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(deleted, ["m0", "m1", "m2"]);
    for id in ["m0", "m1", "m2"] {
        let stopped = events.iter().position(is(id, "stopped")).unwrap();
        let deleted = events.iter().position(is(id, "deleted")).unwrap();
        assert!(stopped < deleted, "{id}: deleted before stopped");
    }
    let list = ok(sv.request(json!({"op": "list"})));
    let ids: Vec<&str> = list["containers"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["m3", "m4", "m5", "m6", "m7"]);
    assert_eq!(sv.cli(&["wait", "m0"]).status.code(), Some(125));
    assert_eq!(sv.cli(&["wait", "m3"]).status.code(), Some(3));
}
