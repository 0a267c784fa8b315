//! Spawning container processes, split in two like the OCI lifecycle:
//! [`spawn`] clones a child that sets itself up — its own session, cwd,
//! stdio, default signal dispositions, an empty signal mask, no fds but 0-2 —
//! and then blocks reading its *start pipe*; [`release`] writes the byte that
//! lets it exec (for `"start": true` there is no start pipe: the child goes
//! straight on). A second, close-on-exec *status pipe* tells the supervisor how exec
//! went: a "released" byte, then end-of-file when execve succeeded (the
//! kernel closed the pipe) or eight bytes with the stage and errno of a
//! failure; end-of-file without the released byte means the process died
//! before it was started.
//!
//! Why clone from the supervisor, and how: the create/start split needs a
//! child that waits between setup and exec, which rules out posix_spawn and
//! vfork; a stub binary would cost a second exec per container (about 2x a
//! raw posix_spawn loop). A plain fork cost about 1.2x on a quiet machine but
//! 2x and more here, because every page the supervisor writes after fork
//! takes a copy-on-write fault while the child lives. So the child is cloned
//! with `CLONE_VM` and no `CLONE_VFORK`: it shares the supervisor's memory on
//! a stack of its own and may wait as long as it likes. The price is strict:
//! it may write no memory but its stack, so everything it needs — argv, envp,
//! the PATH candidates, the cwd and stdio fds — is prepared here, kept alive
//! in [`ChildMemory`] until it has exec'd, and it makes raw system calls that
//! do not even store errno.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::rc::Rc;

use rustix::fs::{self, Mode, OFlags};
use rustix::io::Errno;
use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::Pid;

use crate::error::{Error, ErrorKind, Result};
use crate::protocol::CreateRequest;

/// The PATH searched when the container's environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Stage codes the child sends on the status pipe with the errno.
const STAGE_EXEC: u32 = 0;
const STAGE_SETUP: u32 = 1;

/// Exit code of a child whose setup failed before exec (pidvisor's own
/// failure, as DESIGN.md's 125).
pub const SETUP_FAILED: i32 = 125;

/// One of the container's standard streams.
pub enum Stdio {
    /// Keep the supervisor's own fd.
    Inherit,
    /// Use this fd (dup'd onto 0, 1 or 2 in the child).
    Fd(OwnedFd),
    /// Use this fd of the supervisor's, which outlives every child (its
    /// /dev/null): no copy is made for the plan.
    Shared(RawFd),
    /// The child opens this FIFO for reading itself (blocking until a
    /// writer comes, as a shell's `< fifo` does).
    OpenFifo(CString),
}

/// Everything the child needs, prepared before clone so that the child does
/// no allocation.
pub struct Plan {
    argv: Vec<CString>,
    env: Rc<Environment>,
    /// The paths execve is tried on, in order (PATH search done here).
    candidates: Vec<CString>,
    cwd: Option<OwnedFd>,
    stdio: [Stdio; 3],
    /// The RLIMIT_NOFILE the supervisor started with, restored in the child.
    nofile: Option<libc::rlimit>,
    /// Signals whose disposition the child resets (see [`Inherited`]).
    reset_signals: u64,
}

/// A cloned child waiting for its start byte.
pub struct Spawned {
    /// Its PID (a child of ours, so not reusable until we reap it).
    pub pid: Pid,
    /// A pidfd for it: the exit status is read through this.
    pub pidfd: OwnedFd,
    /// The write end of its start pipe; [`release`] consumes it. None when
    /// it was spawned to start at once.
    pub start: Option<OwnedFd>,
    /// The read end of its status pipe (non-blocking).
    pub status: OwnedFd,
    /// What the child reads until it execs: keep it until then.
    pub memory: Box<ChildMemory>,
}

/// How exec went, as read from the status pipe.
#[derive(Debug, PartialEq, Eq)]
pub enum ExecOutcome {
    /// Nothing decided yet: the pipe is still open.
    Pending,
    /// execve succeeded.
    Started,
    /// execve failed with this errno: exit code 127 or 126.
    ExecFailed(i32),
    /// Setup before exec failed with this errno: exit code 125.
    SetupFailed(i32),
    /// The process died before it read its start byte (killed before start).
    NeverStarted,
}

