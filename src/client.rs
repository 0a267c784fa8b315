//! The FIFO client: sends one request line to the supervisor's `ctl`, reads
//! the one-line reply from a FIFO of its own, opens subscriptions, and starts
//! a supervisor in the background when none answers (as tmux does).
//!
//! While it waits, it also watches the supervisor's pidfd, so a supervisor
//! that dies mid-request is an error, not a hang.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::{self, FileType, Mode, OFlags};
use rustix::io::Errno;
use serde_json::Value;

use pidvisor_supervisor::error::describe_io;
use pidvisor_supervisor::protocol::MAX_LINE;
use pidvisor_supervisor::root::{self, CTL_FILE};

/// How long a started supervisor may take to say READY=1.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// A failure of the client, as printed on stderr.
#[derive(Debug)]
pub enum ClientError {
    /// No supervisor reads the control FIFO of this root.
    NoSupervisor(PathBuf),
    /// The supervisor answered `{"ok":false}` with this message.
    Failed { message: String },
    /// A system call failed: what, and the error.
    Io(String, std::io::Error),
    /// The supervisor exited while we waited for it.
    SupervisorGone,
    /// Nothing came before the deadline.
    Timeout,
    /// The supervisor said something that is not the protocol.
    Protocol(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::NoSupervisor(root) => {
                write!(f, "no supervisor runs on root {} (start one with `pidvisor supervise`)", root.display())
            }
            ClientError::Failed { message, .. } => f.write_str(message),
            ClientError::Io(what, e) => write!(f, "{what}: {}", describe_io(e)),
            ClientError::SupervisorGone => f.write_str("the supervisor exited before it answered"),
            ClientError::Timeout => f.write_str("timed out"),
            ClientError::Protocol(what) => write!(f, "unexpected answer from the supervisor: {what}"),
        }
    }
}

impl std::error::Error for ClientError {}

fn io(what: impl Into<String>, e: impl Into<std::io::Error>) -> ClientError {
    ClientError::Io(what.into(), e.into())
}

/// A client of the supervisor on one root.
pub struct Client {
    root: PathBuf,
}

/// A FIFO of the client's in the root, removed when dropped.
struct TempFifo {
    path: PathBuf,
}

