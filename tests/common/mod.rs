//! The integration-test harness: a supervisor of the real binary on a root
//! of its own, a FIFO client, subscriptions, and /proc helpers. Every wait
//! blocks on something (a FIFO, a pidfd) with a deadline that only fires on
//! failure, and the guard kills every process the test started, even when
//! it panics.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::{FileType, Mode, OFlags};
use serde_json::{json, Value};

/// The deadline for anything a test waits for. Only a failure reaches it.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The pidvisor binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pidvisor")
}

/// A fresh directory under the temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "pidvisor-test-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A hook run between fork and exec of a supervisor.
type PreExec = Box<dyn FnMut() -> std::io::Result<()> + Send + Sync>;

/// A running supervisor on its own root. Dropping it kills the supervisor
/// and every process below it.
pub struct Sv {
    pub child: Option<Child>,
    pub pid: i32,
    pub root: PathBuf,
    pub dir: TempDir,
}

impl Sv {
    /// Starts `pidvisor supervise` with a 2 s grace and waits for READY=1.
    pub fn start() -> Sv {
        Sv::start_with(&["--grace", "2s"], &[])
    }

    /// Starts a supervisor with extra `supervise` arguments and, after `--`,
    /// an init command; waits for READY=1.
    pub fn start_with(args: &[&str], init: &[&str]) -> Sv {
        let dir = TempDir::new("sv");
        let root = dir.0.join("root");
        Sv::start_on(dir, root, args, init)
    }

    /// Starts a supervisor on a given root (kept in `dir`).
    pub fn start_on(dir: TempDir, root: PathBuf, args: &[&str], init: &[&str]) -> Sv {
        Sv::launch(dir, root, args, init, None)
    }

    /// Starts a supervisor whose signal mask blocks `blocked` when it
    /// starts, as a careless parent may leave it.
    pub fn start_masked(blocked: &[i32]) -> Sv {
        let blocked = blocked.to_vec();
        Sv::start_prepared(move || {
            // SAFETY: async-signal-safe calls on a set of our own.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                for &sig in &blocked {
                    libc::sigaddset(&mut set, sig);
                }
                libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            }
            Ok(())
        })
    }

    /// Starts a supervisor after running `prepare` in its process between
    /// fork and exec (only async-signal-safe calls belong there).
    pub fn start_prepared(prepare: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static) -> Sv {
        let dir = TempDir::new("sv");
        let root = dir.0.join("root");
        Sv::launch(dir, root, &["--grace", "2s"], &[], Some(Box::new(prepare)))
    }

    fn launch(dir: TempDir, root: PathBuf, args: &[&str], init: &[&str], prepare: Option<PreExec>) -> Sv {
        let socket_path = dir.0.join(format!("notify-{}", rand_suffix()));
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        let log = File::create(dir.0.join("supervisor.log")).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("--root").arg(&root).arg("supervise").arg("--notify").args(args);
        if !init.is_empty() {
            cmd.arg("--").args(init);
        }
        if let Some(prepare) = prepare {
            // SAFETY: the hook's contract (see start_prepared).
            unsafe { std::os::unix::process::CommandExt::pre_exec(&mut cmd, prepare) };
        }
        cmd.env("NOTIFY_SOCKET", &socket_path)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().unwrap();
        let pid = child.id() as i32;
        let sv = Sv { child: Some(child), pid, root, dir };
        let fd: OwnedFd = socket.as_fd().try_clone_to_owned().unwrap();
        let pidfd = pidfd(pid).unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            match wait_any(&[&fd, &pidfd], deadline) {
                Some(0) => {
                    let mut buf = [0u8; 128];
                    let n = socket.recv(&mut buf).unwrap();
                    if buf[..n].starts_with(b"READY=1") {
                        break;
                    }
                }
                Some(_) => panic!("supervisor exited before READY=1:\n{}", sv.log()),
                None => panic!("supervisor not ready within the deadline:\n{}", sv.log()),
            }
        }
        sv
    }

    /// The supervisor's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("supervisor.log")).unwrap_or_default()
    }

    /// Runs the CLI on this root with a deadline.
    pub fn cli(&self, args: &[&str]) -> Output {
        run_with_deadline(Command::new(bin()).arg("--root").arg(&self.root).args(args))
    }

    /// A client of this root.
    pub fn client(&self) -> FifoClient {
        FifoClient { root: self.root.clone(), dir: self.dir.0.clone() }
    }

    /// Sends a request with a reply FIFO and returns the reply.
    pub fn request(&self, req: Value) -> Value {
        self.client().request(req)
    }

    /// Subscribes and returns the subscription.
    pub fn subscribe(&self, fields: Value) -> Sub {
        self.client().subscribe(fields)
    }

    /// Creates and starts a container, waits for its `stopped`, returns it.
    pub fn run_to_stop(&self, id: &str, argv: &[&str]) -> Value {
        let mut sub = self.subscribe(json!({"ids": [id], "types": ["stopped"]}));
        let reply = self.request(json!({"op": "create", "id": id, "argv": argv, "start": true}));
        let instance = reply["instance"].as_u64();
        loop {
            let ev = sub.next().expect("stopped event");
            if ev["id"] == id && (instance.is_none() || ev["instance"].as_u64() == instance) {
                return ev;
            }
        }
    }

    /// A barrier: once it returns, every child of the supervisor that had
    /// exited before the call has been reaped (the supervisor reaps every
    /// zombie when it reaps a container).
    pub fn barrier(&self) {
        let id = format!("barrier-{}", rand_suffix());
        let ev = self.run_to_stop(&id, &["true"]);
        assert_eq!(ev["status"], 0);
        self.request(json!({"op": "delete", "id": id}));
    }

    /// Processes below the supervisor (not itself).
    pub fn descendants(&self) -> Vec<i32> {
        descendants(self.pid)
    }

    /// Zombies below the supervisor.
    pub fn zombies(&self) -> Vec<i32> {
        self.descendants().into_iter().filter(|p| is_zombie(*p)).collect()
    }

    /// Sends a signal to the supervisor and waits for it to exit; returns
    /// its exit code.
    pub fn stop_with(&mut self, signal: i32) -> Option<i32> {
        let mut child = self.child.take().expect("still running");
        unsafe { libc::kill(self.pid, signal) };
        wait_child(&mut child)
    }

    /// Waits for the supervisor to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take().expect("still running");
        wait_child(&mut child)
    }
}