/// The byte the child writes once it has read its start byte, so that a
/// death before start (end-of-file without it) is not taken for an exec.
const RELEASED: u8 = b'R';

/// The exit code a shell gives an exec failure: 127 for a missing file, 126
/// for one that cannot be executed (EACCES, ENOEXEC, ...).
pub fn exec_exit_code(errno: i32) -> i32 {
    if errno == libc::ENOENT || errno == libc::ENOTDIR {
        127
    } else {
        126
    }
}

/// A container's environment as execve takes it: the `NAME=value`
/// strings and the null-terminated array of pointers to them.
pub struct Environment {
    /// What `pointers` point into.
    _strings: Vec<CString>,
    pointers: Vec<*const libc::c_char>,
    /// Its PATH, for the search of argv[0].
    path: Option<OsString>,
}

impl Environment {
    /// Checks the names and builds the strings execve takes.
    fn new<'a>(pairs: impl Iterator<Item = (&'a OsStr, &'a OsStr)>) -> Result<Environment> {
        let mut strings = Vec::new();
        let mut path = None;
        for (key, value) in pairs {
            let key = key.as_bytes();
            if key.is_empty() || key.contains(&b'=') {
                return Err(Error::new(
                    ErrorKind::BadRequest,
                    format!("invalid environment name {:?}", String::from_utf8_lossy(key)),
                ));
            }
            if key == b"PATH" {
                path = Some(value.to_os_string());
            }
            let mut pair = key.to_vec();
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            strings.push(cstring(&pair, "env")?);
        }
        // The strings' bytes stay where they are when the Vec moves.
        let mut pointers: Vec<*const libc::c_char> = strings.iter().map(|e| e.as_ptr()).collect();
        pointers.push(std::ptr::null());
        Ok(Environment { _strings: strings, pointers, path })
    }
}

/// What a container process gets from the supervisor unless its request
/// says otherwise, captured once when the supervisor starts.
pub struct Inherited {
    /// The environment when a request names none, built once: most
    /// requests of a service manager or a benchmark name none.
    env: Rc<Environment>,
    /// The RLIMIT_NOFILE the supervisor was started with (it raises its own).
    pub nofile: Option<libc::rlimit>,
    /// A bit (1 << (signal - 1)) per signal whose disposition is not the
    /// default: the ones the child must reset. Resetting only these spares
    /// every container process some 60 system calls.
    reset_signals: u64,
}

impl Inherited {
    /// Captures the environment and the signal dispositions. Call it after
    /// the supervisor has installed every signal handler it will have: a
    /// handler installed later would not be reset, and a child waiting for
    /// `start` could run it.
    pub fn capture(nofile: Option<libc::rlimit>) -> Inherited {
        let mut reset_signals = 0u64;
        for sig in 1..=crate::signals::MAX_SIGNAL {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
            // SAFETY: reads the kernel's disposition into `old` (the raw call:
            // glibc's sigaction(3) hides signals 32 and 33).
            let rc = unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, std::ptr::null::<u8>(), &mut old, 8) };
            // Unknown (it cannot be read): reset it to be sure.
            if rc != 0 || old.handler != libc::SIG_DFL {
                reset_signals |= 1 << (sig - 1);
            }
        }
        // The supervisor's own environment: names with '=' or empty ones
        // cannot be passed on, and are left out.
        let vars: Vec<(OsString, OsString)> =
            std::env::vars_os().filter(|(k, _)| !k.is_empty() && !k.as_bytes().contains(&b'=')).collect();
        let env = Environment::new(vars.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str())))
            .expect("names filtered, and an environment holds no NUL");
        Inherited { env: Rc::new(env), nofile, reset_signals }
    }
}