impl TempFifo {
    fn new(root: &Path, what: &str) -> Result<Self, ClientError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = root.join(format!("client-{}-{n}.{what}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        fs::mknodat(fs::CWD, &path, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
            .map_err(|e| io(format!("mkfifo {}", path.display()), e))?;
        Ok(TempFifo { path })
    }

    /// Opens the read end without blocking (there is no writer yet).
    fn open_reader(&self) -> Result<OwnedFd, ClientError> {
        fs::open(&self.path, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| io(format!("open {}", self.path.display()), e))
    }

    fn path_str(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }
}

impl Drop for TempFifo {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A live subscription: event lines read from the subscriber FIFO.
pub struct Subscription {
    fd: OwnedFd,
    pending: Vec<u8>,
    supervisor: Option<OwnedFd>,
    /// Ids named in the request that had no container at subscribe time.
    pub unknown: Vec<String>,
    /// The seq the next event will get, as of the subscription.
    pub next: u64,
}

/// What waiting for a line gave.
pub enum Next {
    /// One line, without its newline.
    Line(String),
    /// The supervisor closed the FIFO (shutdown, or after an overflow line).
    End,
    /// The deadline passed.
    Timeout,
    /// The extra fd given to `next_line` is ready (see [`Watch`]).
    Interrupted,
}

/// Another fd for `next_line` to watch besides the subscription.
#[derive(Clone, Copy)]
pub enum Watch<'a> {
    /// Ready when it has input (a signal pipe).
    Readable(&'a OwnedFd),
    /// Ready when its other end is gone: our stdout, whose reader may leave
    /// (`| head -1`) while no event is due to be printed.
    Closed(BorrowedFd<'a>),
}

impl Subscription {
    /// Waits for the next line until `deadline`; `extra` is another fd to
    /// watch, reported as [`Next::Interrupted`].
    pub fn next_line(&mut self, deadline: Option<Instant>, extra: Option<Watch>) -> Result<Next, ClientError> {
        loop {
            if let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=pos).collect();
                return Ok(Next::Line(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned()));
            }
            // Poll before reading: read(2) of a FIFO that no writer has
            // opened yet returns 0 as if at end-of-file, while poll(2) waits
            // for the first writer (fifo(7), pipe_poll's w_counter check).
            match wait_readable(&self.fd, self.supervisor.as_ref(), extra, deadline)? {
                Ready::Data => {}
                Ready::Extra => return Ok(Next::Interrupted),
                Ready::Timeout => return Ok(Next::Timeout),
                // The supervisor is gone: take what it wrote, if anything
                // (a FIFO it never opened would otherwise wait forever).
                Ready::SupervisorGone => {
                    self.supervisor = None;
                    if let Ready::Timeout = wait_readable(&self.fd, None, None, Some(Instant::now()))? {
                        return Ok(Next::End);
                    }
                }
            }
            let mut buf = [0u8; 8192];
            match rustix::io::read(&self.fd, &mut buf) {
                Ok(0) => return Ok(Next::End),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(Errno::AGAIN) | Err(Errno::INTR) => {}
                Err(e) => return Err(io("read subscriber fifo", e)),
            }
        }
    }
}

enum Ready {
    Data,
    Extra,
    SupervisorGone,
    Timeout,
}

/// Polls `fd` for input, `supervisor` (a pidfd) for its exit, and `extra`.
fn wait_readable(
    fd: &OwnedFd,
    supervisor: Option<&OwnedFd>,
    extra: Option<Watch>,
    deadline: Option<Instant>,
) -> Result<Ready, ClientError> {
    loop {
        let mut fds = vec![PollFd::new(fd, PollFlags::IN)];
        if let Some(s) = supervisor {
            fds.push(PollFd::new(s, PollFlags::IN));
        }
        match extra {
            Some(Watch::Readable(x)) => fds.push(PollFd::new(x, PollFlags::IN)),
            // No events asked: poll(2) reports POLLERR (a pipe whose reader
            // left) and POLLHUP regardless.
            Some(Watch::Closed(x)) => fds.push(PollFd::from_borrowed_fd(x, PollFlags::empty())),
            None => {}
        }
        let timeout = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(Ready::Timeout);
                }
                Some(Timespec { tv_sec: left.as_secs() as i64, tv_nsec: left.subsec_nanos() as i64 })
            }
            None => None,
        };
        match poll(&mut fds, timeout.as_ref()) {
            Ok(0) => return Ok(Ready::Timeout),
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(e) => return Err(io("poll", e)),
        }
        if !fds[0].revents().is_empty() {
            return Ok(Ready::Data);
        }
        let mut i = 1;
        if supervisor.is_some() {
            if !fds[i].revents().is_empty() {
                return Ok(Ready::SupervisorGone);
            }
            i += 1;
        }
        if extra.is_some() && !fds[i].revents().is_empty() {
            return Ok(Ready::Extra);
        }
    }
}

impl Client {
    /// A client of the supervisor on `root`.
    pub fn new(root: PathBuf) -> Self {
        Client { root }
    }

    /// A pidfd of the supervisor holding the root's lock, if one does.
    fn supervisor_pidfd(&self) -> Option<OwnedFd> {
        let pid = root::lock_holder(&self.root)?;
        rustix::process::pidfd_open(rustix::process::Pid::from_raw(pid)?, rustix::process::PidfdFlags::empty()).ok()
    }

