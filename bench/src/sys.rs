//! The system calls the benchmarks share: FIFOs and the supervisor's
//! control FIFO, a line reader that timestamps each line as it is read,
//! the shared page `bench-exit` stamps, posix_spawn, and /proc figures.

use std::collections::VecDeque;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::{self, FileType, Mode, OFlags};
use rustix::io::Errno;
use serde_json::Value;

use crate::time::now_ns;
use crate::Res;

/// How long anything may take before the benchmark gives up: only a
/// failure (a lost event, a dead supervisor) reaches it.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Creates a FIFO (mode 0600), replacing nothing: the scratch directories
/// are fresh.
pub fn mkfifo(path: &Path) -> Res<()> {
    fs::mknodat(fs::CWD, path, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
        .map_err(|e| format!("mkfifo {}: {e}", path.display()))
}

/// Opens a FIFO's read end without blocking (no writer yet).
pub fn open_reader(path: &Path) -> Res<OwnedFd> {
    fs::open(path, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| format!("open {} for reading: {e}", path.display()))
}

/// Opens a FIFO read-write: a reader that never sees end-of-file, because
/// it is a writer too (for reply FIFOs and the `go` FIFO).
pub fn open_rdwr(path: &Path) -> Res<OwnedFd> {
    fs::open(path, OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| format!("open {} read-write: {e}", path.display()))
}

/// Opens a FIFO's write end without blocking; it must have a reader.
pub fn open_writer(path: &Path) -> Res<OwnedFd> {
    fs::open(path, OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| format!("open {} for writing: {e}", path.display()))
}

/// Clears O_NONBLOCK on an fd.
pub fn set_blocking(fd: &OwnedFd, what: &str) -> Res<()> {
    let flags = fs::fcntl_getfl(fd).map_err(|e| format!("fcntl {what}: {e}"))?;
    fs::fcntl_setfl(fd, flags - OFlags::NONBLOCK).map_err(|e| format!("fcntl {what}: {e}"))
}

/// Writes all of `bytes`, waiting for room when the fd is non-blocking.
pub fn write_all(fd: impl AsFd, mut bytes: &[u8], what: &str) -> Res<()> {
    let fd = fd.as_fd();
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
                let _ = poll(&mut fds, None);
            }
            Err(e) => return Err(format!("write {what}: {e}")),
        }
    }
    Ok(())
}

/// The supervisor's control FIFO, open for writing (blocking, so a full
/// pipe makes the benchmark wait instead of dropping a request).
pub struct Ctl {
    fd: OwnedFd,
}

impl Ctl {
    /// Waits until the supervisor (`pid`) reads `ROOT/ctl`: an O_NONBLOCK
    /// open for writing fails with ENXIO until then (fifo(7)).
    pub fn connect(root: &Path, pid: i32) -> Res<Ctl> {
        let path = root.join("ctl");
        let deadline = Instant::now() + DEADLINE;
        loop {
            match fs::open(&path, OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty()) {
                Ok(fd) => {
                    set_blocking(&fd, "ctl")?;
                    return Ok(Ctl { fd });
                }
                Err(Errno::NXIO) | Err(Errno::NOENT) => {}
                Err(e) => return Err(format!("open {}: {e}", path.display())),
            }
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return Err(format!("the supervisor (pid {pid}) exited before it opened {}", path.display()));
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not accept a writer within {DEADLINE:?}", path.display()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Sends one request line (a JSON object).
    pub fn send(&self, request: &Value) -> Res<()> {
        let mut line = serde_json::to_vec(request).expect("a request serializes");
        line.push(b'\n');
        self.send_raw(&line)
    }

    /// Sends bytes that are already one or more request lines.
    pub fn send_raw(&self, lines: &[u8]) -> Res<()> {
        write_all(&self.fd, lines, "ctl")
    }
}

/// Reads lines from a FIFO and stamps each with the CLOCK_MONOTONIC time
/// of the read(2) that completed it. It polls before reading: read(2) of a
/// FIFO that no writer has opened yet returns 0 at once, poll(2) waits.
pub struct Lines {
    fd: OwnedFd,
    what: String,
    partial: Vec<u8>,
    ready: VecDeque<(Vec<u8>, u64)>,
}

impl Lines {
    /// A reader of `fd`; `what` names it in errors.
    pub fn new(fd: OwnedFd, what: impl Into<String>) -> Lines {
        Lines { fd, what: what.into(), partial: Vec::new(), ready: VecDeque::new() }
    }

    /// The next line (without its newline) and when it was read. Fails on
    /// end-of-file (the writer went away) or after [`DEADLINE`].
    pub fn next_line(&mut self) -> Res<(Vec<u8>, u64)> {
        let deadline = Instant::now() + DEADLINE;
        let mut buf = [0u8; 16 * 1024];
        while self.ready.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("{}: nothing arrived within {DEADLINE:?}", self.what));
            }
            let timeout = Timespec { tv_sec: left.as_secs() as i64, tv_nsec: i64::from(left.subsec_nanos()) };
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(format!("poll {}: {e}", self.what)),
            }
            let n = match rustix::io::read(&self.fd, &mut buf) {
                Ok(0) => return Err(format!("{}: end of file (the writer went away)", self.what)),
                Ok(n) => n,
                Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
                Err(e) => return Err(format!("read {}: {e}", self.what)),
            };
            let at = now_ns();
            self.partial.extend_from_slice(&buf[..n]);
            while let Some(pos) = self.partial.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.partial.drain(..=pos).collect();
                line.pop();
                self.ready.push_back((line, at));
            }
        }
        Ok(self.ready.pop_front().expect("not empty"))
    }
}

