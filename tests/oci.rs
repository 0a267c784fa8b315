//! OCI bundles through runc, end to end: `run` and the seed workflow with a
//! bundle, kill and delete (the runtime's state goes with the container),
//! the errors a bad bundle or runtime gets, shutdown with a bundle container
//! whose PID 1 ignores SIGTERM, and id reuse. Bundles are built by
//! `common::oci` from a static busybox; runc and busybox-static must be
//! installed (`scripts/test` installs them), or these tests fail.
//!
//! Container ids carry this process's PID: runc's cgroup paths are global
//! on the host. Every test removes its runc containers through a
//! `RuncGuard`, even when it panics. Nothing sleeps: waits block on
//! subscriptions, pidfds and `wait_child`.
mod common;
use common::oci::{make_bundle, runc, runc_knows, unique_id, BundleOptions, RuncGuard};
use common::*;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

use serde_json::{json, Value};

// ---- helpers ----

fn exit_code(out: &Output) -> i32 {
    out.status.code().unwrap_or_else(|| panic!("killed by a signal: {out:?}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A bundle named `name` in the supervisor's test directory.
fn bundle(sv: &Sv, name: &str, args: &[&str]) -> PathBuf {
    make_bundle(&sv.dir.0.join(name), args, &BundleOptions::default())
}

/// Sends a bundle `create` through runc and asserts it succeeded.
fn create_bundle(sv: &Sv, id: &str, bundle: &Path, start: bool) -> Value {
    let reply = sv.request(json!({
        "op": "create", "id": id, "bundle": path_str(bundle), "runtime": "runc", "start": start
    }));
    assert_eq!(reply["ok"], true, "create {id}: {reply}\n{}", sv.log());
    reply
}

/// The next event of `sub`, which must be of `id` and of type `kind`.
fn expect_event(sub: &mut Sub, id: &str, kind: &str) -> Value {
    let ev = sub.next().unwrap_or_else(|| panic!("subscription ended before {kind} of {id}"));
    assert_eq!(ev["id"], id, "{ev}");
    assert_eq!(ev["type"], kind, "{ev}");
    ev
}

/// Asserts a `{"ok":false}` reply of `kind` whose message contains `needle`.
fn assert_error(reply: &Value, kind: &str, needle: &str) {
    assert_eq!(reply["ok"], false, "expected an error: {reply}");
    assert_eq!(reply["error"]["kind"], kind, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_else(|| panic!("no message: {reply}"));
    assert!(message.contains(needle), "message {message:?} does not contain {needle:?}");
}

/// Waits until every process that is a child of the supervisor now has
/// exited. After a `delete` reply this covers the `runc delete` helper: the
/// supervisor forks it before it answers, and nothing else runs below it.
fn wait_for_children(sv: &Sv) {
    for pid in sv.descendants() {
        let Ok(fd) = pidfd(pid) else { continue };
        // Checked after pidfd_open: the PID is still a child of ours.
        if ppid(pid) != Some(sv.pid) {
            continue;
        }
        assert!(
            wait_any(&[&fd], Instant::now() + DEADLINE).is_some(),
            "child {pid} of the supervisor did not exit\n{}",
            sv.log()
        );
    }
}

/// The ids `runc list` shows on this root.
fn runc_list(root: &Path) -> Vec<String> {
    let out = runc(root, &["list", "--quiet"]);
    assert!(out.status.success(), "runc list: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// Asserts runc has forgotten `id` on this root (state directory and pid
/// file gone, not in `runc list`).
fn assert_runc_forgot(sv: &Sv, id: &str) {
    assert!(!runc_knows(&sv.root, id), "runc still has state for {id}\n{}", sv.log());
    assert!(!runc_list(&sv.root).iter().any(|c| c == id), "runc list still shows {id}");
    assert!(!sv.root.join("runtime").join(format!("{id}.pid")).exists(), "pid file of {id} left behind");
}

/// Kills a spawned CLI process on drop unless it was waited for.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn wait(&mut self) -> Option<i32> {
        let mut child = self.0.take().expect("not waited for yet");
        wait_child(&mut child)
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

// ---- run, create --wait, kill, delete ----

#[test]
fn run_of_a_bundle_exits_with_its_status_and_events_come_in_order() {
    let sv = Sv::start();
    let id = unique_id("oci-run17");
    let _runc = RuncGuard::new(&sv.root, &id);
    let b = bundle(&sv, "b17", &["sh", "-c", "exit 17"]);
    let out = sv.cli(&["run", &id, "--bundle", path_str(&b)]);
    assert_eq!(exit_code(&out), 17, "pidvisor run: {}\n{}", stderr(&out), sv.log());

    // The container is kept until deleted: its events are replayed.
    let mut sub = sv.subscribe(json!({"ids": [&id]}));
    let created = expect_event(&mut sub, &id, "created");
    let started = expect_event(&mut sub, &id, "started");
    let stopped = expect_event(&mut sub, &id, "stopped");
    let seqs: Vec<u64> = [&created, &started, &stopped].iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq not increasing: {seqs:?}");
    for ev in [&started, &stopped] {
        assert_eq!(ev["instance"], created["instance"], "{ev}");
        assert_eq!(ev["pid"], created["pid"], "{ev}");
    }
    assert_eq!(stopped["status"], 17, "{stopped}");
    assert_eq!(stopped["exit_code"], 17, "{stopped}");
    assert_eq!(stopped["signal"], Value::Null, "{stopped}");

    let state = sv.request(json!({"op": "state", "id": &id}));
    assert_eq!(state["state"]["status"], "stopped", "{state}");
    assert_eq!(state["state"]["bundle"], path_str(&b), "{state}");
    // `wait` on the stopped bundle container gives the same status.
    let out = sv.cli(&["wait", &id]);
    assert_eq!(exit_code(&out), 17, "pidvisor wait: {}", stderr(&out));
}

#[test]
fn run_of_a_bundle_attaches_the_callers_stdout() {
    let sv = Sv::start();
    let id = unique_id("oci-stdout");
    let _runc = RuncGuard::new(&sv.root, &id);
    let opts = BundleOptions { env: vec!["GREETING=hello from the bundle".into()], ..Default::default() };
    let b = make_bundle(&sv.dir.0.join("bout"), &["sh", "-c", "echo \"$GREETING\"; echo oops >&2"], &opts);
    let out = sv.cli(&["run", "--rm", &id, "--bundle", path_str(&b), "--runtime", "runc"]);
    assert_eq!(exit_code(&out), 0, "pidvisor run: {}\n{}", stderr(&out), sv.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from the bundle\n");
    assert!(stderr(&out).contains("oops"), "stderr: {}", stderr(&out));
    // --rm: deleted, and runc's state with it once its `delete` finished.
    let reply = sv.request(json!({"op": "state", "id": &id}));
    assert_error(&reply, "not_found", &id);
    wait_for_children(&sv);
    assert_runc_forgot(&sv, &id);
}

#[test]
fn seed_workflow_with_a_bundle() {
    let sv = Sv::start();
    let id = unique_id("oci-seed");
    let _runc = RuncGuard::new(&sv.root, &id);
    let b = bundle(&sv, "bseed", &["sh", "-c", "exit 17"]);
    let err_path = sv.dir.0.join("create-wait.stderr");
    let child = Command::new(bin())
        .arg("--root")
        .arg(&sv.root)
        .args(["create", "--wait", &id, "--bundle", path_str(&b)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let create_pid = child.id() as i32;
    let mut create = ChildGuard(Some(child));

    let out = sv.cli(&["event", "--type", "created", &id]);
    assert_eq!(exit_code(&out), 0, "pidvisor event: {}\n{}", stderr(&out), sv.log());
    let ev: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("event output {out:?}: {e}"));
    assert_eq!(ev["type"], "created", "{ev}");
    assert_eq!(ev["id"], id.as_str(), "{ev}");

    // Created, not started: the runtime's init waits, and so does `create --wait`.
    let state = sv.request(json!({"op": "state", "id": &id}));
    assert_eq!(state["state"]["status"], "created", "{state}");
    assert_eq!(state["state"]["pid"], ev["pid"], "{state}");
    let create_fd = pidfd(create_pid).unwrap();
    assert!(!ready_now(&create_fd), "create --wait exited before start");

    let out = sv.cli(&["start", &id]);
    assert_eq!(exit_code(&out), 0, "pidvisor start: {}\n{}", stderr(&out), sv.log());
    let code = create.wait();
    let create_err = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert_eq!(code, Some(17), "create --wait: {create_err}\n{}", sv.log());
}

#[test]
fn kill_then_delete_removes_the_runtime_state() {
    let sv = Sv::start();
    let id = unique_id("oci-kill");
    let _runc = RuncGuard::new(&sv.root, &id);
    let b = bundle(&sv, "bsleep", &["sleep", "1000"]);
    let mut sub = sv.subscribe(json!({"ids": [&id]}));
    let reply = create_bundle(&sv, &id, &b, true);
    let pid = reply["pid"].as_i64().unwrap() as i32;
    assert_eq!(reply["status"], "running", "{reply}");
    let created = expect_event(&mut sub, &id, "created");
    assert_eq!(created["pid"], pid, "{created}");
    expect_event(&mut sub, &id, "started");

    let state = sv.request(json!({"op": "state", "id": &id}));
    assert_eq!(state["state"]["status"], "running", "{state}");
    assert_eq!(state["state"]["pid"], pid, "{state}");
    assert_eq!(state["state"]["bundle"], path_str(&b), "{state}");
    // The runtime's init is the supervisor's child (it is a subreaper).
    assert_eq!(ppid(pid), Some(sv.pid), "container init {pid} is not the supervisor's child");
    // The control for `assert_runc_forgot` below: runc knows it now.
    assert!(runc_knows(&sv.root, &id), "no runc state for {id}");
    assert!(runc_list(&sv.root).contains(&id), "runc list does not show {id}");
    let init = pidfd(pid).unwrap();

    let out = sv.cli(&["kill", &id, "KILL"]);
    assert_eq!(exit_code(&out), 0, "pidvisor kill: {}", stderr(&out));
    let stopped = expect_event(&mut sub, &id, "stopped");
    assert_eq!(stopped["signal"], "SIGKILL", "{stopped}");
    assert_eq!(stopped["status"], 137, "{stopped}");
    assert_eq!(stopped["exit_code"], Value::Null, "{stopped}");
    assert!(ready_now(&init), "stopped published but init {pid} has not exited");

    let out = sv.cli(&["delete", &id]);
    assert_eq!(exit_code(&out), 0, "pidvisor delete: {}", stderr(&out));
    expect_event(&mut sub, &id, "deleted");
    // `runc delete` runs as a helper after the reply; wait for it to exit.
    wait_for_children(&sv);
    assert_runc_forgot(&sv, &id);
    sv.barrier();
    assert!(sv.zombies().is_empty(), "zombies: {:?}", sv.zombies());
}

// ---- errors ----

#[test]
fn bad_bundles_and_runtimes_get_clear_errors() {
    let sv = Sv::start();
    let id = unique_id("oci-bad");
    let _runc = RuncGuard::new(&sv.root, &id);

    let empty = sv.dir.0.join("empty-bundle");
    std::fs::create_dir_all(&empty).unwrap();
    let reply = sv.request(json!({"op": "create", "id": &id, "bundle": path_str(&empty), "start": true}));
    assert_error(&reply, "bad_path", "no config.json");

    let reply = sv.request(json!({"op": "create", "id": &id, "bundle": "relative/bundle"}));
    assert_error(&reply, "bad_request", "not an absolute path");

    let good = bundle(&sv, "bgood", &["true"]);
    let reply = sv.request(json!({"op": "create", "id": &id, "bundle": path_str(&good), "runtime": "nosuchruntime"}));
    assert_error(&reply, "bad_request", "nosuchruntime");

    let reply = sv.request(json!({"op": "create", "id": &id, "argv": ["true"], "runtime": "runc"}));
    assert_error(&reply, "bad_request", "bundle");

    // The CLI turns a relative --bundle into an absolute one, and reports
    // a missing config.json.
    let out = sv.cli(&["create", &id, "--bundle", "no/such/bundle"]);
    assert_eq!(exit_code(&out), 1, "pidvisor create: {out:?}");
    assert!(stderr(&out).contains("no config.json"), "stderr: {}", stderr(&out));

    // None of these made a container.
    let reply = sv.request(json!({"op": "state", "id": &id}));
    assert_error(&reply, "not_found", &id);
    assert!(!runc_knows(&sv.root, &id));
}

#[test]
fn invalid_config_json_fails_create_with_the_runtimes_log_line() {
    let sv = Sv::start();
    let id = unique_id("oci-badjson");
    let _runc = RuncGuard::new(&sv.root, &id);
    let b = bundle(&sv, "bjson", &["true"]);
    std::fs::write(b.join("config.json"), "{not json\n").unwrap();
    let mut all = sv.subscribe(json!({}));

    let reply =
        sv.request(json!({"op": "create", "id": &id, "bundle": path_str(&b), "runtime": "runc", "start": true}));
    assert_error(&reply, "system", "exited with status");
    let message = reply["error"]["message"].as_str().unwrap();
    let log = std::fs::read_to_string(sv.root.join("runtime/runtime.log")).unwrap_or_default();
    assert!(
        log.lines().any(|l| !l.trim().is_empty() && message.contains(l.trim())),
        "message {message:?} holds no line of the runtime log:\n{log}"
    );
    assert!(message.contains("invalid character"), "message {message:?} does not say why");

    // No event for the failed container: the barrier's `created` is the
    // first event after the subscription.
    sv.barrier();
    let first = all.next().expect("an event");
    assert_eq!(first["type"], "created", "{first}");
    assert!(first["id"].as_str().unwrap().starts_with("barrier-"), "event of the failed create: {first}");
    let reply = sv.request(json!({"op": "state", "id": &id}));
    assert_error(&reply, "not_found", &id);
    wait_for_children(&sv);
    assert!(!runc_knows(&sv.root, &id), "runc kept the failed container");
}

#[test]
fn create_of_an_existing_bundle_id_is_refused_also_while_creating() {
    let sv = Sv::start();
    let id = unique_id("oci-exists");
    let _runc = RuncGuard::new(&sv.root, &id);
    let b = bundle(&sv, "bexists", &["sleep", "1000"]);
    let request = json!({"op": "create", "id": &id, "bundle": path_str(&b), "runtime": "runc"});
    // Two at once: whichever comes second finds the first either still in
    // `runc create` or created; both must say "exists".
    let replies: Vec<Value> = std::thread::scope(|s| {
        let a = s.spawn(|| sv.client().request(request.clone()));
        let b = s.spawn(|| sv.client().request(request.clone()));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let ok: Vec<&Value> = replies.iter().filter(|r| r["ok"] == true).collect();
    assert_eq!(ok.len(), 1, "exactly one create succeeds: {replies:?}\n{}", sv.log());
    let refused = replies.iter().find(|r| r["ok"] != true).unwrap();
    assert_error(refused, "exists", &id);
    assert_eq!(ok[0]["status"], "created", "{}", ok[0]);

    // And once created, with a plain command as well as with a bundle.
    assert_error(&sv.request(request.clone()), "exists", &id);
    let reply = sv.request(json!({"op": "create", "id": &id, "argv": ["true"]}));
    assert_error(&reply, "exists", &id);
    // The refused creates did not disturb the first container.
    let state = sv.request(json!({"op": "state", "id": &id}));
    assert_eq!(state["state"]["status"], "created", "{state}");
    assert_eq!(state["state"]["pid"], ok[0]["pid"], "{state}");

    let mut sub = sv.subscribe(json!({"ids": [&id], "types": ["deleted"]}));
    let reply = sv.request(json!({"op": "delete", "id": &id, "force": true}));
    assert_eq!(reply["ok"], true, "delete --force: {reply}");
    expect_event(&mut sub, &id, "deleted");
    wait_for_children(&sv);
    assert_runc_forgot(&sv, &id);
}

// ---- id reuse ----

// `delete` of a bundle container answers (and emits `deleted`) only once the
// runtime's own delete has run, so the id can be reused at once.
#[test]
fn a_bundle_id_can_be_reused_after_delete() {
    let sv = Sv::start();
    let id = unique_id("oci-reuse");
    let _runc = RuncGuard::new(&sv.root, &id);
    let b = bundle(&sv, "breuse", &["sh", "-c", "exit 5"]);
    let mut sub = sv.subscribe(json!({"ids": [&id], "types": ["stopped"]}));
    for round in 0..10 {
        let reply = create_bundle(&sv, &id, &b, true);
        let stopped = expect_event(&mut sub, &id, "stopped");
        assert_eq!(stopped["instance"], reply["instance"], "round {round}: {stopped}");
        assert_eq!(stopped["status"], 5, "round {round}: {stopped}");
        // The next create follows the delete reply at once, while the
        // supervisor's `runc delete` of the old one may still run.
        let reply = sv.request(json!({"op": "delete", "id": &id}));
        assert_eq!(reply["ok"], true, "round {round}: delete: {reply}");
    }
    wait_for_children(&sv);
    assert_runc_forgot(&sv, &id);
}

// After a failed `runc create`, the error is answered only once the
// runtime's cleanup has run, so a retry of the same id cannot race it.
#[test]
fn a_bundle_id_can_be_reused_after_a_failed_create() {
    let sv = Sv::start();
    let id = unique_id("oci-refail");
    let _runc = RuncGuard::new(&sv.root, &id);
    let bad = bundle(&sv, "bbad", &["true"]);
    std::fs::write(bad.join("config.json"), "{not json\n").unwrap();
    let good = bundle(&sv, "bgood", &["sh", "-c", "exit 6"]);
    let mut sub = sv.subscribe(json!({"ids": [&id], "types": ["stopped"]}));
    for round in 0..10 {
        let reply = sv.request(json!({"op": "create", "id": &id, "bundle": path_str(&bad), "runtime": "runc"}));
        assert_error(&reply, "system", "exited with status");
        let reply = create_bundle(&sv, &id, &good, true);
        let stopped = expect_event(&mut sub, &id, "stopped");
        assert_eq!(stopped["instance"], reply["instance"], "round {round}: {stopped}");
        assert_eq!(stopped["status"], 6, "round {round}: {stopped}");
        let reply = sv.request(json!({"op": "delete", "id": &id}));
        assert_eq!(reply["ok"], true, "round {round}: delete: {reply}");
        wait_for_children(&sv);
    }
    assert_runc_forgot(&sv, &id);
}

// ---- shutdown ----

#[test]
fn sigterm_to_the_supervisor_kills_a_bundle_container_after_the_grace() {
    let mut sv = Sv::start();
    let id = unique_id("oci-shutdown");
    let _runc = RuncGuard::new(&sv.root, &id);
    let b = bundle(&sv, "bsleep", &["sleep", "1000"]);
    let mut sub = sv.subscribe(json!({"ids": [&id]}));
    let reply = create_bundle(&sv, &id, &b, true);
    let pid = reply["pid"].as_i64().unwrap() as i32;
    let state = sv.request(json!({"op": "state", "id": &id}));
    assert_eq!(state["state"]["pid"], pid, "{state}");
    let init = pidfd(pid).unwrap();
    expect_event(&mut sub, &id, "created");
    expect_event(&mut sub, &id, "started");

    // PID 1 of a PID namespace ignores SIGTERM without a handler: only the
    // SIGKILL after the grace ends it.
    assert_eq!(sv.stop_with(libc::SIGTERM), Some(0), "{}", sv.log());
    assert!(ready_now(&init), "container init {pid} outlived the supervisor");
    let stopped = expect_event(&mut sub, &id, "stopped");
    assert_eq!(stopped["signal"], "SIGKILL", "{stopped}");
    assert_eq!(stopped["status"], 137, "{stopped}");
    assert!(sub.at_eof(), "subscription not closed at exit");
    assert!(sv.log().contains("grace period over"), "{}", sv.log());
}

// Shutdown runs `runc delete` for bundle containers: otherwise runc's state
// stays in ROOT/runtime and its cgroups on the host, and a supervisor
// restarted on the same root cannot create that id again.
#[test]
fn shutdown_deletes_the_runtime_state_of_bundle_containers() {
    let mut sv = Sv::start();
    let id = unique_id("oci-shutdel");
    let _runc = RuncGuard::new(&sv.root, &id);
    let b = bundle(&sv, "bshut", &["sleep", "1000"]);
    let reply = create_bundle(&sv, &id, &b, true);
    let init = pidfd(reply["pid"].as_i64().unwrap() as i32).unwrap();
    assert_eq!(sv.request(json!({"op": "shutdown"}))["ok"], true);
    assert_eq!(sv.wait_exit(), Some(0), "{}", sv.log());
    assert!(ready_now(&init), "container init outlived the supervisor");
    let left_behind = runc_knows(&sv.root, &id);

    // The user-visible part: the same id on a new supervisor of this root.
    let (dir, root) = take_root_of_exited(sv);
    let sv = Sv::start_on(dir, root, &["--grace", "2s"], &[]);
    let _runc_again = RuncGuard::new(&sv.root, &id);
    let b = bundle(&sv, "bshut2", &["sh", "-c", "exit 9"]);
    let mut sub = sv.subscribe(json!({"ids": [&id], "types": ["stopped"]}));
    let reply =
        sv.request(json!({"op": "create", "id": &id, "bundle": path_str(&b), "runtime": "runc", "start": true}));
    assert_eq!(reply["ok"], true, "create {id} after a restart (runc state left behind: {left_behind}): {reply}");
    assert_eq!(expect_event(&mut sub, &id, "stopped")["status"], 9);
    assert!(!left_behind, "shutdown left runc's state of {id} in {}", sv.root.join("runtime").display());
}