impl Plan {
    /// Turns a create request into a plan: checks argv, env and cwd, and
    /// resolves argv[0] against the PATH of the container's environment.
    pub fn new(req: &CreateRequest, stdio: [Stdio; 3], inherited: &Inherited) -> Result<Plan> {
        if req.argv.is_empty() || req.argv[0].is_empty() {
            return Err(Error::new(ErrorKind::BadRequest, "argv must name a command"));
        }
        let argv = req.argv.iter().map(|a| cstring(a.as_bytes(), "argv")).collect::<Result<Vec<_>>>()?;
        let env = match &req.env {
            Some(map) => Rc::new(Environment::new(map.iter().map(|(k, v)| (OsStr::new(k), OsStr::new(v))))?),
            None => inherited.env.clone(),
        };
        let candidates = search_path(&req.argv[0], env.path.as_deref().unwrap_or(OsStr::new(DEFAULT_PATH)))?;
        let cwd = match &req.cwd {
            None => None,
            Some(dir) if !dir.starts_with('/') => {
                return Err(Error::new(ErrorKind::BadRequest, format!("cwd {dir:?}: not an absolute path")))
            }
            Some(dir) => Some(
                fs::open(dir.as_str(), OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                    .map_err(|e| Error::os(ErrorKind::BadPath, format!("cwd {dir}"), e))?,
            ),
        };
        Ok(Plan { argv, env, candidates, cwd, stdio, nofile: inherited.nofile, reset_signals: inherited.reset_signals })
    }
}

fn cstring(bytes: &[u8], what: &str) -> Result<CString> {
    CString::new(bytes).map_err(|_| Error::new(ErrorKind::BadRequest, format!("{what} contains a NUL byte")))
}

/// The paths to try for argv[0], as execvp(3) does: argv[0] itself when it
/// has a slash, else each PATH entry (an empty entry is the cwd).
fn search_path(program: &str, path: &OsStr) -> Result<Vec<CString>> {
    if program.contains('/') {
        return Ok(vec![cstring(program.as_bytes(), "argv")?]);
    }
    path.as_bytes()
        .split(|b| *b == b':')
        .map(|dir| {
            let mut full = if dir.is_empty() { b".".to_vec() } else { dir.to_vec() };
            full.push(b'/');
            full.extend_from_slice(program.as_bytes());
            cstring(&full, "PATH")
        })
        .collect()
}

/// The stack of a container process until it execs.
const CHILD_STACK: usize = 256 * 1024;

/// Stacks kept for reuse at most: about as many as containers are set up
/// at once, between clone and exec, in a busy supervisor.
const SPARE_STACKS: usize = 4;

/// Stacks whose container process has exec'd or died, for the next spawn
/// (by address). Reusing one saves the mmap, the munmap — which flushes the
/// TLB of every CPU the child ran on — and the child's page faults on a
/// fresh stack. Only the supervisor's one thread spawns; the lock is for
/// the type system.
static SPARE: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

/// A container process's stack: an anonymous mapping of [`CHILD_STACK`]
/// bytes, given back to [`SPARE`] (or unmapped) when dropped.
struct Stack(*mut libc::c_void);

impl Stack {
    /// A spare stack, or a new mapping.
    fn take() -> Result<Stack> {
        if let Some(addr) = SPARE.lock().ok().and_then(|mut spare| spare.pop()) {
            return Ok(Stack(addr as *mut libc::c_void));
        }
        // SAFETY: a fresh anonymous private mapping, owned by the Stack.
        let addr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                CHILD_STACK,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::STACK,
            )
        }
        .map_err(|e| Error::os(ErrorKind::System, "map a stack for the container process", e))?;
        Ok(Stack(addr))
    }

    /// The 16-byte aligned top, where a stack growing down starts.
    fn top(&self) -> *mut libc::c_void {
        ((self.0 as usize + CHILD_STACK) & !15) as *mut libc::c_void
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Dropped with its ChildMemory: the child is done with it.
        if let Ok(mut spare) = SPARE.lock() {
            if spare.len() < SPARE_STACKS {
                spare.push(self.0 as usize);
                return;
            }
        }
        // SAFETY: our own mapping, used by no one any more.
        let _ = unsafe { rustix::mm::munmap(self.0, CHILD_STACK) };
    }
}