impl Drop for Sv {
    fn drop(&mut self) {
        // Once reaped (stop_with, wait_exit), the PID may be someone else's.
        if self.child.is_some() {
            kill_tree(self.pid);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Kills every descendant of `pid` (repeating while new ones appear, since
/// orphans reparent to the subreaper `pid`), then `pid` itself.
pub fn kill_tree(pid: i32) {
    for _ in 0..100 {
        let below = descendants(pid);
        if below.is_empty() {
            break;
        }
        for p in below {
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// Waits for a child with the deadline; its exit code, or 128+signal.
pub fn wait_child(child: &mut Child) -> Option<i32> {
    let fd = pidfd(child.id() as i32).ok()?;
    if wait_any(&[&fd], Instant::now() + DEADLINE).is_none() {
        let _ = child.kill();
        panic!("process {} did not exit within the deadline", child.id());
    }
    let status = child.wait().ok()?;
    use std::os::unix::process::ExitStatusExt;
    status.code().or_else(|| status.signal().map(|s| 128 + s))
}

/// Runs a command to completion, killing it if it outlives the deadline.
pub fn run_with_deadline(cmd: &mut Command) -> Output {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let fd = pidfd(child.id() as i32).unwrap();
    if wait_any(&[&fd], Instant::now() + DEADLINE).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not finish within the deadline");
    }
    let status = child.wait().unwrap();
    Output { status, stdout: out_thread.join().unwrap(), stderr: err_thread.join().unwrap() }
}

/// A pidfd for any process.
pub fn pidfd(pid: i32) -> rustix::io::Result<OwnedFd> {
    rustix::process::pidfd_open(rustix::process::Pid::from_raw(pid).unwrap(), rustix::process::PidfdFlags::empty())
}

/// Whether `fd` polls readable (or ended) right now, without waiting.
pub fn ready_now(fd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
    poll(&mut fds, Some(&zero)).unwrap_or(0) > 0
}

/// Blocks until a process has exited (it may still be an unreaped zombie).
pub fn wait_exited(pid: i32) {
    if let Ok(fd) = pidfd(pid) {
        assert!(wait_any(&[&fd], Instant::now() + DEADLINE).is_some(), "pid {pid} did not exit");
    }
}

/// Polls the fds for input until `deadline`; the index of the first ready.
pub fn wait_any(fds: &[&OwnedFd], deadline: Instant) -> Option<usize> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut pfds: Vec<PollFd> = fds.iter().map(|fd| PollFd::new(*fd, PollFlags::IN)).collect();
        let ts = Timespec { tv_sec: left.as_secs() as i64, tv_nsec: left.subsec_nanos() as i64 };
        match poll(&mut pfds, Some(&ts)) {
            Ok(0) => return None,
            Ok(_) => return pfds.iter().position(|p| !p.revents().is_empty()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("poll: {e}"),
        }
    }
}

fn rand_suffix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A FIFO client written apart from the CLI, as a third-party client would.
pub struct FifoClient {
    pub root: PathBuf,
    pub dir: PathBuf,
}

/// Makes a FIFO at `path` and opens its read end without blocking.
pub fn fifo_reader(path: &Path) -> OwnedFd {
    let _ = std::fs::remove_file(path);
    rustix::fs::mknodat(rustix::fs::CWD, path, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
    rustix::fs::open(path, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty()).unwrap()
}

impl FifoClient {
    /// Writes a raw line (with the newline added) to ctl.
    pub fn send_raw(&self, line: &[u8]) {
        let mut f = std::fs::OpenOptions::new().write(true).open(self.root.join("ctl")).unwrap();
        let mut bytes = line.to_vec();
        bytes.push(b'\n');
        f.write_all(&bytes).unwrap();
    }

    /// Sends `req` with a reply FIFO and returns the one reply line.
    pub fn request(&self, mut req: Value) -> Value {
        let path = self.dir.join(format!("reply-{}", rand_suffix()));
        let fd = fifo_reader(&path);
        req["reply"] = path.to_str().unwrap().into();
        self.send_raw(&serde_json::to_vec(&req).unwrap());
        let mut sub = Sub { fd, buf: Vec::new(), path: path.clone() };
        let line = sub.next_line(Instant::now() + DEADLINE).unwrap_or_else(|| panic!("no reply to {req}"));
        serde_json::from_str(&line).unwrap()
    }

    /// Subscribes; asserts the reply is ok.
    pub fn subscribe(&self, mut fields: Value) -> Sub {
        let path = self.dir.join(format!("events-{}", rand_suffix()));
        let fd = fifo_reader(&path);
        fields["op"] = "subscribe".into();
        fields["path"] = path.to_str().unwrap().into();
        let reply = self.request(fields);
        assert_eq!(reply["ok"], true, "subscribe failed: {reply}");
        Sub { fd, buf: Vec::new(), path }
    }
}

/// The read end of a subscriber (or reply) FIFO.
pub struct Sub {
    pub fd: OwnedFd,
    buf: Vec<u8>,
    pub path: PathBuf,
}

impl Sub {
    /// The next line, or None at end-of-file or the deadline.
    pub fn next_line(&mut self, deadline: Instant) -> Option<String> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(String::from_utf8(line[..line.len() - 1].to_vec()).unwrap());
            }
            // Poll first: read(2) on a FIFO no writer has opened returns 0.
            wait_any(&[&self.fd], deadline)?;
            let mut chunk = [0u8; 65536];
            match rustix::io::read(&self.fd, &mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => panic!("read {}: {e}", self.path.display()),
            }
        }
    }

    /// The next event, or None at end-of-file; panics at the deadline.
    pub fn next(&mut self) -> Option<Value> {
        self.next_before(Instant::now() + DEADLINE)
    }

    /// The next event before `deadline`, or None (end-of-file or deadline).
    pub fn next_before(&mut self, deadline: Instant) -> Option<Value> {
        self.next_line(deadline).map(|l| serde_json::from_str(&l).unwrap())
    }

    /// Whether the supervisor has closed its end (EOF), waiting up to the deadline.
    pub fn at_eof(&mut self) -> bool {
        self.next_line(Instant::now() + DEADLINE).is_none()
    }
}

/// The processes below `pid`, from a scan of /proc.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if let Some(pp) = ppid(p) {
            parent_of.push((p, pp));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (p, pp) in &parent_of {
            if *pp == parent && !out.contains(p) {
                out.push(*p);
                frontier.push(*p);
            }
        }
    }
    out
}

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(String::from).collect())
}