    /// Writes one request line to `ctl` (by file when it is too long).
    fn send(&self, request: &Value, spec: &mut Option<tempfile_spec::SpecFile>) -> Result<(), ClientError> {
        // A leading newline ends whatever another writer left unterminated
        // in the FIFO, which would otherwise swallow this request's start
        // (the supervisor skips empty lines).
        let mut line = b"\n".to_vec();
        serde_json::to_writer(&mut line, request).expect("a request serializes");
        if line.len() + 1 > MAX_LINE {
            // Too long to be atomic on the FIFO: send the fields by file.
            let file = tempfile_spec::SpecFile::write(&self.root, request)?;
            let mut short = serde_json::Map::new();
            short.insert("spec".into(), Value::String(file.path_str()));
            if let Some(reply) = request.get("reply") {
                short.insert("reply".into(), reply.clone());
            }
            line = b"\n".to_vec();
            serde_json::to_writer(&mut line, &Value::Object(short)).expect("serializes");
            *spec = Some(file);
        }
        line.push(b'\n');
        let path = self.root.join(CTL_FILE);
        // O_NONBLOCK: open(2) fails with ENXIO rather than blocking when no
        // supervisor has the FIFO open for reading.
        let fd = match fs::open(
            &path,
            OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NXIO) | Err(Errno::NOENT) => return Err(ClientError::NoSupervisor(self.root.clone())),
            Err(e) => return Err(io(format!("open {}", path.display()), e)),
        };
        let stat = fs::fstat(&fd).map_err(|e| io(format!("stat {}", path.display()), e))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::Fifo {
            return Err(ClientError::Protocol(format!("{} is not a fifo", path.display())));
        }
        // Blocking from here: a full pipe makes us wait, not fail.
        fs::fcntl_setfl(&fd, OFlags::empty()).map_err(|e| io("fcntl", e))?;
        let mut file = File::from(fd);
        file.write_all(&line).map_err(|e| io(format!("write {}", path.display()), e))
    }

    /// Sends a request and waits for its reply; `{"ok":false}` is an error.
    pub fn request(&self, mut request: Value) -> Result<Value, ClientError> {
        let reply = self.request_raw(&mut request, None)?;
        match reply.get("ok") {
            Some(Value::Bool(true)) => Ok(reply),
            Some(Value::Bool(false)) => Err(failed(reply)),
            _ => Err(ClientError::Protocol(reply.to_string())),
        }
    }

    /// Sends a request and returns the raw reply, `{"ok":false}` included.
    pub fn request_raw(&self, request: &mut Value, deadline: Option<Instant>) -> Result<Value, ClientError> {
        let fifo = self.temp_fifo("reply")?;
        let fd = fifo.open_reader()?;
        request["reply"] = Value::String(fifo.path_str());
        let supervisor = self.supervisor_pidfd();
        let mut spec = None;
        self.send(request, &mut spec)?;
        let mut sub = Subscription { fd, pending: Vec::new(), supervisor, unknown: Vec::new(), next: 0 };
        match sub.next_line(deadline, None)? {
            Next::Line(line) => serde_json::from_str(&line).map_err(|_| ClientError::Protocol(line)),
            Next::End => Err(ClientError::SupervisorGone),
            Next::Timeout => Err(ClientError::Timeout),
            Next::Interrupted => Err(ClientError::Timeout),
        }
    }

    /// A FIFO of ours in the root; a missing root means no supervisor.
    fn temp_fifo(&self, what: &str) -> Result<TempFifo, ClientError> {
        TempFifo::new(&self.root, what).map_err(|e| match e {
            ClientError::Io(_, ref err) if err.kind() == std::io::ErrorKind::NotFound => {
                ClientError::NoSupervisor(self.root.clone())
            }
            e => e,
        })
    }

    /// Subscribes with the given fields (`path` is filled in).
    pub fn subscribe(&self, mut fields: Value) -> Result<Subscription, ClientError> {
        let fifo = self.temp_fifo("events")?;
        let fd = fifo.open_reader()?;
        fields["op"] = "subscribe".into();
        fields["path"] = Value::String(fifo.path_str());
        let reply = self.request(fields)?;
        let unknown = reply
            .get("unknown")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default();
        let next = reply.get("next").and_then(Value::as_u64).unwrap_or(0);
        // The supervisor holds the write end now; the name is not needed.
        drop(fifo);
        Ok(Subscription { fd, pending: Vec::new(), supervisor: self.supervisor_pidfd(), unknown, next })
    }

    /// Makes sure a supervisor serves the root, starting one in the
    /// background if none does; says so on stderr.
    pub fn ensure_supervisor(&self) -> Result<(), ClientError> {
        if self.is_served() {
            return Ok(());
        }
        root::prepare_root(&self.root)
            .map_err(|e| ClientError::Io(e.to_string(), std::io::Error::other("root unusable")))?;
        // An abstract socket: no path to clean up, and no 108-byte limit on
        // the root's path.
        let name = format!(
            "pidvisor-notify-{}-{}",
            std::process::id(),
            rustix::time::clock_gettime(rustix::time::ClockId::Monotonic).tv_nsec
        );
        let addr = {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .map_err(|e| io("notify socket name", e))?
        };
        let socket = std::os::unix::net::UnixDatagram::bind_addr(&addr).map_err(|e| io(format!("bind @{name}"), e))?;
        let socket_path = format!("@{name}");
        let log_path = self.root.join("supervisor.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io(format!("open {}", log_path.display()), e))?;
        let exe = std::env::current_exe().map_err(|e| io("find the pidvisor binary", e))?;
        let mut command = std::process::Command::new(exe);
        command
            .arg("--root")
            .arg(&self.root)
            .args(["supervise", "--notify"])
            .env("NOTIFY_SOCKET", &socket_path)
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(|e| io("dup log", e))?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe; it detaches the supervisor
        // from our terminal and process group.
        unsafe {
            command.pre_exec(|| {
                rustix::process::setsid()?;
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| io("start a supervisor", e))?;
        let child_pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(child.id() as i32).expect("a child has a pid"),
            rustix::process::PidfdFlags::empty(),
        )
        .map_err(|e| io("pidfd_open", e))?;
        let socket_fd: OwnedFd = socket.as_fd().try_clone_to_owned().map_err(|e| io("dup", e))?;
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            match wait_readable(&socket_fd, Some(&child_pidfd), None, Some(deadline))? {
                Ready::Data => {
                    let mut buf = [0u8; 256];
                    let n = socket.recv(&mut buf).map_err(|e| io("read notify socket", e))?;
                    if buf[..n].split(|b| *b == b'\n').any(|l| l == b"READY=1") {
                        break;
                    }
                }
                Ready::SupervisorGone => {
                    let _ = child.wait();
                    // Another client started one at the same time: ours lost
                    // the lock. Wait for the winner to open `ctl` (it sends
                    // READY=1 to its own client, not to us, so check).
                    while root::lock_holder(&self.root).is_some() && Instant::now() < deadline {
                        if self.is_served() {
                            return Ok(());
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    if self.is_served() {
                        return Ok(());
                    }
                    return Err(ClientError::Io(
                        format!(
                            "the supervisor started on {} exited at once; see {}",
                            self.root.display(),
                            log_path.display()
                        ),
                        std::io::Error::other("exited"),
                    ));
                }
                Ready::Timeout | Ready::Extra => return Err(ClientError::Timeout),
            }
        }
        eprintln!(
            "pidvisor: started a supervisor on {} (pid {}, log {})",
            self.root.display(),
            child.id(),
            log_path.display()
        );
        // Reap it if it exits before we do, so it is never our zombie.
        std::thread::spawn(move || child.wait());
        Ok(())
    }

    /// Whether a supervisor reads the control FIFO.
    pub fn is_served(&self) -> bool {
        let path = self.root.join(CTL_FILE);
        fs::open(&path, OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOFOLLOW, Mode::empty()).is_ok()
    }
}

/// The error of an `{"ok":false}` reply.
pub fn failed(reply: Value) -> ClientError {
    let message = reply["error"]["message"].as_str().unwrap_or("the supervisor refused the request").to_string();
    ClientError::Failed { message }
}

/// Spec files: requests too long for one atomic FIFO write.
mod tempfile_spec {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    /// A spec file in the root, removed when dropped.
    pub struct SpecFile(PathBuf);

    impl SpecFile {
        pub fn write(root: &Path, request: &Value) -> Result<Self, ClientError> {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = root.join(format!("client-{}-{n}.spec.json", std::process::id()));
            let mut fields = request.clone();
            if let Some(map) = fields.as_object_mut() {
                map.remove("reply");
            }
            // A file of a killed client with a reused PID may be left.
            let _ = std::fs::remove_file(&path);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| io(format!("create {}", path.display()), e))?;
            let guard = SpecFile(path);
            file.write_all(&serde_json::to_vec(&fields).expect("serializes"))
                .map_err(|e| io(format!("write {}", guard.0.display()), e))?;
            Ok(guard)
        }

        pub fn path_str(&self) -> String {
            self.0.to_string_lossy().into_owned()
        }
    }

    impl Drop for SpecFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}
