//! The supervisor core, end to end: exit statuses and signals, exec
//! failures, the lifecycle guards, orphan reaping under load, what children
//! inherit, bad input on the control FIFO, `delete` and `state`, shutdown,
//! the root checks, auto-start and init mode. Every wait blocks on a FIFO, a
//! subscription, a pidfd or the barrier; nothing sleeps.
mod common;
use common::*;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use rustix::fs::{Mode, OFlags};
use serde_json::{json, Value};

// ---- helpers ----

fn deadline() -> Instant {
    Instant::now() + DEADLINE
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

/// Sends a `create` (with `fields` added) and asserts it succeeded.
fn create_with(sv: &Sv, id: &str, argv: &[&str], fields: Value) -> Value {
    let mut req = json!({"op": "create", "id": id, "argv": argv});
    if let Value::Object(extra) = fields {
        req.as_object_mut().unwrap().extend(extra);
    }
    let reply = sv.request(req);
    assert_eq!(reply["ok"], true, "create {id}: {reply}\n{}", sv.log());
    reply
}

/// Creates and starts a container; returns the reply (ok, pid, instance).
fn start(sv: &Sv, id: &str, argv: &[&str]) -> Value {
    create_with(sv, id, argv, json!({"start": true}))
}

/// The next event of container `id` on `sub`.
fn next_of(sub: &mut Sub, id: &str) -> Value {
    loop {
        let ev = sub.next().unwrap_or_else(|| panic!("subscription ended before an event of {id}"));
        if ev["id"] == id {
            return ev;
        }
    }
}

/// Reads `sub` up to the `stopped` event of `id`; returns every event of
/// `id` on the way, the `stopped` one last.
fn events_until_stopped(sub: &mut Sub, id: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let ev = next_of(sub, id);
        let done = ev["type"] == "stopped";
        seen.push(ev);
        if done {
            return seen;
        }
    }
}