/// What a container process reads until it has exec'd (or died): its plan,
/// the pointer arrays execve takes, its stack. The supervisor keeps this
/// alive, unchanged, until the status pipe reports the exec outcome or the
/// process is reaped; see [`spawn`].
pub struct ChildMemory {
    child: Child,
    _plan: Plan,
    _argv: Vec<*const libc::c_char>,
    _stack: Stack,
}

/// Starts the container process with clone(2) and `CLONE_VM`, as
/// posix_spawn does: it shares the supervisor's memory, on a stack of its
/// own, until it execs. So no page is copied and none of the supervisor's
/// later writes takes a copy-on-write fault — fork's cost, which grows with
/// the supervisor's working set (the bench measured 163 faults and ~840 us of
/// CPU a lifecycle), is not paid. Unlike posix_spawn the supervisor does not
/// wait (no `CLONE_VFORK`): the child may block for `start`, for a stdin FIFO.
///
/// What that asks of the child: it writes no memory but its stack — raw
/// system calls only (`raw`), not even errno, which is the supervisor's own
/// — and what it reads (the returned [`ChildMemory`]) must stay alive and
/// unchanged until it has exec'd or died.
///
/// With `start_now` there is no start pipe: the child goes on to exec.
pub fn spawn(plan: Plan, start_now: bool) -> Result<Spawned> {
    let start = match start_now {
        true => None,
        false => Some(pipe_with(PipeFlags::CLOEXEC).map_err(|e| Error::os(ErrorKind::System, "create start pipe", e))?),
    };
    // Non-blocking on both ends: the child's writes (one byte, then at most
    // eight) always fit in the empty pipe.
    let (status_r, status_w) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)
        .map_err(|e| Error::os(ErrorKind::System, "create status pipe", e))?;

    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let candidates: Vec<*const libc::c_char> = plan.candidates.iter().map(|c| c.as_ptr()).collect();
    let stack = Stack::take()?;
    let top = stack.top();
    let child = Child {
        argv: argv.as_ptr(),
        envp: plan.env.pointers.as_ptr(),
        candidates,
        cwd: plan.cwd.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
        stdio: std::array::from_fn(|i| match &plan.stdio[i] {
            Stdio::Inherit | Stdio::OpenFifo(_) => -1,
            Stdio::Fd(fd) => fd.as_raw_fd(),
            Stdio::Shared(fd) => *fd,
        }),
        stdio_paths: std::array::from_fn(|i| match &plan.stdio[i] {
            Stdio::OpenFifo(path) => path.as_ptr(),
            _ => std::ptr::null(),
        }),
        start: start.as_ref().map_or(-1, |(r, _)| r.as_raw_fd()),
        status: status_w.as_raw_fd(),
        nofile: plan.nofile,
        reset_signals: plan.reset_signals,
    };
    // Boxed: its address is what the child gets, and must not move.
    let memory = Box::new(ChildMemory { child, _plan: plan, _argv: argv, _stack: stack });

    // Block every signal across clone: the child must not run the
    // supervisor's handlers (they write to the supervisor's signal pipe)
    // before it has reset them to the defaults.
    // SAFETY: plain libc calls on local, initialized sigset_t values.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: the stack grows down from its 16-byte aligned top; `memory`
    // outlives the child's use of it (the caller keeps it until exec or
    // death); the child writes only its own stack (see `Child::run`). No
    // CLONE_FILES or CLONE_SIGHAND: its fd table and signal handlers are
    // its own copies. CLONE_PIDFD stores a close-on-exec pidfd for it in
    // `pidfd` (installed in our fd table only, after the child's was copied).
    let mut pidfd: libc::c_int = -1;
    let pid = unsafe {
        libc::clone(
            child_entry,
            top,
            libc::CLONE_VM | libc::CLONE_PIDFD | libc::SIGCHLD,
            &memory.child as *const Child as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        )
    };
    let clone_errno = std::io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
    if pid < 0 {
        return Err(Error::os(ErrorKind::System, "clone container process", clone_errno));
    }
    let pid = Pid::from_raw(pid).expect("clone returned a positive pid");
    // SAFETY: clone succeeded, so the kernel stored a new pidfd of ours.
    // The process is our own unreaped child: its PID cannot be reused.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // The child has its own fd table: closing ours does not touch it. The
    // plan's fds are closed too; its strings stay for the child to read.
    let start = start.map(|(r, w)| {
        drop(r);
        w
    });
    drop(status_w);
    let mut memory = memory;
    memory._plan.cwd = None;
    for stdio in &mut memory._plan.stdio {
        if matches!(stdio, Stdio::Fd(_)) {
            *stdio = Stdio::Inherit;
        }
    }
    Ok(Spawned { pid, pidfd, start, status: status_r, memory })
}