/// A string field of an event line (`"type":"stopped"` gives `stopped`).
/// Event lines are compact JSON written by serde or `bench-mini`, so a scan
/// is enough and keeps the reader cheap on both sides.
pub fn field<'a>(line: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let key = format!("\"{name}\":\"");
    let start = line.windows(key.len()).position(|w| w == key.as_bytes())? + key.len();
    let len = line[start..].iter().position(|b| *b == b'"')?;
    Some(&line[start..start + len])
}

/// A number field of an event line (`"status":0` gives 0).
pub fn number_field(line: &[u8], name: &str) -> Option<i64> {
    let key = format!("\"{name}\":");
    let start = line.windows(key.len()).position(|w| w == key.as_bytes())? + key.len();
    let len = line[start..].iter().take_while(|b| b.is_ascii_digit() || **b == b'-').count();
    std::str::from_utf8(&line[start..start + len]).ok()?.parse().ok()
}

/// A reply FIFO of the benchmark's: requests carry its path, and each reply
/// is one line read from it.
pub struct Reply {
    path: String,
    lines: Lines,
}

impl Reply {
    /// Creates the FIFO at `path` and opens it read-write.
    pub fn create(path: &Path) -> Res<Reply> {
        mkfifo(path)?;
        let fd = open_rdwr(path)?;
        Ok(Reply { path: path.to_string_lossy().into_owned(), lines: Lines::new(fd, "reply fifo") })
    }

    /// The path to put in `"reply"`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The next reply, parsed; an error when it is `{"ok":false}`.
    pub fn read(&mut self) -> Res<Value> {
        let (line, _) = self.lines.next_line()?;
        let value: Value =
            serde_json::from_slice(&line).map_err(|e| format!("reply {:?}: {e}", String::from_utf8_lossy(&line)))?;
        if value["ok"] != true {
            return Err(format!("the supervisor answered {value}"));
        }
        Ok(value)
    }

    /// Sends `request` with this FIFO as its reply path and waits for the
    /// answer.
    pub fn request(&mut self, ctl: &Ctl, mut request: Value) -> Res<Value> {
        request["reply"] = self.path.clone().into();
        ctl.send(&request)?;
        self.read()
    }
}

/// An array of u64 slots in a file mapped shared: `bench-exit` stores its
/// CLOCK_MONOTONIC stamp in its slot just before `_exit`, and the benchmark
/// reads it after the event arrived. A store to a shared page adds nothing
/// to the exit path being timed (a write(2) after the stamp would).
pub struct Stamps {
    ptr: *mut u64,
    slots: usize,
    _file: File,
}

impl Stamps {
    /// Creates the file at `path` with `slots` zeroed slots and maps it.
    pub fn create(path: &Path, slots: usize) -> Res<Stamps> {
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| format!("create {}: {e}", path.display()))?;
        let len = (slots.max(1) * 8) as u64;
        file.set_len(len).map_err(|e| format!("size {}: {e}", path.display()))?;
        // SAFETY: a fresh shared mapping of a file we own, of its full
        // length; nothing else in this process aliases it.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len as usize,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &file,
                0,
            )
        }
        .map_err(|e| format!("mmap {}: {e}", path.display()))?;
        Ok(Stamps { ptr: ptr.cast(), slots: slots.max(1), _file: file })
    }

    /// Zeroes a slot before its child runs.
    pub fn clear(&self, slot: usize) {
        assert!(slot < self.slots);
        // SAFETY: in bounds (checked) and 8-aligned (a page-aligned mapping).
        unsafe { self.ptr.add(slot).write_volatile(0) }
    }

    /// The stamp in a slot (0: not written). The child's store happened
    /// before its exit, which happened before the event we read, and the
    /// system calls in between order the memory accesses.
    pub fn get(&self, slot: usize) -> u64 {
        assert!(slot < self.slots);
        // SAFETY: in bounds (checked) and aligned; the other writer is a
        // process that has exited.
        unsafe { self.ptr.add(slot).read_volatile() }
    }
}

impl Drop for Stamps {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `create`, not used after this.
        unsafe {
            let _ = rustix::mm::munmap(self.ptr.cast(), self.slots * 8);
        }
    }
}