fn stopped_of(sub: &mut Sub, id: &str) -> Value {
    events_until_stopped(sub, id).pop().unwrap()
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// Asserts a `{"ok":false}` reply of `kind` whose message contains `needle`.
fn assert_error(reply: &Value, kind: &str, needle: &str) {
    assert_eq!(reply["ok"], false, "expected an error: {reply}");
    assert_eq!(reply["error"]["kind"], kind, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_else(|| panic!("no message: {reply}"));
    assert!(message.contains(needle), "message {message:?} does not name {needle:?}");
}

/// Asserts the supervisor still answers.
fn assert_serving(sv: &Sv) {
    let reply = sv.request(json!({"op": "version"}));
    assert_eq!(reply["ok"], true, "version: {reply}");
    assert!(reply["version"].is_string(), "{reply}");
}

fn exit_code(out: &Output) -> i32 {
    out.status.code().unwrap_or_else(|| panic!("killed by a signal: {out:?}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a shell script to completion in a process of its own (a file made
/// here is never held open by this multi-threaded test process, whose other
/// threads fork: an inherited write fd would make exec fail with ETXTBSY).
fn shell(script: &str) {
    let out = run_with_deadline(Command::new("sh").arg("-c").arg(script));
    assert!(out.status.success(), "{script}: {out:?}");
}

/// Field `n` (0-based, after the command name) of /proc/PID/stat.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(n).map(String::from)
}

fn session(pid: i32) -> Option<i32> {
    stat_field(pid, 3)?.parse().ok()
}

/// Opens a FIFO for reading and writing (never blocks; it is its own
/// writer): closing it is what gives the readers end-of-file.
fn fifo_gate(path: &Path) -> OwnedFd {
    rustix::fs::mknodat(rustix::fs::CWD, path, rustix::fs::FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
    rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).unwrap()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

// ---- exit statuses and signals ----

#[test]
fn exit_codes_0_3_255_over_the_wire_and_through_run() {
    let sv = Sv::start();
    let mut sub = sv.subscribe(json!({"types": ["stopped"]}));
    for code in [0, 3, 255] {
        let reply = start(&sv, &format!("exit{code}"), &["sh", "-c", &format!("exit {code}")]);
        assert!(reply["pid"].as_i64().unwrap() > 0, "{reply}");
    }
    let mut got = BTreeMap::new();
    while got.len() < 3 {
        let ev = sub.next().expect("stopped event");
        assert_eq!(ev["type"], "stopped");
        got.insert(ev["id"].as_str().unwrap().to_string(), ev);
    }
    for code in [0, 3, 255] {
        let ev = &got[&format!("exit{code}")];
        assert_eq!(ev["exit_code"], code, "{ev}");
        assert_eq!(ev["status"], code, "{ev}");
        assert_eq!(ev["signal"], Value::Null, "{ev}");
        assert_eq!(ev["core_dumped"], false, "{ev}");
        assert!(ev.get("error").is_none(), "{ev}");
    }
    for code in [0, 3, 255] {
        let script = format!("exit {code}");
        let out = sv.cli(&["run", &format!("run{code}"), "--", "sh", "-c", &script]);
        assert_eq!(exit_code(&out), code, "pidvisor run: {}", stderr(&out));
        // `wait` on a stopped container returns its status at once.
        let out = sv.cli(&["wait", &format!("exit{code}")]);
        assert_eq!(exit_code(&out), code, "pidvisor wait: {}", stderr(&out));
    }
}

#[test]
fn sigkill_in_every_spelling_gives_status_137() {
    let sv = Sv::start();
    let mut sub = sv.subscribe(json!({"types": ["stopped"]}));
    let wire: [(&str, Value); 3] = [("w-name", json!("KILL")), ("w-num", json!(9)), ("w-sig", json!("SIGKILL"))];
    for (id, signal) in &wire {
        start(&sv, id, &["sleep", "1000"]);
        let reply = sv.request(json!({"op": "kill", "id": id, "signal": signal}));
        assert_eq!(reply["ok"], true, "kill {id} {signal}: {reply}");
    }
    let cli = [("c-num", "9"), ("c-name", "KILL"), ("c-sig", "SIGKILL")];
    for (id, signal) in cli {
        start(&sv, id, &["sleep", "1000"]);
        let out = sv.cli(&["kill", id, signal]);
        assert_eq!(exit_code(&out), 0, "pidvisor kill {id} {signal}: {}", stderr(&out));
    }
    let mut got = HashMap::new();
    while got.len() < 6 {
        let ev = sub.next().expect("stopped event");
        got.insert(ev["id"].as_str().unwrap().to_string(), ev);
    }
    for id in wire.iter().map(|(id, _)| *id).chain(cli.iter().map(|(id, _)| *id)) {
        let ev = &got[id];
        assert_eq!(ev["signal"], "SIGKILL", "{ev}");
        assert_eq!(ev["exit_code"], Value::Null, "{ev}");
        assert_eq!(ev["status"], 137, "{ev}");
        assert_eq!(ev["core_dumped"], false, "{ev}");
    }
    let out = sv.cli(&["run", "self", "--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(exit_code(&out), 137, "pidvisor run: {}", stderr(&out));
}

#[test]
fn kill_all_signals_the_whole_process_group() {
    let sv = Sv::start();
    let mut sub = sv.subscribe(json!({"types": ["stopped"]}));
    let mut children = Vec::new();
    for (id, all) in [("one", false), ("group", true)] {
        let out = sv.dir.0.join(id);
        let mut lines = fifo_lines(&out);
        let script = "sleep 1000 & echo $!; wait";
        create_with(&sv, id, &["sh", "-c", script], json!({"start": true, "stdout": path_str(&out)}));
        let child: i32 = line(&mut lines).parse().unwrap();
        children.push(pidfd(child).unwrap());
        let reply = sv.request(json!({"op": "kill", "id": id, "signal": "KILL", "all": all}));
        assert_eq!(reply["ok"], true, "{reply}");
        assert_eq!(stopped_of(&mut sub, id)["status"], 137);
    }
    // With `all`, the background sleep died too; without, it lives on as an
    // orphan (the negative control).
    assert!(wait_any(&[&children[1]], deadline()).is_some(), "kill --all missed the group");
    assert!(!ready_now(&children[0]), "a plain kill reached the whole group");
}

#[test]
fn sigterm_reaches_a_trap_and_its_exit_code_is_reported() {
    let sv = Sv::start();
    let out = sv.dir.0.join("out");
    let mut lines = fifo_lines(&out);
    let mut sub = sv.subscribe(json!({"ids": ["trap"]}));
    let script = "trap 'exit 42' TERM; echo ready; while :; do sleep 1; done";
    create_with(&sv, "trap", &["sh", "-c", script], json!({"start": true, "stdout": path_str(&out)}));
    assert_eq!(line(&mut lines), "ready");
    let reply = sv.request(json!({"op": "kill", "id": "trap"}));
    assert_eq!(reply["ok"], true, "{reply}");
    let events = events_until_stopped(&mut sub, "trap");
    assert_eq!(types(&events), ["created", "started", "stopped"]);
    let ev = events.last().unwrap();
    assert_eq!(ev["status"], 42, "{ev}");
    assert_eq!(ev["exit_code"], 42, "{ev}");
    assert_eq!(ev["signal"], Value::Null, "{ev}");
}

// ---- exec failures ----

/// Unrunnable commands, made in `dir`: missing (by path and in PATH), not
/// executable (mode 0644), a directory, and executable garbage (no ELF
/// header, no shebang); with the status and errno each must give.
fn unrunnable(dir: &Path) -> [(PathBuf, i64, &'static str); 5] {
    let missing = dir.join("missing");
    let noexec = dir.join("noexec.sh");
    let garbage = dir.join("garbage");
    shell(&format!(
        "printf '#!/bin/sh\\nexit 0\\n' > {noexec} && chmod 0644 {noexec} && \
         printf '\\000\\001\\002\\003\\377\\376garbage\\n\\201\\202' > {garbage} && chmod 0755 {garbage}",
        noexec = noexec.display(),
        garbage = garbage.display()
    ));
    [
        (missing, 127, "ENOENT"),
        (PathBuf::from("pidvisor-no-such-command"), 127, "ENOENT"),
        (noexec, 126, "EACCES"),
        (dir.to_path_buf(), 126, "EACCES"),
        (garbage, 126, "ENOEXEC"),
    ]
}

#[test]
fn exec_failures_are_stopped_127_or_126_with_the_errno_and_no_started() {
    let sv = Sv::start();
    for (i, (path, status, errno)) in unrunnable(&sv.dir.0).into_iter().enumerate() {
        let id = format!("bad{i}");
        let mut sub = sv.subscribe(json!({"ids": [&id]}));
        let reply = sv.request(json!({"op": "create", "id": &id, "argv": [path_str(&path)], "start": true}));
        assert_eq!(reply["ok"], false, "{reply}");
        assert_eq!(reply["error"]["kind"], "exec_failed", "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(errno) && message.contains(&id), "{message}");
        assert_eq!(reply["status"], status, "{reply}");
        let events = events_until_stopped(&mut sub, &id);
        assert_eq!(types(&events), ["created", "stopped"], "{events:?}");
        let ev = events.last().unwrap();
        assert_eq!(ev["exit_code"], status, "{ev}");
        assert_eq!(ev["status"], status, "{ev}");
        assert_eq!(ev["signal"], Value::Null, "{ev}");
        let error = ev["error"].as_str().unwrap_or_else(|| panic!("no error string: {ev}"));
        assert!(error.contains(errno), "{error}");

        // The same through a separate `start`.
        let late = format!("late{i}");
        let mut sub = sv.subscribe(json!({"ids": [&late]}));
        create_with(&sv, &late, &[path_str(&path)], json!({}));
        let reply = sv.request(json!({"op": "start", "id": &late}));
        assert_error(&reply, "exec_failed", errno);
        assert_eq!(reply["status"], status, "{reply}");
        let events = events_until_stopped(&mut sub, &late);
        assert_eq!(types(&events), ["created", "stopped"], "{events:?}");
        let exit = &sv.request(json!({"op": "state", "id": &late}))["state"]["exit"];
        assert_eq!(exit["status"], status, "{exit}");
        assert!(exit["error"].as_str().is_some_and(|e| e.contains(errno)), "{exit}");

        let out = sv.cli(&["run", &format!("cli{i}"), "--", path_str(&path)]);
        assert_eq!(exit_code(&out), status as i32, "pidvisor run {}: {}", path.display(), stderr(&out));
        assert!(stderr(&out).contains(errno), "{}", stderr(&out));
    }
    assert_serving(&sv);
}

// ---- the lifecycle guards ----

#[test]
fn kill_before_start_stops_it_without_started_and_start_is_then_refused() {
    let sv = Sv::start();
    let mut sub = sv.subscribe(json!({"ids": ["early"]}));
    let reply = create_with(&sv, "early", &["sh", "-c", "exit 0"], json!({}));
    assert_eq!(reply["status"], "created", "{reply}");
    let reply = sv.request(json!({"op": "kill", "id": "early", "signal": "TERM"}));
    assert_eq!(reply["ok"], true, "{reply}");
    let events = events_until_stopped(&mut sub, "early");
    assert_eq!(types(&events), ["created", "stopped"], "{events:?}");
    let ev = events.last().unwrap();
    assert_eq!(ev["signal"], "SIGTERM", "{ev}");
    assert_eq!(ev["exit_code"], Value::Null, "{ev}");
    assert_eq!(ev["status"], 143, "{ev}");
    let reply = sv.request(json!({"op": "start", "id": "early"}));
    assert_error(&reply, "wrong_state", "early");
    // No late `started` slipped in: the next event after `stopped` is `deleted`.
    let reply = sv.request(json!({"op": "delete", "id": "early"}));
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(next_of(&mut sub, "early")["type"], "deleted");
}

#[test]
fn a_start_overtaken_by_a_kill_is_answered_with_the_real_status() {
    let sv = Sv::start();
    let mut sub = sv.subscribe(json!({"ids": ["k"]}));
    // Its stdin FIFO has no writer: the child blocks opening it, before it
    // can read its start byte, so the kill below comes first for certain.
    let gate = sv.dir.0.join("gate");
    rustix::fs::mknodat(rustix::fs::CWD, &gate, rustix::fs::FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
    create_with(&sv, "k", &["true"], json!({"stdin": path_str(&gate)}));
    let reply_path = sv.dir.0.join("reply");
    let mut reply = fifo_lines(&reply_path);
    let start = json!({"op": "start", "id": "k", "reply": path_str(&reply_path)});
    sv.client().send_raw(start.to_string().as_bytes());
    // Pending (the child is blocked before its start byte): a second start is refused.
    assert_error(&sv.request(json!({"op": "start", "id": "k"})), "wrong_state", "being started already");
    assert_eq!(sv.request(json!({"op": "kill", "id": "k", "signal": "KILL"}))["ok"], true);
    let answer: Value = serde_json::from_str(&line(&mut reply)).unwrap();
    assert_error(&answer, "wrong_state", "before it could start");
    assert_eq!(answer["status"], 137, "{answer}");
    let events = events_until_stopped(&mut sub, "k");
    assert_eq!(types(&events), ["created", "stopped"], "{events:?}");
    assert_eq!(events.last().unwrap()["status"], 137);
}

// ---- orphans and zombies ----

#[test]
fn an_orphan_is_reaped_and_does_not_steal_the_container_status() {
    let sv = Sv::start();
    let out = sv.dir.0.join("out");
    let go = sv.dir.0.join("go");
    let mut lines = fifo_lines(&out);
    rustix::fs::mknodat(rustix::fs::CWD, &go, rustix::fs::FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
    let mut sub = sv.subscribe(json!({"ids": ["parent"], "types": ["stopped"]}));
    // The inner shell outlives the container and waits for "go".
    let script = format!("sh -c 'echo $$; read x < {}; exit 5' & exit 4", go.display());
    create_with(&sv, "parent", &["sh", "-c", &script], json!({"start": true, "stdout": path_str(&out)}));
    let orphan: i32 = line(&mut lines).parse().unwrap();
    let ev = stopped_of(&mut sub, "parent");
    assert_eq!(ev["status"], 4, "{ev}");
    assert_eq!(ev["exit_code"], 4, "{ev}");
    assert_eq!(ppid(orphan), Some(sv.pid), "the orphan was reparented to the subreaper");
    // Release it; hold our writer until it has exited so "go" is not lost.
    let gate = rustix::fs::open(&go, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).unwrap();
    rustix::io::write(&gate, b"go\n").unwrap();
    wait_exited(orphan);
    drop(gate);
    sv.barrier();
    assert!(!sv.descendants().contains(&orphan), "orphan {orphan} not reaped");
    assert_eq!(sv.zombies(), Vec::<i32>::new());
    assert_serving(&sv);
}

/// Reaps a child of the test process when dropped.
struct Reap(i32);

impl Drop for Reap {
    fn drop(&mut self) {
        // SAFETY: waits for our own child; a null status pointer is allowed.
        unsafe { libc::waitpid(self.0, std::ptr::null_mut(), 0) };
    }
}

/// The negative control of the zombie check: an exited child nobody has
/// reaped yet is found by the same check. The test process is its parent
/// (a shell parent may reap it before it execs something that does not).
#[test]
fn the_zombie_check_finds_a_real_zombie() {
    // SAFETY: the child only calls _exit(2), which is async-signal-safe, so
    // forking this multi-threaded process is sound.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see above.
        unsafe { libc::_exit(0) };
    }
    assert!(pid > 0, "fork failed");
    let reap = Reap(pid);
    wait_exited(pid);
    assert!(is_zombie(pid), "{pid} should be a zombie");
    let me = std::process::id() as i32;
    let zombies: Vec<i32> = descendants(me).into_iter().filter(|p| is_zombie(*p)).collect();
    assert!(zombies.contains(&pid), "{zombies:?}");
    drop(reap);
    assert!(!descendants(me).contains(&pid), "{pid} was reaped");
}

#[test]
fn a_thousand_double_forked_children_exit_with_their_containers_without_stealing_a_status() {
    let sv = Sv::start();
    let mut sub = sv.subscribe(json!({"types": ["stopped"]}));
    // Each subshell forks `exit 3` in the background, prints its pid and
    // exits: the grandchild is an orphan of the supervisor (or a zombie
    // reparented to it), exiting while its container does.
    let script = "for i in $(seq 100); do (exit 3 & echo $!); done; exit 7";
    let outs: Vec<PathBuf> = (0..10).map(|i| sv.dir.0.join(format!("pids{i}"))).collect();
    for (i, out) in outs.iter().enumerate() {
        create_with(&sv, &format!("c{i}"), &["sh", "-c", script], json!({"start": true, "stdout": path_str(out)}));
    }
    let mut seen = HashSet::new();
    while seen.len() < 10 {
        let ev = sub.next().expect("stopped event");
        assert_eq!(ev["status"], 7, "a container lost its status: {ev}");
        assert_eq!(ev["exit_code"], 7, "{ev}");
        assert!(seen.insert(ev["id"].as_str().unwrap().to_string()), "twice: {ev}");
    }
    let mut orphans = Vec::new();
    for out in &outs {
        let text = std::fs::read_to_string(out).unwrap();
        orphans.extend(text.lines().map(|l| l.parse::<i32>().unwrap()));
    }
    assert_eq!(orphans.len(), 1000);
    for pid in &orphans {
        wait_exited(*pid);
    }
    sv.barrier();
    assert_eq!(sv.zombies(), Vec::<i32>::new());
    assert_serving(&sv);
}

#[test]
fn a_thousand_blocked_orphans_released_at_once_while_containers_exit() {
    let sv = Sv::start();
    let gate_path = sv.dir.0.join("gate");
    let gate = fifo_gate(&gate_path);
    let mut sub = sv.subscribe(json!({"types": ["stopped"]}));
    // Background jobs get /dev/null as stdin, so they read the gate on fd 3.
    let script = "exec 3<&0; for i in $(seq 100); do (read x <&3; exit 3) & done; exit 7";
    for i in 0..10 {
        create_with(
            &sv,
            &format!("a{i}"),
            &["sh", "-c", script],
            json!({"start": true, "stdin": path_str(&gate_path)}),
        );
    }
    for _ in 0..10 {
        let ev = sub.next().expect("stopped event");
        assert_eq!(ev["status"], 7, "{ev}");
    }
    let orphans = sv.descendants();
    assert_eq!(orphans.len(), 1000, "the blocked orphans: {orphans:?}");
    let pidfds: Vec<OwnedFd> = orphans.iter().map(|p| pidfd(*p).unwrap()).collect();
    // Release all of them at once while ten more containers run and exit.
    for i in 0..10 {
        create_with(
            &sv,
            &format!("b{i}"),
            &["sh", "-c", "read x; exit 9"],
            json!({"start": true, "stdin": path_str(&gate_path)}),
        );
    }
    drop(gate);
    for _ in 0..10 {
        let ev = sub.next().expect("stopped event");
        assert_eq!(ev["status"], 9, "{ev}");
        assert!(ev["id"].as_str().unwrap().starts_with('b'), "{ev}");
    }
    for fd in &pidfds {
        assert!(wait_any(&[fd], deadline()).is_some(), "an orphan did not exit");
    }
    sv.barrier();
    assert_eq!(sv.zombies(), Vec::<i32>::new());
    assert!(sv.descendants().is_empty(), "{:?}", sv.descendants());
}

#[test]
fn two_hundred_concurrent_containers_each_get_their_own_status() {
    let sv = Sv::start();
    let gate_path = sv.dir.0.join("gate");
    let gate = fifo_gate(&gate_path);
    let mut sub = sv.subscribe(json!({"types": ["stopped"]}));
    let instances: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let client = sv.client();
                let gate_path = &gate_path;
                s.spawn(move || {
                    (t * 25..t * 25 + 25)
                        .map(|n| {
                            let req = json!({
                                "op": "create", "id": format!("n{n}"), "start": true,
                                "argv": ["sh", "-c", format!("read x; exit {n}")],
                                "stdin": path_str(gate_path),
                            });
                            let reply = client.request(req);
                            assert_eq!(reply["ok"], true, "{reply}");
                            reply["instance"].as_u64().unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(instances.iter().collect::<HashSet<_>>().len(), 200, "instances are unique");
    // Every one is running and blocked on the gate: let them all exit at once.
    drop(gate);
    let mut got = HashMap::new();
    while got.len() < 200 {
        let ev = sub.next().expect("stopped event");
        let id = ev["id"].as_str().unwrap().to_string();
        assert!(got.insert(id, ev["status"].clone()).is_none(), "two stopped events for {ev}");
    }
    for n in 0..200 {
        assert_eq!(got[&format!("n{n}")], n, "container n{n}");
    }
    sv.barrier();
    assert_eq!(sv.zombies(), Vec::<i32>::new());
}

// ---- what children inherit ----

/// The fd check, run inside a container: the shell's fds, as `ls` sees them
/// from outside (a glob of /proc/$$/fd would list its own directory fd).
const FDS: &str = "ls /proc/$$/fd";

/// The signal check: a command that does not touch its signal state prints
/// what it inherited (a shell would not do: dash blocks every signal while
/// it waits for a child).
const MASKS: [&str; 4] = ["grep", "-E", "^(SigIgn|SigBlk)", "/proc/self/status"];

/// Runs `argv` in a container with stdout to a file; returns what it
/// printed: the lines that are not masks (sorted as numbers), and the masks.
fn inherited(sv: &Sv, id: &str, argv: &[&str]) -> (Vec<String>, Vec<String>) {
    let out = sv.dir.0.join(format!("{id}.out"));
    let mut sub = sv.subscribe(json!({"ids": [id], "types": ["stopped"]}));
    create_with(sv, id, argv, json!({"start": true, "stdout": path_str(&out)}));
    assert_eq!(stopped_of(&mut sub, id)["status"], 0);
    let text = std::fs::read_to_string(&out).unwrap();
    let (masks, mut fds): (Vec<String>, Vec<String>) =
        text.lines().map(String::from).partition(|l| l.starts_with("Sig"));
    fds.sort_by_key(|fd| fd.parse::<i32>().unwrap_or(-1));
    (fds, masks)
}

fn masks_are_clear(masks: &[String]) -> bool {
    masks.len() == 2 && masks.iter().all(|m| m.split_whitespace().nth(1).is_some_and(|v| v.bytes().all(|b| b == b'0')))
}

#[test]
fn children_inherit_no_supervisor_fds() {
    let sv = Sv::start();
    assert!(open_fds(sv.pid).len() > 3, "the supervisor holds fds of its own: {:?}", open_fds(sv.pid));
    let (fds, _) = inherited(&sv, "clean", &["sh", "-c", FDS]);
    assert_eq!(fds, ["0", "1", "2"], "fds of a container process");
    // Negative control: the same check sees an fd passed down to it.
    let leaky = "exec 7</dev/null; exec sh -c \"$1\"";
    let (fds, _) = inherited(&sv, "leaky", &["sh", "-c", leaky, "sh", FDS]);
    assert_eq!(fds, ["0", "1", "2", "7"]);
}

// The supervisor here is started with signals 32 and 33 ignored (a Rust or
// glibc posix_spawn parent leaves them so), and glibc's sigaction() refuses
// to reset those two: this caught a child that used it instead of
// rt_sigaction(2).
#[test]
fn children_start_with_default_signal_dispositions_and_an_empty_mask() {
    let sv = Sv::start();
    let (_, masks) = inherited(&sv, "clean", &MASKS);
    // Negative control: the same check sees an ignored signal passed down.
    let leaky = format!("trap '' USR1; exec {}", MASKS.map(|a| format!("'{a}'")).join(" "));
    let (_, leaked) = inherited(&sv, "leaky", &["sh", "-c", &leaky]);
    assert!(!masks_are_clear(&leaked), "{leaked:?}");
    let supervisor = std::fs::read_to_string(format!("/proc/{}/status", sv.pid)).unwrap();
    let ignored = supervisor.lines().find(|l| l.starts_with("SigIgn")).unwrap_or_default().to_string();
    assert!(masks_are_clear(&masks), "container: {masks:?}; supervisor: {ignored}");
}

// ---- bad input ----

#[test]
fn bad_requests_get_clear_errors_and_the_supervisor_keeps_serving() {
    let sv = Sv::start();
    let client = sv.client();

    // No reply is possible for these: liveness, and a log line.
    client.send_raw(br#"{"op":"version","reply":"#);
    assert_serving(&sv);
    client.send_raw(b"\x00\x01\xfe\xff garbage \x7f\x80");
    assert_serving(&sv);
    client.send_raw(b"[1,2,3]");
    assert_serving(&sv);
    let log = sv.log();
    assert!(log.matches("malformed request").count() >= 3, "{log}");

    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({"op": "fly"}), "bad_request", "fly"),
        (json!({"id": "a"}), "bad_request", "op"),
        (json!({"op": "start"}), "bad_request", "id"),
        (json!({"op": "start", "id": 5}), "bad_request", "field \"id\": invalid type"),
        (json!({"op": "create", "id": "a", "argv": "true"}), "bad_request", "field \"argv\": invalid type"),
        (json!({"op": "kill", "id": "a", "signal": true}), "bad_request", "field \"signal\": invalid type"),
        (json!({"op": "delete", "id": "a", "force": 1}), "bad_request", "field \"force\": invalid type"),
        (json!({"op": "version", "bogus": 1}), "bad_request", "bogus"),
        (json!({"op": "create", "id": "../x", "argv": ["true"]}), "bad_request", "\"../x\""),
        (json!({"op": "create", "id": "", "argv": ["true"]}), "bad_request", "\"\""),
        (json!({"op": "create", "id": "noargv", "argv": []}), "bad_request", "argv"),
        (json!({"op": "start", "id": "ghost"}), "not_found", "ghost"),
        (json!({"op": "kill", "id": "ghost"}), "not_found", "ghost"),
        (json!({"op": "delete", "id": "ghost"}), "not_found", "ghost"),
        (json!({"op": "state", "id": "ghost"}), "not_found", "ghost"),
        (json!({"op": "state", "id": "../../etc"}), "bad_request", "\"../../etc\""),
        (json!({"op": "kill", "id": "a b"}), "bad_request", "\"a b\""),
        (json!({"op": "kill", "id": "ghost", "signal": "SIGNOPE"}), "bad_request", "SIGNOPE"),
        (json!({"op": "subscribe", "path": "/x", "types": ["exploded"]}), "bad_request", "exploded"),
        (json!({"op": "create", "id": "io", "argv": ["true"], "cwd": "rel"}), "bad_request", "rel"),
        (json!({"op": "create", "id": "io", "argv": ["true"], "cwd": "/nonexistent-dir"}), "bad_path", "nonexistent"),
        (json!({"op": "create", "id": "io", "argv": ["true"], "stdin": "/nonexistent-in"}), "bad_path", "nonexistent"),
        (json!({"op": "create", "id": "io", "argv": ["true"], "env": {"A=B": "c"}}), "bad_request", "A=B"),
    ];
    for (req, kind, needle) in cases {
        let reply = sv.request(req.clone());
        assert_error(&reply, kind, needle);
        assert_serving(&sv);
    }

    // Ids in use and wrong states.
    start(&sv, "dup", &["sleep", "1000"]);
    let reply = sv.request(json!({"op": "create", "id": "dup", "argv": ["true"]}));
    assert_error(&reply, "exists", "dup");
    assert_error(&sv.request(json!({"op": "start", "id": "dup"})), "wrong_state", "dup");
    assert_error(&sv.request(json!({"op": "delete", "id": "dup"})), "wrong_state", "dup");
    assert_error(&sv.request(json!({"op": "kill", "id": "dup", "signal": 0})), "bad_request", "0");
    let ev = sv.run_to_stop("done", &["true"]);
    assert_eq!(ev["status"], 0);
    assert_error(&sv.request(json!({"op": "start", "id": "done"})), "wrong_state", "done");
    assert_error(&sv.request(json!({"op": "kill", "id": "done"})), "wrong_state", "done");
    assert_serving(&sv);

    // Subscriber paths that are not usable FIFOs are refused by name.
    let file = sv.dir.0.join("regular");
    std::fs::write(&file, b"").unwrap();
    let fifo = sv.dir.0.join("fifo");
    let mut fifo_sub = fifo_lines(&fifo);
    let link = sv.dir.0.join("link");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    let lonely = sv.dir.0.join("lonely");
    rustix::fs::mknodat(rustix::fs::CWD, &lonely, rustix::fs::FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
    // A stdout FIFO without a reader fails the create, without blocking,
    // and leaves the id free.
    let reply = sv.request(json!({"op": "create", "id": "io", "argv": ["true"], "stdout": path_str(&lonely)}));
    assert_error(&reply, "bad_path", path_str(&lonely));
    assert_eq!(sv.run_to_stop("io", &["true"])["status"], 0);
    for (path, needle) in [(&file, "not a fifo"), (&link, "symlink"), (&lonely, "no reader")] {
        let reply = sv.request(json!({"op": "subscribe", "path": path_str(path)}));
        assert_error(&reply, "bad_path", needle);
        assert_error(&reply, "bad_path", path_str(path));
    }
    assert_error(&sv.request(json!({"op": "subscribe", "path": "rel/fifo"})), "bad_path", "rel/fifo");

    // Reply paths that cannot take a reply: nothing is written anywhere,
    // and the supervisor is not blocked or killed by them.
    let relative = format!("pidvisor-core-test-reply-{}", std::process::id());
    for reply in [path_str(&file), path_str(&link), &relative, path_str(&lonely)] {
        let line = serde_json::to_vec(&json!({"op": "version", "reply": reply})).unwrap();
        client.send_raw(&line);
        assert_serving(&sv);
    }
    let log = sv.log();
    for (path, why) in [
        (path_str(&file), "not a fifo"),
        (path_str(&link), "is a symlink"),
        (&relative, "not an absolute path"),
        (path_str(&lonely), "no reader has it open"),
    ] {
        let said = log.lines().any(|l| l.contains("reply fifo") && l.contains(path) && l.contains(why));
        assert!(said, "no log line for reply {path} ({why}):\n{log}");
    }
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0, "a reply was written into a regular file");
    assert!(std::fs::symlink_metadata(&file).unwrap().file_type().is_file());
    assert!(!Path::new(&relative).exists());
    assert!(!ready_now(&fifo_sub.fd), "a reply went through the symlink");
    // Negative control of that last check: a reply to the FIFO itself is seen.
    client.send_raw(&serde_json::to_vec(&json!({"op": "version", "reply": path_str(&fifo)})).unwrap());
    assert_serving(&sv);
    assert!(ready_now(&fifo_sub.fd));
    assert_eq!(serde_json::from_str::<Value>(&line(&mut fifo_sub)).unwrap()["ok"], true);

    // A line over PIPE_BUF with a reply path gets too_long.
    let long = json!({"op": "version", "pad": "x".repeat(5000)});
    assert_error(&sv.request(long), "too_long", "4096");
    // A line far over what is held is discarded; the next one is served.
    client.send_raw(&vec![b'x'; 200 * 1024]);
    assert_serving(&sv);
    // Even then its reply path, when it comes before the bulk, hears why.
    // (A FIFO of its own: one whose last writer has closed polls as ended.)
    let huge_reply = sv.dir.0.join("huge-reply");
    let mut huge_sub = fifo_lines(&huge_reply);
    let huge = format!(r#"{{"reply":"{}","op":"version","pad":"{}"}}"#, path_str(&huge_reply), "x".repeat(200 * 1024));
    client.send_raw(huge.as_bytes());
    let reply: Value = serde_json::from_str(&line(&mut huge_sub)).unwrap();
    assert_error(&reply, "too_long", "more than");
    assert_serving(&sv);

    // An unterminated fragment left in the FIFO by one writer does not
    // swallow the next client's request (the CLI starts its line with a
    // newline): the CLI gets its answer rather than waiting forever.
    let mut ctl = std::fs::OpenOptions::new().write(true).open(sv.root.join("ctl")).unwrap();
    std::io::Write::write_all(&mut ctl, b"garbage{\"op\"").unwrap();
    drop(ctl);
    let out = sv.cli(&["state", "ghost"]);
    assert_eq!(exit_code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("no container \"ghost\""), "{}", stderr(&out));
    assert!(sv.log().contains("garbage"), "the fragment is logged as malformed");

    // 50 writers at once, 20 requests each, every one answered.
    let answered: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                let client = sv.client();
                s.spawn(move || (0..20).filter(|_| client.request(json!({"op": "version"}))["ok"] == true).count())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(answered, 1000);

    // Nothing was lost: the supervisor still runs containers and events flow.
    sv.barrier();
    let ev = sv.run_to_stop("after", &["sh", "-c", "exit 6"]);
    assert_eq!(ev["status"], 6);
}

#[test]
fn a_malformed_id_is_a_usage_error_before_anything_starts() {
    let dir = TempDir::new("badid");
    let root = dir.0.join("root");
    let cases: [&[&str]; 6] = [
        &["event", "--type", "created", "bad id!"],
        &["create", "../x", "--", "true"],
        &["run", ".hidden", "--", "true"],
        &["state", "a/b"],
        &["kill", "", "KILL"],
        &["wait", "x y"],
    ];
    for args in cases {
        let out = run_with_deadline(std::process::Command::new(bin()).arg("--root").arg(&root).args(args));
        assert_eq!(exit_code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("invalid container id"), "{args:?}: {}", stderr(&out));
    }
    assert!(!root.exists(), "a usage error started a supervisor");
}

// ---- delete ----

#[test]
fn delete_refuses_a_running_container_unless_forced() {
    let sv = Sv::start();
    let mut sub = sv.subscribe(json!({"ids": ["d"]}));
    let pid = start(&sv, "d", &["sleep", "1000"])["pid"].as_i64().unwrap() as i32;
    assert_error(&sv.request(json!({"op": "delete", "id": "d"})), "wrong_state", "force");
    let out = sv.cli(&["delete", "d"]);
    assert_eq!(exit_code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("force"), "{}", stderr(&out));
    assert_eq!(sv.request(json!({"op": "state", "id": "d"}))["state"]["status"], "running");

    let out = sv.cli(&["delete", "--force", "d"]);
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    // The reply came after the reap: the process is gone already.
    assert!(!sv.descendants().contains(&pid), "sleep {pid} still there after delete --force");
    let mut events = events_until_stopped(&mut sub, "d");
    events.push(next_of(&mut sub, "d"));
    assert_eq!(types(&events), ["created", "started", "stopped", "deleted"]);
    assert_eq!(events[2]["signal"], "SIGKILL");
    assert_eq!(events[2]["status"], 137);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_error(&sv.request(json!({"op": "state", "id": "d"})), "not_found", "d");
    let out = sv.cli(&["state", "d"]);
    assert_eq!(exit_code(&out), 1);

    // A stopped one needs no force; a created one is killed without `started`.
    let mut sub = sv.subscribe(json!({"ids": ["s", "c"]}));
    assert_eq!(sv.run_to_stop("s", &["true"])["status"], 0);
    assert_eq!(sv.request(json!({"op": "delete", "id": "s"}))["ok"], true);
    create_with(&sv, "c", &["true"], json!({}));
    assert_eq!(sv.request(json!({"op": "delete", "id": "c", "force": true}))["ok"], true);
    let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
    while by_id.values().map(Vec::len).sum::<usize>() < 7 {
        let ev = sub.next().expect("event");
        by_id.entry(ev["id"].as_str().unwrap().into()).or_default().push(ev["type"].as_str().unwrap().into());
    }
    assert_eq!(by_id["s"], ["created", "started", "stopped", "deleted"]);
    assert_eq!(by_id["c"], ["created", "stopped", "deleted"]);
    // The id is free again, for a new instance.
    let reply = start(&sv, "d", &["true"]);
    assert!(reply["instance"].as_u64().unwrap() > events[0]["instance"].as_u64().unwrap());
}

// ---- state ----

#[test]
fn state_reports_the_oci_fields_and_the_exit() {
    let sv = Sv::start();
    let created = create_with(&sv, "st", &["sleep", "1000"], json!({"annotations": {"org.example/k": "v"}}));
    let state = &sv.request(json!({"op": "state", "id": "st"}))["state"];
    assert!(state["ociVersion"].as_str().is_some_and(|v| v.starts_with("1.")), "{state}");
    assert_eq!(state["id"], "st");
    assert_eq!(state["status"], "created");
    assert_eq!(state["pid"], created["pid"]);
    assert_eq!(state["bundle"], "");
    assert_eq!(state["annotations"], json!({"org.example/k": "v"}));
    assert_eq!(state["instance"], created["instance"]);
    assert!(state.get("exit").is_none(), "{state}");

    let mut sub = sv.subscribe(json!({"ids": ["st"], "types": ["stopped"]}));
    assert_eq!(sv.request(json!({"op": "start", "id": "st"}))["ok"], true);
    let state = &sv.request(json!({"op": "state", "id": "st"}))["state"];
    assert_eq!(state["status"], "running", "{state}");
    assert_eq!(state["pid"], created["pid"]);

    let out = sv.cli(&["state", "st"]);
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in ["ociVersion", "id", "status", "pid", "bundle", "annotations", "instance"] {
        assert_eq!(printed[field], state[field], "{field}: {printed}");
    }

    assert_eq!(sv.request(json!({"op": "kill", "id": "st", "signal": "KILL"}))["ok"], true);
    stopped_of(&mut sub, "st");
    let state = &sv.request(json!({"op": "state", "id": "st"}))["state"];
    assert_eq!(state["status"], "stopped", "{state}");
    assert_eq!(state["instance"], created["instance"]);
    let exit = &state["exit"];
    assert_eq!(exit["exit_code"], Value::Null, "{state}");
    assert_eq!(exit["signal"], "SIGKILL", "{state}");
    assert_eq!(exit["core_dumped"], false, "{state}");
    assert_eq!(exit["status"], 137, "{state}");

    sv.run_to_stop("code", &["sh", "-c", "exit 3"]);
    let exit = &sv.request(json!({"op": "state", "id": "code"}))["state"]["exit"];
    assert_eq!(exit["exit_code"], 3, "{exit}");
    assert_eq!(exit["signal"], Value::Null, "{exit}");
    assert_eq!(exit["status"], 3, "{exit}");
}

// ---- shutdown ----

#[test]
fn fds_the_supervisor_inherits_are_closed_and_never_reach_a_container() {
    let dir = TempDir::new("leak");
    let leaked = dir.0.join("leaked-file");
    std::fs::write(&leaked, b"").unwrap();
    let path = std::ffi::CString::new(path_str(&leaked)).unwrap();
    // Opened without O_CLOEXEC on fd 7 and 9 of the supervisor-to-be.
    let sv = Sv::start_prepared(move || {
        // SAFETY: open, dup2 and close are async-signal-safe.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
            libc::dup2(fd, 7);
            libc::dup2(fd, 9);
            libc::close(fd);
        }
        Ok(())
    });
    let holds_leaked = |pid: i32| {
        open_fds(pid)
            .into_iter()
            .any(|fd| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).is_ok_and(|l| l == leaked))
    };
    assert!(!holds_leaked(sv.pid), "the supervisor kept an inherited fd");
    let pid = start(&sv, "c", &["sleep", "1000"])["pid"].as_i64().unwrap() as i32;
    // (Not the whole fd list: the container's dynamic loader may have a
    // library open for a moment after exec.)
    let fds = open_fds(pid);
    assert!(!fds.contains(&7) && !fds.contains(&9), "the container's fds: {fds:?}");
    assert!(!holds_leaked(pid), "the container holds the supervisor's inherited file");
    // Negative control: the check sees the file where it is open.
    let held = std::fs::File::open(&leaked).unwrap();
    assert!(holds_leaked(std::process::id() as i32), "the check misses an open fd");
    drop(held);
}

#[test]
fn a_supervisor_started_with_sigterm_blocked_still_shuts_down_on_it() {
    let mut sv = Sv::start_masked(&[libc::SIGTERM, libc::SIGINT]);
    let mut sub = sv.subscribe(json!({"types": ["stopped"]}));
    start(&sv, "s", &["sleep", "1000"]);
    assert_eq!(sv.stop_with(libc::SIGTERM), Some(0), "{}", sv.log());
    let ev = sub.next().expect("stopped at shutdown");
    assert_eq!(ev["signal"], "SIGTERM", "{ev}");
}

#[test]
fn a_signal_pending_at_start_is_handled_not_fatal() {
    // Blocked and pending across exec, as a careless launcher can leave it:
    // SIGUSR1 must not kill the supervisor once its mask is cleared.
    let sv = Sv::start_prepared(|| {
        // SAFETY: async-signal-safe calls on a set of our own.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            libc::raise(libc::SIGUSR1);
        }
        Ok(())
    });
    assert_serving(&sv);
    assert_eq!(sv.run_to_stop("after", &["sh", "-c", "exit 5"])["status"], 5);
}

#[test]
fn an_inherited_sigchld_sig_ign_does_not_lose_exit_statuses() {
    // With SIGCHLD ignored the kernel would reap children itself.
    let sv = Sv::start_prepared(|| {
        // SAFETY: signal(2) is async-signal-safe.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
        Ok(())
    });
    assert_eq!(sv.run_to_stop("j", &["sh", "-c", "exit 7"])["status"], 7);
    let ev = sv.run_to_stop("k", &["sh", "-c", "kill -9 $$"]);
    assert_eq!((ev["status"].as_i64(), ev["signal"].as_str()), (Some(137), Some("SIGKILL")), "{ev}");
}

#[test]
fn sighup_and_sigquit_shut_down_cleanly_and_sigusr1_is_ignored() {
    for signal in [libc::SIGHUP, libc::SIGQUIT] {
        let mut sv = Sv::start();
        unsafe { libc::kill(sv.pid, libc::SIGUSR1) };
        unsafe { libc::kill(sv.pid, libc::SIGUSR2) };
        assert_serving(&sv);
        let mut sub = sv.subscribe(json!({"types": ["stopped"]}));
        start(&sv, "s", &["sleep", "1000"]);
        assert_eq!(sv.stop_with(signal), Some(0), "signal {signal}: {}", sv.log());
        let ev = sub.next().expect("stopped at shutdown");
        assert_eq!(ev["signal"], "SIGTERM", "{ev}");
        assert!(sv.log().contains("SIGUSR1 received: ignored"), "{}", sv.log());
    }
}

#[test]
fn sigterm_to_the_supervisor_stops_everything_and_it_exits_0() {
    let mut sv = Sv::start();
    let stubborn_out = sv.dir.0.join("stubborn");
    let daemon_out = sv.dir.0.join("daemon");
    let mut stubborn_lines = fifo_lines(&stubborn_out);
    let mut daemon_lines = fifo_lines(&daemon_out);
    let stubborn = "trap '' TERM; sleep 1000 & echo ready; wait";
    create_with(&sv, "stubborn", &["sh", "-c", stubborn], json!({"start": true, "stdout": path_str(&stubborn_out)}));
    start(&sv, "plain", &["sleep", "1000"]);
    // A grandchild in a session of its own, out of the container's group.
    let daemon = "setsid sh -c 'trap \"\" TERM; echo $$; exec sleep 1000' & exec sleep 1000";
    let container =
        create_with(&sv, "daemon", &["sh", "-c", daemon], json!({"start": true, "stdout": path_str(&daemon_out)}));
    // Created, never started: it goes too, without a `started`.
    create_with(&sv, "idle", &["sleep", "1000"], json!({}));
    assert_eq!(line(&mut stubborn_lines), "ready");
    let grandchild: i32 = line(&mut daemon_lines).parse().unwrap();
    let container_pid = container["pid"].as_i64().unwrap() as i32;
    assert_ne!(session(grandchild), session(container_pid), "the grandchild has a session of its own");

    let before = sv.descendants();
    assert!(before.contains(&grandchild) && before.len() >= 5, "{before:?}");
    let pidfds: Vec<(i32, OwnedFd)> = before.iter().filter_map(|p| Some((*p, pidfd(*p).ok()?))).collect();
    let mut sub = sv.subscribe(json!({"types": ["started", "stopped"]}));

    assert_eq!(sv.stop_with(libc::SIGTERM), Some(0), "{}", sv.log());
    for (pid, fd) in &pidfds {
        assert!(ready_now(fd), "pid {pid} outlived the supervisor");
    }
    let mut got = HashMap::new();
    while let Some(ev) = sub.next() {
        assert_eq!(ev["type"], "stopped", "{ev}");
        got.insert(ev["id"].as_str().unwrap().to_string(), ev);
    }
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got["stubborn"]["signal"], "SIGKILL", "ignores SIGTERM, so killed after the grace");
    assert_eq!(got["plain"]["signal"], "SIGTERM");
    assert_eq!(got["daemon"]["signal"], "SIGTERM");
    assert_eq!(got["idle"]["signal"], "SIGTERM");
}

#[test]
fn shutdown_through_the_cli_returns_0_and_the_supervisor_exits_0() {
    let mut sv = Sv::start();
    let mut sub = sv.subscribe(json!({"types": ["stopped"]}));
    let pid = start(&sv, "s", &["sleep", "1000"])["pid"].as_i64().unwrap() as i32;
    let fd = pidfd(pid).unwrap();
    let out = sv.cli(&["shutdown"]);
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    assert!(ready_now(&fd), "shutdown returned before the container stopped");
    assert_eq!(sv.wait_exit(), Some(0), "{}", sv.log());
    let ev = sub.next().expect("stopped event");
    assert_eq!(ev["id"], "s");
    assert_eq!(ev["status"], 143);
    assert!(sub.at_eof());
}

// ---- the root ----

/// Runs `pidvisor --root ROOT supervise` expecting it to refuse; returns stderr.
fn refused(root: &Path) -> String {
    let out = run_with_deadline(Command::new(bin()).arg("--root").arg(root).arg("supervise"));
    assert_eq!(exit_code(&out), 1, "supervise on {}: {}", root.display(), stderr(&out));
    stderr(&out)
}

#[test]
fn a_second_supervisor_on_the_same_root_is_refused_naming_the_first() {
    let sv = Sv::start();
    let message = refused(&sv.root);
    assert!(message.contains(&sv.pid.to_string()), "{message}");
    // The first one is untouched.
    assert_serving(&sv);
    assert_eq!(std::fs::read_to_string(sv.root.join("lock")).unwrap().trim(), sv.pid.to_string());
    assert_eq!(sv.run_to_stop("x", &["true"])["status"], 0);
}

#[test]
fn unsafe_roots_and_control_fifos_are_refused() {
    let dir = TempDir::new("roots");

    let open = dir.0.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let message = refused(&open);
    assert!(message.contains("writable by others"), "{message}");
    assert_eq!(std::fs::metadata(&open).unwrap().permissions().mode() & 0o777, 0o777);
    assert!(!open.join("ctl").exists() && !open.join("lock").exists(), "it touched a refused root");
    let shared = dir.0.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o770)).unwrap();
    let message = refused(&shared);
    assert!(message.contains("writable by its group"), "{message}");

    // Another user's root: a directory we give away when we can, else /.
    let theirs = if rustix::process::geteuid().is_root() {
        let theirs = dir.0.join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        theirs
    } else {
        PathBuf::from("/")
    };
    let message = refused(&theirs);
    assert!(message.contains("owned by"), "{message}");

    let file_ctl = dir.0.join("file-ctl");
    std::fs::create_dir(&file_ctl).unwrap();
    std::fs::set_permissions(&file_ctl, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(file_ctl.join("ctl"), b"").unwrap();
    let message = refused(&file_ctl);
    assert!(message.contains("ctl") && message.contains("not a fifo"), "{message}");

    let link_ctl = dir.0.join("link-ctl");
    std::fs::create_dir(&link_ctl).unwrap();
    std::fs::set_permissions(&link_ctl, std::fs::Permissions::from_mode(0o700)).unwrap();
    let elsewhere = dir.0.join("elsewhere");
    rustix::fs::mknodat(rustix::fs::CWD, &elsewhere, rustix::fs::FileType::Fifo, Mode::from_raw_mode(0o600), 0)
        .unwrap();
    std::os::unix::fs::symlink(&elsewhere, link_ctl.join("ctl")).unwrap();
    let message = refused(&link_ctl);
    assert!(message.contains("ctl") && message.contains("symlink"), "{message}");
}

/// Kills the supervisor a CLI started in the background on `root`.
struct AutoStarted(PathBuf);

impl Drop for AutoStarted {
    fn drop(&mut self) {
        let Ok(text) = std::fs::read_to_string(self.0.join("lock")) else { return };
        let Ok(pid) = text.trim().parse::<i32>() else { return };
        // Only if that pid is still the supervisor of this root.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(path_str(&self.0)) {
            kill_tree(pid);
            wait_exited(pid);
        }
    }
}

#[test]
fn run_without_a_supervisor_starts_one_in_the_background() {
    let dir = TempDir::new("auto");
    let root = dir.0.join("root");
    let _guard = AutoStarted(root.clone());
    let cli = |args: &[&str]| run_with_deadline(Command::new(bin()).arg("--root").arg(&root).args(args));
    // A plain `create` starts one too, on a root of its own.
    let other = dir.0.join("other");
    let _other_guard = AutoStarted(other.clone());
    let out = run_with_deadline(Command::new(bin()).arg("--root").arg(&other).args(["create", "c", "--", "true"]));
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("started a supervisor"), "{}", stderr(&out));
    let state = run_with_deadline(Command::new(bin()).arg("--root").arg(&other).args(["state", "c"]));
    assert!(String::from_utf8_lossy(&state.stdout).contains("\"created\""), "{state:?}");

    let out = cli(&["run", "x", "--", "true"]);
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("started a supervisor"), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "stdout carries only requested data: {:?}", out.stdout);
    let pid: i32 = std::fs::read_to_string(root.join("lock")).unwrap().trim().parse().unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "the started supervisor runs on");

    // The next client uses it.
    let out = cli(&["run", "y", "--", "sh", "-c", "exit 4"]);
    assert_eq!(exit_code(&out), 4, "{}", stderr(&out));
    assert!(!stderr(&out).contains("started a supervisor"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(root.join("lock")).unwrap().trim(), pid.to_string());
}

// ---- init mode ----

#[test]
fn init_mode_exits_with_the_status_of_main() {
    let mut sv = Sv::start_with(&["--grace", "2s"], &["sh", "-c", "exit 9"]);
    assert_eq!(sv.wait_exit(), Some(9), "{}", sv.log());
    // A main that cannot be executed: the shell's 127.
    let mut sv = Sv::start_with(&["--grace", "2s"], &["/nonexistent/main"]);
    assert_eq!(sv.wait_exit(), Some(127), "{}", sv.log());
}

#[test]
fn init_mode_stops_the_other_containers_when_main_stops() {
    let dir = TempDir::new("init");
    let go = dir.0.join("go");
    let gate = fifo_gate(&go);
    let script = format!("read x < {}; exit 9", go.display());
    let mut sv = Sv::start_with(&["--grace", "2s"], &["sh", "-c", &script]);
    let mut sub = sv.subscribe(json!({"types": ["stopped"]}));
    let other = start(&sv, "other", &["sleep", "1000"])["pid"].as_i64().unwrap() as i32;
    let other = pidfd(other).unwrap();
    rustix::io::write(&gate, b"go\n").unwrap();
    assert_eq!(sv.wait_exit(), Some(9), "{}", sv.log());
    drop(gate);
    assert!(ready_now(&other), "a container outlived init mode's exit");
    let mut got = HashMap::new();
    while let Some(ev) = sub.next() {
        got.insert(ev["id"].as_str().unwrap().to_string(), ev["status"].clone());
    }
    assert_eq!(got["main"], 9);
    assert_eq!(got["other"], 143);
}

#[test]
fn init_mode_forwards_signals_to_main() {
    let dir = TempDir::new("init");
    for (signal, code) in [(libc::SIGTERM, 33), (libc::SIGINT, 34), (libc::SIGHUP, 35), (libc::SIGUSR1, 36)] {
        let ready = dir.0.join(format!("ready{signal}"));
        let mut lines = fifo_lines(&ready);
        // `wait` returns as soon as a trapped signal arrives.
        let script = format!(
            "trap 'exit {code}' {signal}; echo ready > {}; while :; do sleep 1000 & wait; done",
            ready.display()
        );
        let mut sv = Sv::start_with(&["--grace", "2s"], &["sh", "-c", &script]);
        assert_eq!(line(&mut lines), "ready");
        assert_eq!(sv.stop_with(signal), Some(code), "signal {signal}: {}", sv.log());
    }

    // Without a trap, main dies of the signal and the supervisor says so.
    let mut sv = Sv::start_with(&["--grace", "2s"], &["sleep", "1000"]);
    assert_eq!(sv.stop_with(libc::SIGTERM), Some(143), "{}", sv.log());
}

#[test]
fn fire_and_forget_requests_act_and_log_their_errors() {
    let sv = Sv::start();
    let mut sub = sv.subscribe(json!({"ids": ["ff"], "types": ["stopped"]}));
    let client = sv.client();
    client.send_raw(br#"{"op":"create","id":"ff","argv":["sh","-c","exit 5"],"start":true}"#);
    assert_eq!(stopped_of(&mut sub, "ff")["status"], 5);
    client.send_raw(br#"{"op":"create","id":"bad/id","argv":["true"]}"#);
    assert_serving(&sv);
    assert!(sv.log().contains("bad/id"), "{}", sv.log());
}