/// The parent PID of a process.
pub fn ppid(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Whether a process is a zombie.
pub fn is_zombie(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|f| f[0] == "Z")
}

/// The fds a process has open.
pub fn open_fds(pid: i32) -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    fds.sort();
    fds
}

impl Sub {
    /// Reads lines from any fd: a pipe, or a FIFO opened with
    /// [`fifo_reader`] (a container's stdout, a readiness signal).
    pub fn from_fd(fd: OwnedFd, path: &Path) -> Sub {
        Sub { fd, buf: Vec::new(), path: path.to_path_buf() }
    }
}

/// The directory and root of a supervisor that has exited (after
/// `stop_with` or `wait_exit`), for a new `Sv::start_on` on the same root.
/// The old guard is forgotten, not dropped: its PID is gone and may be reused.
pub fn take_root_of_exited(sv: Sv) -> (TempDir, PathBuf) {
    assert!(sv.child.is_none(), "the supervisor is still running");
    let mut sv = std::mem::ManuallyDrop::new(sv);
    let dir = std::mem::replace(&mut sv.dir, TempDir(PathBuf::new()));
    (dir, std::mem::take(&mut sv.root))
}
pub mod oci;

impl Sub {
    /// The next line if one is buffered or readable right now; never waits
    /// (a zero-timeout poll, so a FIFO no writer has opened yet is empty).
    pub fn line_now(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(String::from_utf8(line[..line.len() - 1].to_vec()).unwrap());
            }
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 })) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => panic!("poll {}: {e}", self.path.display()),
            }
            let mut chunk = [0u8; 65536];
            match rustix::io::read(&self.fd, &mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(rustix::io::Errno::AGAIN) => return None,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => panic!("read {}: {e}", self.path.display()),
            }
        }
    }
}
