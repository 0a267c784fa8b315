//! The shell examples in scripts/examples/, run against a real supervisor.
//! They need bash and jq (scripts/test installs jq); a missing jq fails the
//! tests with a message rather than skipping them.
//!
//! Nothing here sleeps: every wait blocks on a line of a script's output, a
//! process exit or a subscription, with the harness deadline.
mod common;
use common::*;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Instant;

use serde_json::json;

/// The path of a script in scripts/examples/.
fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/examples").join(name)
}

/// A command running an example, with no root from the environment.
fn example_cmd(name: &str) -> Command {
    let mut cmd = Command::new(example(name));
    cmd.env_remove("PIDVISOR_ROOT");
    cmd
}

/// Fails the test, with a clear message, when jq is not installed.
fn require_jq() {
    let found = Command::new("jq")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "jq is required by the shell examples and their tests: install it (apt-get install jq; scripts/test does)"
    );
}

/// A script running in a process group of its own, its stdout and stderr
/// read line by line. Dropping it kills the whole group (the script, its jq
/// and hook children).
struct Script {
    child: Child,
    reaped: bool,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    /// Every stderr line read so far, for failure messages.
    seen_stderr: Vec<String>,
}

/// Sends each line read from `r` on a channel; the channel closes at EOF.
fn line_reader(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Script {
    fn spawn(cmd: &mut Command) -> Script {
        use std::os::unix::process::CommandExt;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let stdout = line_reader(child.stdout.take().unwrap());
        let stderr = line_reader(child.stderr.take().unwrap());
        Script { child, reaped: false, stdout, stderr, seen_stderr: Vec::new() }
    }

    /// The next stdout line; None at end-of-file. Panics at the deadline.
    fn line(&mut self, deadline: Instant) -> Option<String> {
        match self.stdout.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                panic!("no output line within the deadline; stderr: {:?}", self.seen_stderr)
            }
        }
    }

    /// Reads stderr until a line containing `what`; panics at EOF or the deadline.
    fn wait_stderr(&mut self, what: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.stderr.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    let found = line.contains(what);
                    self.seen_stderr.push(line);
                    if found {
                        return;
                    }
                }
                Err(e) => panic!("no {what:?} on stderr ({e:?}); stderr so far: {:?}", self.seen_stderr),
            }
        }
    }

    /// Waits for the script to exit; returns its exit status, its remaining
    /// stdout lines and its whole stderr.
    fn finish(&mut self) -> (Option<i32>, Vec<String>, String) {
        let code = wait_child(&mut self.child);
        self.reaped = true;
        let deadline = Instant::now() + DEADLINE;
        let mut out = Vec::new();
        while let Some(line) = self.line(deadline) {
            out.push(line);
        }
        let mut err = std::mem::take(&mut self.seen_stderr);
        err.extend(self.stderr.iter());
        (code, out, err.join("\n"))
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if !self.reaped {
            // The group leader is not reaped yet, so its id is still ours.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

fn wait_all(sv: &Sv, ids: &[&str]) -> Script {
    Script::spawn(example_cmd("wait-all.sh").arg("--root").arg(&sv.root).args(ids))
}

/// Creates and starts a container that runs until it is killed.
fn start_sleeper(sv: &Sv, id: &str) {
    let reply = sv.request(json!({"op": "create", "id": id, "argv": ["sleep", "1000"], "start": true}));
    assert_eq!(reply["ok"], true, "create {id}: {reply}");
}

fn kill(sv: &Sv, id: &str, signal: serde_json::Value) {
    let reply = sv.request(json!({"op": "kill", "id": id, "signal": signal}));
    assert_eq!(reply["ok"], true, "kill {id}: {reply}");
}

#[test]
fn wait_all_reports_each_failure_and_exits_1() {
    require_jq();
    let sv = Sv::start();
    // Two jobs stop before wait-all subscribes (found in the replay), one
    // while it runs or just before (either way it must be reported).
    assert_eq!(sv.run_to_stop("job1", &["true"])["status"], 0);
    assert_eq!(sv.run_to_stop("job2", &["sh", "-c", "exit 3"])["status"], 3);
    start_sleeper(&sv, "job3");
    let mut script = wait_all(&sv, &["job1", "job2", "job3"]);
    kill(&sv, "job3", json!("SIGKILL"));
    let (code, out, err) = script.finish();
    assert_eq!(out, ["ok   job1", "FAIL job2 status 3", "FAIL job3 status 137 (killed by SIGKILL)"], "stderr: {err}");
    assert_eq!(code, Some(1), "stderr: {err}");
}

#[test]
fn wait_all_exits_0_when_every_job_succeeds() {
    require_jq();
    let sv = Sv::start();
    // Started without waiting: each may stop before or after the subscription.
    for id in ["a", "b", "c"] {
        let reply = sv.request(json!({"op": "create", "id": id, "argv": ["sh", "-c", "exit 0"], "start": true}));
        assert_eq!(reply["ok"], true, "create {id}: {reply}");
    }
    // The root from the environment this time; a repeated id counts once.
    let mut script =
        Script::spawn(example_cmd("wait-all.sh").args(["c", "a", "b", "a"]).env("PIDVISOR_ROOT", &sv.root));
    let (code, out, err) = script.finish();
    assert_eq!(out, ["ok   c", "ok   a", "ok   b"], "stderr: {err}");
    assert_eq!(code, Some(0), "stderr: {err}");
}

#[test]
fn wait_all_counts_unknown_ids_as_failures() {
    require_jq();
    let sv = Sv::start();
    assert_eq!(sv.run_to_stop("known", &["true"])["status"], 0);
    let (code, out, err) = wait_all(&sv, &["known", "nosuch"]).finish();
    assert_eq!(out, ["ok   known", "FAIL nosuch unknown: no such container"], "stderr: {err}");
    assert_eq!(code, Some(1), "stderr: {err}");
}

#[test]
fn wait_all_usage_errors_exit_2() {
    require_jq();
    let sv = Sv::start();
    for args in [&[][..], &["not an id"][..], &["--bogus", "x"][..]] {
        let (code, out, err) = wait_all(&sv, args).finish();
        assert_eq!(code, Some(2), "{args:?}: stdout {out:?} stderr {err}");
        assert!(out.is_empty(), "{args:?}: {out:?}");
        assert!(!err.is_empty(), "{args:?}: no message");
    }
    let (code, out, _) = wait_all(&sv, &["-h"]).finish();
    assert_eq!(code, Some(0));
    assert!(out[0].starts_with("Usage: wait-all.sh"), "{out:?}");
}

#[test]
fn wait_all_exits_125_when_the_supervisor_dies() {
    require_jq();
    let mut sv = Sv::start();
    start_sleeper(&sv, "forever");
    let mut script = wait_all(&sv, &["forever"]);
    // SIGKILL: no shutdown, so no `stopped` event for "forever". Its
    // process outlives the supervisor; kill it by hand afterwards.
    let below = sv.descendants();
    assert_eq!(sv.stop_with(libc::SIGKILL), Some(128 + libc::SIGKILL));
    for pid in below {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let (code, out, err) = script.finish();
    assert_eq!(code, Some(125), "stdout {out:?} stderr {err}");
    // Depending on when the supervisor died: before wait-all subscribed
    // (nothing on stdout), or after (the job is listed as lost).
    assert!(out.is_empty() || out == ["LOST forever (had not stopped)"], "{out:?}");
    assert!(err.contains("supervisor"), "stderr: {err}");
}

#[test]
fn on_exit_prints_each_exit_runs_the_hook_and_ends_at_shutdown() {
    require_jq();
    let mut sv = Sv::start();
    let hook = r#"echo "hook id=$PIDVISOR_ID status=$PIDVISOR_STATUS exit_code=$PIDVISOR_EXIT_CODE signal=$PIDVISOR_SIGNAL core=$PIDVISOR_CORE_DUMPED type=$(printf %s "$PIDVISOR_EVENT" | jq -r .type)""#;
    let mut script =
        Script::spawn(example_cmd("on-exit.sh").arg("--root").arg(&sv.root).args(["--", "sh", "-c", hook]));
    // Exits count only once it has subscribed; it says so on stderr.
    script.wait_stderr("subscribed");

    assert_eq!(sv.run_to_stop("job1", &["sh", "-c", "exit 0"])["status"], 0);
    assert_eq!(sv.run_to_stop("job2", &["sh", "-c", "exit 3"])["status"], 3);
    start_sleeper(&sv, "job3");
    kill(&sv, "job3", json!(9));
    let deadline = Instant::now() + DEADLINE;
    let mut next = || script.line(deadline).expect("a line");
    assert_eq!(next(), "job1 exited with status 0");
    assert_eq!(next(), "hook id=job1 status=0 exit_code=0 signal= core=false type=stopped");
    assert_eq!(next(), "job2 exited with status 3");
    assert_eq!(next(), "hook id=job2 status=3 exit_code=3 signal= core=false type=stopped");
    assert_eq!(next(), "job3 killed by SIGKILL (status 137)");
    assert_eq!(next(), "hook id=job3 status=137 exit_code= signal=SIGKILL core=false type=stopped");

    // An exec failure.
    assert_eq!(sv.run_to_stop("job4", &["/nonexistent/cmd"])["status"], 127);
    let line = next();
    assert!(line.starts_with("job4 failed to start: ") && line.ends_with(" (status 127)"), "{line}");
    assert_eq!(next(), "hook id=job4 status=127 exit_code=127 signal= core=false type=stopped");

    // Shutdown stops the last container (its exit is reported too), then the
    // supervisor closes the FIFO and the script ends by itself.
    start_sleeper(&sv, "job5");
    let reply = sv.request(json!({"op": "shutdown"}));
    assert_eq!(reply["ok"], true, "{reply}");
    let (code, out, err) = script.finish();
    assert_eq!(
        out,
        [
            "job5 killed by SIGTERM (status 143)",
            "hook id=job5 status=143 exit_code= signal=SIGTERM core=false type=stopped"
        ],
        "stderr: {err}"
    );
    assert_eq!(code, Some(0), "stderr: {err}");
    assert_eq!(sv.wait_exit(), Some(0));
}

#[test]
fn on_exit_ends_when_the_supervisor_is_killed() {
    require_jq();
    let mut sv = Sv::start();
    let mut script = Script::spawn(example_cmd("on-exit.sh").env("PIDVISOR_ROOT", &sv.root));
    script.wait_stderr("subscribed");
    assert_eq!(sv.stop_with(libc::SIGKILL), Some(128 + libc::SIGKILL));
    let (code, out, err) = script.finish();
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(code, Some(0), "stderr: {err}");
}

#[test]
fn on_exit_without_a_supervisor_fails_clearly() {
    require_jq();
    let mut sv = Sv::start();
    sv.request(json!({"op": "shutdown"}));
    assert_eq!(sv.wait_exit(), Some(0));
    let (code, out, err) = Script::spawn(example_cmd("on-exit.sh").arg("--root").arg(&sv.root)).finish();
    assert_eq!(code, Some(1), "stdout {out:?} stderr {err}");
    assert!(err.contains("no supervisor"), "stderr: {err}");
    let (code, _, err) = Script::spawn(example_cmd("on-exit.sh").arg("--nope")).finish();
    assert_eq!(code, Some(2), "stderr: {err}");
}