/// A command line and environment prepared once for posix_spawn(3).
pub struct Spawner {
    argv: Vec<CString>,
    envp: Vec<CString>,
}

impl Spawner {
    /// Prepares `argv`; the environment is this process's.
    pub fn new<S: AsRef<OsStr>>(argv: &[S]) -> Res<Spawner> {
        let argv = argv
            .iter()
            .map(|a| CString::new(a.as_ref().as_bytes()).map_err(|_| "argv contains a NUL byte".to_string()))
            .collect::<Res<Vec<_>>>()?;
        if argv.is_empty() {
            return Err("empty argv".into());
        }
        let envp = std::env::vars_os()
            .filter_map(|(k, v)| {
                let mut pair = k.as_bytes().to_vec();
                pair.push(b'=');
                pair.extend_from_slice(v.as_bytes());
                CString::new(pair).ok()
            })
            .collect();
        Ok(Spawner { argv, envp })
    }

    /// posix_spawn(3)s the command with `extra` arguments appended, `stdin`
    /// (if any) as its fd 0 and default signal dispositions; returns its PID.
    pub fn spawn(&self, extra: &[&CString], stdin: Option<RawFd>) -> Res<libc::pid_t> {
        let mut argv: Vec<*mut libc::c_char> = self.argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
        argv.extend(extra.iter().map(|a| a.as_ptr().cast_mut()));
        argv.push(std::ptr::null_mut());
        let mut envp: Vec<*mut libc::c_char> = self.envp.iter().map(|e| e.as_ptr().cast_mut()).collect();
        envp.push(std::ptr::null_mut());
        let mut pid: libc::pid_t = 0;
        // SAFETY: the attribute and file-action objects are initialized
        // before use and destroyed after; argv and envp are NULL-terminated
        // arrays of pointers into CStrings that outlive the call.
        let rc = unsafe {
            let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
            let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
            libc::posix_spawn_file_actions_init(&mut actions);
            libc::posix_spawnattr_init(&mut attr);
            // Rust ignores SIGPIPE; a child should start with the default,
            // as pidvisor's containers do.
            let mut sigdefault: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut sigdefault);
            libc::sigaddset(&mut sigdefault, libc::SIGPIPE);
            libc::posix_spawnattr_setsigdefault(&mut attr, &sigdefault);
            libc::posix_spawnattr_setflags(&mut attr, libc::POSIX_SPAWN_SETSIGDEF as libc::c_short);
            if let Some(fd) = stdin {
                libc::posix_spawn_file_actions_adddup2(&mut actions, fd, 0);
            }
            let rc = libc::posix_spawn(&mut pid, self.argv[0].as_ptr(), &actions, &attr, argv.as_ptr(), envp.as_ptr());
            libc::posix_spawn_file_actions_destroy(&mut actions);
            libc::posix_spawnattr_destroy(&mut attr);
            rc
        };
        if rc != 0 {
            return Err(format!(
                "posix_spawn {}: {}",
                self.argv[0].to_string_lossy(),
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        Ok(pid)
    }
}

/// A pidfd for our own unreaped child (its PID cannot be reused yet).
pub fn pidfd(pid: libc::pid_t) -> Res<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid).ok_or("pid 0")?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).map_err(|e| format!("pidfd_open: {e}"))
}

/// Reaps a child through its pidfd (it has exited: the pidfd polled
/// readable) and returns its shell-style status.
pub fn reap(pidfd: &OwnedFd) -> Res<i32> {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    loop {
        return match waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED) {
            Ok(Some(status)) => Ok(match status.terminating_signal() {
                Some(sig) => 128 + sig,
                None => status.exit_status().unwrap_or(0),
            }),
            Ok(None) => Err("waitid: no status".into()),
            Err(Errno::INTR) => continue,
            Err(e) => Err(format!("waitid: {e}")),
        };
    }
}

/// What /proc says about a process: resident memory and context switches.
#[derive(Debug, Clone, Copy)]
pub struct ProcStatus {
    /// VmRSS in KiB.
    pub rss_kib: u64,
    /// Voluntary plus involuntary context switches of all its threads.
    pub switches: u64,
}

/// Reads /proc/PID/status (and each thread's, for the switches).
pub fn proc_status(pid: i32) -> Res<ProcStatus> {
    let read = |path: String| std::fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"));
    let value = |text: &str, key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let status = read(format!("/proc/{pid}/status"))?;
    let rss_kib = value(&status, "VmRSS:");
    let mut switches = 0;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| format!("read /proc/{pid}/task: {e}"))?;
    for task in tasks.flatten() {
        let text = read(format!("{}/status", task.path().display()))?;
        switches += value(&text, "voluntary_ctxt_switches:") + value(&text, "nonvoluntary_ctxt_switches:");
    }
    Ok(ProcStatus { rss_kib, switches })
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new limit.
pub fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out- and in-pointers to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}