/// Lets a created container exec: writes its start byte and closes the pipe.
pub fn release(start: OwnedFd) -> Result<()> {
    loop {
        match rustix::io::write(&start, &[1]) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            // EPIPE: it already died; the reaper reports how.
            Err(Errno::PIPE) => return Ok(()),
            Err(e) => return Err(Error::os(ErrorKind::System, "write start pipe", e)),
        }
    }
}

/// Reads what the status pipe holds into `seen` and decides at end-of-file:
/// the released byte alone means execve succeeded (the kernel closed the
/// close-on-exec pipe), eight more bytes carry a failure, nothing at all
/// means the process died before it was released.
pub fn read_exec_outcome(status: &OwnedFd, seen: &mut Vec<u8>) -> ExecOutcome {
    let mut buf = [0u8; 16];
    loop {
        match rustix::io::read(status, &mut buf) {
            Ok(0) => return decode_outcome(seen),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(Errno::INTR) => continue,
            Err(_) => return ExecOutcome::Pending,
        }
    }
}

fn decode_outcome(seen: &[u8]) -> ExecOutcome {
    let (released, rest) = match seen.split_first() {
        Some((&RELEASED, rest)) => (true, rest),
        _ => (false, seen),
    };
    if rest.len() >= 8 {
        let stage = u32::from_ne_bytes(rest[..4].try_into().expect("4 bytes"));
        let errno = i32::from_ne_bytes(rest[4..8].try_into().expect("4 bytes"));
        return if stage == STAGE_EXEC { ExecOutcome::ExecFailed(errno) } else { ExecOutcome::SetupFailed(errno) };
    }
    if released {
        ExecOutcome::Started
    } else {
        ExecOutcome::NeverStarted
    }
}

/// The kernel's `struct sigaction` for rt_sigaction(2) (not glibc's, whose
/// mask is 128 bytes): handler, flags, restorer, a 64-bit mask.
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// The entry point of a child made by clone(2).
extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the boxed `Child` of a ChildMemory that the
    // supervisor keeps alive until this process has exec'd or died.
    unsafe { (*(arg as *const Child)).run() }
}

/// What the child needs, as raw values (it shares our memory: see `spawn`).
struct Child {
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    candidates: Vec<*const libc::c_char>,
    cwd: RawFd,
    stdio: [RawFd; 3],
    /// FIFOs the child opens itself (null: none).
    stdio_paths: [*const libc::c_char; 3],
    /// The start pipe's read end; -1: start at once.
    start: RawFd,
    status: RawFd,
    nofile: Option<libc::rlimit>,
    reset_signals: u64,
}

impl Child {
    /// The child's side: raw system calls only (`raw`), which report errors
    /// in their return value and never write errno — the supervisor's, since
    /// the child shares its memory and thread pointer.
    unsafe fn run(&self) -> ! {
        // Default dispositions before unblocking, so that a pending signal
        // acts as it would on a fresh process (kill before start works).
        // (glibc's sigaction(3) would also refuse 32 and 33, which it keeps
        // for itself, leaving an inherited SIG_IGN there through exec.)
        let dfl = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
        for sig in 1..=crate::signals::MAX_SIGNAL {
            if self.reset_signals & (1 << (sig - 1)) != 0 {
                raw::call(libc::SYS_rt_sigaction, [sig as usize, &dfl as *const _ as usize, 0, 8, 0, 0]);
            }
        }
        let empty: u64 = 0;
        raw::call(libc::SYS_rt_sigprocmask, [libc::SIG_SETMASK as usize, &empty as *const u64 as usize, 0, 8, 0, 0]);

        if let Err(errno) = raw::check(raw::call(libc::SYS_setsid, [0; 6])) {
            self.fail(STAGE_SETUP, errno);
        }
        if let Some(limit) = &self.nofile {
            raw::call(libc::SYS_prlimit64, [0, libc::RLIMIT_NOFILE as usize, limit as *const _ as usize, 0, 0, 0]);
        }
        if self.cwd >= 0 {
            if let Err(errno) = raw::check(raw::call(libc::SYS_fchdir, [self.cwd as usize, 0, 0, 0, 0, 0])) {
                self.fail(STAGE_SETUP, errno);
            }
        }
        for (target, &fd) in self.stdio.iter().enumerate() {
            if fd >= 0 {
                if let Err(errno) = raw::check(raw::call(libc::SYS_dup3, [fd as usize, target, 0, 0, 0, 0])) {
                    self.fail(STAGE_SETUP, errno);
                }
            }
        }
        close_all_but(if self.start >= 0 { self.start } else { self.status }, self.status);
        // After the close: a child blocked here holds no supervisor fd.
        for (target, &path) in self.stdio_paths.iter().enumerate() {
            if path.is_null() {
                continue;
            }
            let flags = (libc::O_RDONLY | libc::O_NOCTTY) as usize;
            let fd = loop {
                match raw::check(raw::call(libc::SYS_openat, [libc::AT_FDCWD as usize, path as usize, flags, 0, 0, 0]))
                {
                    Err(libc::EINTR) => continue,
                    Err(errno) => self.fail(STAGE_SETUP, errno),
                    Ok(fd) => break fd,
                }
            };
            if fd != target {
                if let Err(errno) = raw::check(raw::call(libc::SYS_dup3, [fd, target, 0, 0, 0, 0])) {
                    self.fail(STAGE_SETUP, errno);
                }
                raw::call(libc::SYS_close, [fd, 0, 0, 0, 0, 0]);
            }
        }

        // Wait for `start`. EOF instead of a byte: the supervisor is gone.
        if self.start >= 0 {
            let mut byte = 0u8;
            loop {
                match raw::check(raw::call(
                    libc::SYS_read,
                    [self.start as usize, &mut byte as *mut u8 as usize, 1, 0, 0, 0],
                )) {
                    Ok(1) => break,
                    Err(libc::EINTR) => continue,
                    _ => raw::exit(SETUP_FAILED),
                }
            }
            raw::call(libc::SYS_close, [self.start as usize, 0, 0, 0, 0, 0]);
        }
        raw::call(libc::SYS_write, [self.status as usize, &RELEASED as *const u8 as usize, 1, 0, 0, 0]);

        // As execvp(3): EACCES anywhere wins over a later ENOENT.
        let mut saw_eacces = false;
        let mut errno = libc::ENOENT;
        for &path in &self.candidates {
            let rc = raw::call(libc::SYS_execve, [path as usize, self.argv as usize, self.envp as usize, 0, 0, 0]);
            errno = raw::check(rc).err().unwrap_or(libc::ENOEXEC);
            match errno {
                libc::EACCES => saw_eacces = true,
                libc::ENOENT | libc::ENOTDIR => {}
                _ => break,
            }
        }
        if saw_eacces && (errno == libc::ENOENT || errno == libc::ENOTDIR) {
            errno = libc::EACCES;
        }
        self.fail(STAGE_EXEC, errno)
    }

    /// Reports `errno` for `stage` on the status pipe and exits.
    unsafe fn fail(&self, stage: u32, errno: i32) -> ! {
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&stage.to_ne_bytes());
        msg[4..].copy_from_slice(&errno.to_ne_bytes());
        raw::call(libc::SYS_write, [self.status as usize, msg.as_ptr() as usize, msg.len(), 0, 0, 0]);
        raw::exit(if stage == STAGE_EXEC { exec_exit_code(errno) } else { SETUP_FAILED })
    }
}

/// Closes every fd from 3 up except `a` and `b` (close_range(2), Linux 5.9).
unsafe fn close_all_but(a: RawFd, b: RawFd) {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let ranges = [(3, lo - 1), (lo + 1, hi - 1), (hi + 1, RawFd::MAX)];
    for (first, last) in ranges {
        if first <= last {
            raw::call(libc::SYS_close_range, [first as usize, last as u32 as usize, 0, 0, 0, 0]);
        }
    }
}

/// System calls that return `-errno` and touch no memory but what they are
/// given: glibc's wrappers (even syscall(2)) store errno, which a `CLONE_VM`
/// child shares with the supervisor.
mod raw {
    /// A system call with up to six arguments; the kernel's raw result.
    #[inline(always)]
    pub unsafe fn call(number: libc::c_long, args: [usize; 6]) -> isize {
        let ret: isize;
        #[cfg(target_arch = "x86_64")]
        std::arch::asm!(
            "syscall",
            inlateout("rax") number as isize => ret,
            in("rdi") args[0], in("rsi") args[1], in("rdx") args[2],
            in("r10") args[3], in("r8") args[4], in("r9") args[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack)
        );
        #[cfg(target_arch = "aarch64")]
        std::arch::asm!(
            "svc 0",
            in("x8") number,
            inlateout("x0") args[0] as isize => ret,
            in("x1") args[1], in("x2") args[2], in("x3") args[3], in("x4") args[4], in("x5") args[5],
            options(nostack)
        );
        ret
    }

    /// The result as Ok(value) or Err(errno).
    pub fn check(ret: isize) -> Result<usize, i32> {
        if (-4095..0).contains(&ret) {
            Err(-ret as i32)
        } else {
            Ok(ret as usize)
        }
    }

    /// exit_group(2).
    pub unsafe fn exit(code: i32) -> ! {
        call(libc::SYS_exit_group, [code as usize, 0, 0, 0, 0, 0]);
        unreachable_unchecked_exit()
    }

    fn unreachable_unchecked_exit() -> ! {
        // exit_group does not return.
        loop {
            std::hint::spin_loop();
        }
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("pidvisor's spawn path has raw system calls for x86_64 and aarch64 only");

/// Opens /dev/null for a container's stdin.
pub fn dev_null() -> Result<OwnedFd> {
    fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Error::os(ErrorKind::System, "open /dev/null", e))
}

/// A container's command line for log lines, cut at 200 characters.
pub fn describe_argv(argv: &[String]) -> String {
    let joined = argv.join(" ");
    if joined.chars().count() > 200 {
        format!("{}...", joined.chars().take(200).collect::<String>())
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_search_matches_execvp() {
        let c = search_path("sh", OsStr::new("/a::/b")).unwrap();
        let c: Vec<_> = c.iter().map(|s| s.to_str().unwrap().to_string()).collect();
        assert_eq!(c, ["/a/sh", "./sh", "/b/sh"]);
        let c = search_path("./x", OsStr::new("/a")).unwrap();
        assert_eq!(c[0].to_str().unwrap(), "./x");
    }

    #[test]
    fn outcomes_decode() {
        let mut failed = vec![RELEASED];
        failed.extend_from_slice(&STAGE_EXEC.to_ne_bytes());
        failed.extend_from_slice(&libc::ENOENT.to_ne_bytes());
        assert_eq!(decode_outcome(&failed), ExecOutcome::ExecFailed(libc::ENOENT));
        assert_eq!(decode_outcome(&[RELEASED]), ExecOutcome::Started);
        assert_eq!(decode_outcome(&[]), ExecOutcome::NeverStarted);
        let mut setup = STAGE_SETUP.to_ne_bytes().to_vec();
        setup.extend_from_slice(&libc::EBADF.to_ne_bytes());
        assert_eq!(decode_outcome(&setup), ExecOutcome::SetupFailed(libc::EBADF));
    }

    #[test]
    fn exec_errnos_map_to_shell_codes() {
        assert_eq!(exec_exit_code(libc::ENOENT), 127);
        assert_eq!(exec_exit_code(libc::EACCES), 126);
        assert_eq!(exec_exit_code(libc::ENOEXEC), 126);
    }
}
