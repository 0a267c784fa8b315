//! The supervisor: one struct that owns the poll, the control FIFO, the
//! signal pipe, the container table and the subscribers, and one loop that
//! polls, dispatches each ready token to its `handle_*` method, and at the end
//! of every iteration journals and fans out the events the handlers queued,
//! then sends the replies. After setup nothing that belongs to one request,
//! container or subscriber leaves [`Supervisor::run`]: it is answered and
//! logged instead.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use rustix::fs::OFlags;
use rustix::io::Errno;
use rustix::process::{Pid, Signal};
use serde_json::{json, Value};
use signal_hook::consts::signal::*;
use signal_hook_mio::v1_0::Signals;

use crate::container::{self, Action, Container, PendingStart, Status};
use crate::error::{describe_io, Error, ErrorKind, Result};
use crate::event::{Event, EventLog, EventType, Exit, Published};
use crate::fifo;
use crate::journal::{self, Journal};
use crate::notify::notify;
use crate::protocol::{self, CreateRequest, Request, SignalArg, SubscribeRequest, MAX_LINE};
use crate::reaper;
use crate::root;
use crate::runtime::{self, Job, Runtime};
use crate::sink::{Flushed, Sink};
use crate::spawn::{self, ExecOutcome, Plan, Stdio};
use crate::time::Timestamp;

const CTL: Token = Token(0);
const SIGNALS: Token = Token(1);
const CHILD_EXITS: Token = Token(2);
const FIRST_DYNAMIC_TOKEN: usize = 3;

/// The longest unterminated input kept from the control FIFO while looking
/// for a newline; past it the line is discarded up to the next newline.
const MAX_HELD_LINE: usize = 64 * 1024;

/// The signals forwarded to `main` in init mode.
const FORWARDED: [i32; 7] = [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH];

/// The signals that shut a supervisor down (not in init mode): SIGHUP too,
/// so that a supervisor whose terminal closes stops its containers rather
/// than leave them orphaned, and SIGQUIT.
const SHUTDOWN_SIGNALS: [i32; 4] = [SIGTERM, SIGINT, SIGHUP, SIGQUIT];

/// Signals a supervisor ignores (not in init mode), where their default
/// would kill it without a shutdown.
const IGNORED_SIGNALS: [i32; 2] = [SIGUSR1, SIGUSR2];

/// How long the supervisor waits at exit for a subscriber that reads
/// nothing before it cuts it off.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// How long at most the supervisor waits at exit for subscribers that are
/// still reading.
const FINAL_FLUSH_MAX: Duration = Duration::from_secs(10);

/// The supervisor's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The root directory.
    pub root: PathBuf,
    /// How long shutdown waits after SIGTERM before SIGKILL.
    pub grace: Duration,
    /// Stopped containers kept before the oldest are deleted.
    pub max_stopped: usize,
    /// Recent events kept in memory for `since`.
    pub retained_events: usize,
    /// Bytes a subscriber may have queued before it overflows.
    pub subscriber_buffer: usize,
    /// Size of the journal file before it is rotated.
    pub journal_size: u64,
    /// Where to send READY=1 / STOPPING=1 (systemd's $NOTIFY_SOCKET).
    pub notify: Option<std::ffi::OsString>,
    /// Init mode: run this as container `main` and exit with its status.
    pub init: Option<Vec<String>>,
}

impl Config {
    /// The defaults for a root.
    pub fn new(root: PathBuf) -> Self {
        Config {
            root,
            grace: Duration::from_secs(10),
            max_stopped: 10_000,
            retained_events: 4096,
            subscriber_buffer: 1 << 20,
            journal_size: 16 << 20,
            notify: None,
            init: None,
        }
    }
}

/// What a dynamic token stands for. Tokens come from a counter and are never
/// reused, so a stale one finds nothing here.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// A container process's pidfd (by instance).
    Pidfd(u64),
    /// A container's status pipe (by instance).
    ExecStatus(u64),
    /// A reply or subscriber FIFO.
    Client,
    /// The pidfd of an OCI runtime command (by PID).
    Helper(i32),
}

/// An OCI runtime command in flight, and what to do when it exits.
struct Helper {
    pidfd: OwnedFd,
    token: Token,
    job: HelperJob,
    /// Held open so the child's write of its released byte cannot hit EPIPE.
    _status_pipe: OwnedFd,
    /// What the child reads until it execs; dropped when it is reaped.
    _memory: Box<spawn::ChildMemory>,
}

enum HelperJob {
    /// `runtime create`: then the container exists.
    Create(Box<PendingCreate>),
    /// `runtime start` of this instance.
    Start(u64),
    /// `runtime delete` of this id, then what is to follow.
    Delete { id: String, then: AfterDelete },
}

impl HelperJob {
    /// Whether this job holds a container id (no new container may take it).
    fn holds(&self, id: &str) -> bool {
        match self {
            HelperJob::Create(pending) => pending.req.id == id,
            HelperJob::Delete { id: held, .. } => held == id,
            HelperJob::Start(_) => false,
        }
    }
}

/// What follows a `runtime delete`.
enum AfterDelete {
    /// Forget the container (by instance): emit `deleted`, answer its replies.
    Forget(u64),
    /// Answer a failed create, now that its id is free again.
    FailCreate(Option<String>, Error),
    /// Nothing: the runtime's state was cleaned at shutdown.
    Nothing,
}

struct PendingCreate {
    req: CreateRequest,
    reply: Option<String>,
    runtime: Runtime,
}

/// What a subscriber wants.
struct Filter {
    ids: Option<HashSet<String>>,
    /// A bit per [`EventType`] wanted (all bits: no type filter).
    types: u8,
    /// Events with seq up to here were replayed or predate the subscription.
    after: u64,
}

impl Filter {
    /// Whether an event is wanted and new to this subscriber.
    fn matches(&self, seq: u64, kind: EventType, id: &str) -> bool {
        seq > self.after && self.wants(kind, id)
    }

    /// Whether an event of this type and container is wanted.
    fn wants(&self, kind: EventType, id: &str) -> bool {
        self.types & (1 << kind as u8) != 0 && self.ids.as_ref().is_none_or(|ids| ids.contains(id))
    }
}

/// A reply FIFO (no filter) or a subscriber FIFO.
struct Client {
    sink: Sink,
    path: String,
    filter: Option<Filter>,
    /// The replay a subscriber is still owed; None once it is live.
    catch_up: Option<CatchUp>,
}

impl Client {
    /// Whether events are still owed: queued, or replay still to come.
    fn owes(&self) -> bool {
        self.sink.queued_bytes() > 0 || self.catch_up.is_some()
    }
}

/// A subscriber's replay, queued at the pace its reader takes it so that
/// neither its queue nor the loop's work grows with the replay's length:
/// first the retained events of the containers it named, then every event
/// from `next` on, out of the ring or the journal, until it reaches the live
/// stream. Meanwhile fan-out passes it by: what is published meanwhile is
/// read back too.
struct CatchUp {
    retained: VecDeque<Rc<Published>>,
    /// The first seq not yet queued.
    next: u64,
    /// Where the journal is read, once the ring no longer reaches `next`.
    cursor: Option<journal::Cursor>,
}

/// Bytes of replay queued per turn: about one pipe's worth.
const REPLAY_CHUNK: usize = 64 * 1024;

/// Replay queued in one call before the loop serves others.
const REPLAY_TURN: usize = 1 << 20;

/// How a feed of a client ended.
#[derive(Debug, PartialEq, Eq)]
enum Fed {
    /// The pipe is full; its writable event resumes.
    Pending,
    /// Everything owed so far is written.
    Drained,
    /// Its turn is over while the pipe has room: resume on the next turn.
    Again,
    /// The client is done (its reader left, or its last line is written).
    Done,
}

/// Shutdown in progress.
struct Shutdown {
    deadline: Instant,
    killed: bool,
    orphans_signalled: bool,
    replies: Vec<Option<String>>,
}

/// The supervisor and everything it owns.
pub struct Supervisor {
    config: Config,
    poll: Poll,
    ctl: OwnedFd,
    ctl_buf: Vec<u8>,
    ctl_discarding: bool,
    signals: Signals,
    /// A signalfd for SIGCHLD, which is blocked (see `child_exit_fd`).
    child_exits: OwnedFd,
    _lock: OwnedFd,
    dev_null: OwnedFd,
    /// What containers get unless a request says otherwise (environment,
    /// RLIMIT_NOFILE, signal dispositions to reset), captured once.
    inherited: spawn::Inherited,
    next_token: usize,
    sources: HashMap<Token, Source>,
    containers: HashMap<u64, Container>,
    by_id: HashMap<Rc<str>, u64>,
    by_pid: HashMap<i32, u64>,
    helpers: HashMap<i32, Helper>,
    stopped_order: VecDeque<u64>,
    stopped_count: usize,
    clients: HashMap<Token, Client>,
    log: EventLog,
    journal: Journal,
    replies: Vec<(String, Vec<u8>)>,
    shutdown: Option<Shutdown>,
    /// Whether the last reap found no child at all (ECHILD).
    no_children: bool,
    /// Pidfds of reaped containers, deregistered and closed after publishing.
    exited_pidfds: Vec<OwnedFd>,
    init_main: Option<u64>,
    exit_code: i32,
}

/// Makes sure fds 0-2 are open (on /dev/null) and closes every other fd the
/// process inherited. Call first thing, before anything opens an fd.
pub fn sanitize_inherited_fds() {
    // SAFETY: fcntl(F_GETFD) probes an fd number; open/close_range act on
    // fds nothing in this process owns yet (called before any are opened).
    unsafe {
        for fd in 0..3 {
            if libc::fcntl(fd, libc::F_GETFD) < 0 {
                let opened = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if opened >= 0 && opened != fd {
                    libc::dup2(opened, fd);
                    libc::close(opened);
                }
            }
        }
        libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, 0 as libc::c_uint);
    }
}

impl Supervisor {
    /// Sets up the supervisor on its root: checks the root, takes the lock,
    /// opens `ctl` and the journal, becomes a subreaper and installs the
    /// signal handlers. Fails with a message saying what is wrong.
    pub fn new(config: Config) -> Result<Self> {
        root::prepare_root(&config.root)?;
        let lock = root::take_lock(&config.root)?;
        match rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
            Ok(()) => {}
            Err(Errno::INVAL) => {
                return Err(Error::new(ErrorKind::System, "PR_SET_CHILD_SUBREAPER: kernel too old (needs Linux 3.4)"))
            }
            Err(e) => return Err(Error::os(ErrorKind::System, "PR_SET_CHILD_SUBREAPER", e)),
        }
        let nofile = raise_nofile_limit();
        let (journal, last_seq) = Journal::open(&config.root, config.journal_size)?;
        let ctl = root::open_ctl(&config.root)?;
        let poll = Poll::new().map_err(|e| Error::os(ErrorKind::System, "create epoll", e))?;
        let child_exits = child_exit_fd()?;
        let wanted: Vec<i32> = match config.init {
            Some(_) => FORWARDED.to_vec(),
            // SIGHUP as `nohup` left it: ignored stays ignored.
            None => SHUTDOWN_SIGNALS
                .into_iter()
                .chain(IGNORED_SIGNALS)
                .filter(|&sig| sig != SIGHUP || !crate::signals::is_ignored(sig))
                .collect(),
        };
        let mut signals =
            Signals::new(&wanted).map_err(|e| Error::os(ErrorKind::System, "install signal handlers", e))?;
        // A mask inherited from whoever started us would leave SIGTERM
        // undelivered. Cleared only now that every handler is in place: a
        // signal pending since before exec is handled, not fatal.
        crate::signals::block_only(SIGCHLD);
        poll.registry()
            .register(&mut SourceFd(&ctl.as_raw_fd()), CTL, Interest::READABLE)
            .map_err(|e| Error::os(ErrorKind::System, "register control fifo", e))?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(|e| Error::os(ErrorKind::System, "register signal pipe", e))?;
        poll.registry()
            .register(&mut SourceFd(&child_exits.as_raw_fd()), CHILD_EXITS, Interest::READABLE)
            .map_err(|e| Error::os(ErrorKind::System, "register signalfd", e))?;
        let log = EventLog::new(last_seq + 1, config.retained_events);
        Ok(Supervisor {
            dev_null: spawn::dev_null()?,
            // After Signals::new: every handler is installed by now.
            inherited: spawn::Inherited::capture(nofile),
            config,
            poll,
            ctl,
            ctl_buf: Vec::new(),
            ctl_discarding: false,
            signals,
            child_exits,
            _lock: lock,
            next_token: FIRST_DYNAMIC_TOKEN,
            sources: HashMap::new(),
            containers: HashMap::new(),
            by_id: HashMap::new(),
            by_pid: HashMap::new(),
            helpers: HashMap::new(),
            stopped_order: VecDeque::new(),
            stopped_count: 0,
            clients: HashMap::new(),
            log,
            journal,
            replies: Vec::new(),
            shutdown: None,
            no_children: false,
            exited_pidfds: Vec::new(),
            init_main: None,
            exit_code: 0,
        })
    }

    /// Serves until shutdown; returns the exit code (0, or `main`'s status in
    /// init mode).
    pub fn run(mut self) -> i32 {
        log::info!(
            "supervising root {} (pid {}, next seq {})",
            self.config.root.display(),
            std::process::id(),
            self.log.next_seq()
        );
        if let Some(argv) = self.config.init.clone() {
            // main is attached to the supervisor's own stdio (its very fds,
            // through the same /proc/PID/fd path clients use).
            let me = std::process::id();
            let req = CreateRequest {
                id: "main".into(),
                argv,
                start: true,
                stdin: Some(format!("/proc/{me}/fd/0")),
                stdout: Some(format!("/proc/{me}/fd/1")),
                stderr: Some(format!("/proc/{me}/fd/2")),
                ..Default::default()
            };
            match self.create(&req, None) {
                Ok(instance) => self.init_main = instance,
                Err(e) => {
                    log::error!("init: create main: {e}");
                    return 125;
                }
            }
        }
        if let Some(socket) = &self.config.notify {
            notify(socket, "READY=1");
        }
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self.shutdown.as_ref().map(|s| s.deadline.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::error!("epoll_wait: {}", describe_io(&e));
                }
                continue;
            }
            for event in events.iter() {
                match event.token() {
                    CTL => self.handle_ctl(),
                    SIGNALS => self.handle_signals(),
                    CHILD_EXITS => self.handle_child_exits(),
                    token => match self.sources.get(&token).copied() {
                        Some(Source::Pidfd(instance)) => self.handle_exit(instance),
                        Some(Source::ExecStatus(instance)) => self.handle_exec_status(instance),
                        Some(Source::Client) => self.handle_client(token, event.is_error()),
                        Some(Source::Helper(pid)) => {
                            self.reap_helper(pid);
                            self.reap();
                        }
                        None => log::debug!("event for stale token {}", token.0),
                    },
                }
            }
            self.publish();
            if self.shutdown.is_some() && self.advance_shutdown() {
                break;
            }
        }
        self.finish()
    }

    fn token(&mut self, source: Source) -> Token {
        let token = Token(self.next_token);
        self.next_token += 1;
        self.sources.insert(token, source);
        token
    }

    fn register(&mut self, fd: &OwnedFd, source: Source, interest: Interest) -> Result<Token> {
        let token = self.token(source);
        if let Err(e) = self.poll.registry().register(&mut SourceFd(&fd.as_raw_fd()), token, interest) {
            self.sources.remove(&token);
            return Err(Error::os(ErrorKind::System, "register fd with epoll", e));
        }
        Ok(token)
    }

    /// Deregisters before the fd is closed: epoll would otherwise keep
    /// watching the open file description behind a reused fd number.
    fn deregister(&mut self, fd: &OwnedFd, token: Token) {
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd.as_raw_fd()));
        self.sources.remove(&token);
    }

    // ---- the control FIFO ----

    fn handle_ctl(&mut self) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match rustix::io::read(&self.ctl, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.ctl_buf.extend_from_slice(&buf[..n]);
                    self.take_lines();
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => break,
                Err(e) => {
                    log::error!("read control fifo: {}", describe_io(&e.into()));
                    break;
                }
            }
        }
    }

    fn take_lines(&mut self) {
        let mut start = 0;
        while let Some(len) = self.ctl_buf[start..].iter().position(|b| *b == b'\n') {
            let line = self.ctl_buf[start..start + len].to_vec();
            start += len + 1;
            if std::mem::take(&mut self.ctl_discarding) {
                continue;
            }
            self.handle_line(&line);
        }
        self.ctl_buf.drain(..start);
        if self.ctl_buf.len() > MAX_HELD_LINE {
            if !self.ctl_discarding {
                let err = protocol::too_long_unterminated(self.ctl_buf.len());
                log::warn!("request: {err} (discarded up to the next newline)");
                let reply = protocol::reply_path_in(&self.ctl_buf);
                self.reply(reply, Err(err));
            }
            self.ctl_buf.clear();
            self.ctl_discarding = true;
        }
    }

    fn handle_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let parsed = protocol::parse_line(line);
        let request = match parsed.request {
            Ok(request) => request,
            Err(e) => {
                let shown = String::from_utf8_lossy(&line[..line.len().min(200)]);
                log::warn!("request {shown:?}: {e}");
                return self.reply(parsed.reply, Err(e));
            }
        };
        log::debug!("request {request:?}");
        let op = request.op();
        let reply = parsed.reply;
        let result = match request {
            Request::Create(req) => match self.create(&req, reply.clone()) {
                Ok(Some(instance)) if !req.start => Ok(self.describe(instance)),
                // The reply waits for the exec outcome, or for the runtime.
                Ok(_) => return,
                Err(e) => Err(e),
            },
            Request::Start { id } => match self.handle_start(&id, reply.clone()) {
                Ok(()) => return,
                Err(e) => Err(e),
            },
            Request::Kill { id, signal, all } => self.handle_kill(&id, signal.as_ref(), all),
            Request::Delete { id, force } => match self.handle_delete(&id, force, reply.clone()) {
                Ok(None) => return,
                Ok(Some(v)) => Ok(v),
                Err(e) => Err(e),
            },
            Request::State { id } => self.lookup(&id).map(|c| json!({ "state": c.state() })),
            Request::List {} => Ok(self.handle_list()),
            Request::Subscribe(req) => self.handle_subscribe(&req),
            Request::Shutdown {} => {
                self.begin_shutdown(reply);
                return;
            }
            Request::Version {} => Ok(json!({ "version": protocol::VERSION, "protocol": 1 })),
        };
        if let Err(e) = &result {
            log::warn!("{op}: {e}");
        }
        self.reply(reply, result);
    }

    /// Queues a reply; replies are sent after the iteration's events are
    /// journaled, so a client that hears "ok" finds the event in the journal.
    fn reply(&mut self, path: Option<String>, result: Result<Value>) {
        let value = match result {
            Ok(fields) => protocol::ok_reply(fields),
            Err(e) => protocol::error_reply(&e, json!({})),
        };
        self.reply_value(path, value);
    }

    fn reply_value(&mut self, path: Option<String>, value: Value) {
        let Some(path) = path else { return };
        let mut line = serde_json::to_vec(&value).expect("a reply always serializes");
        line.push(b'\n');
        self.replies.push((path, line));
    }

    fn send_replies(&mut self) {
        for (path, line) in std::mem::take(&mut self.replies) {
            let fd = match fifo::open_fifo_writer(&path, "reply fifo") {
                Ok(fd) => fd,
                Err(e) => {
                    log::warn!("reply: {e}");
                    continue;
                }
            };
            let mut sink = Sink::new(fd, usize::MAX);
            sink.push_line(line);
            sink.close_when_drained();
            if sink.flush() == Flushed::Pending {
                // A reply larger than the pipe (a long `list`): finish it
                // when the pipe has room.
                if let Err(e) = self.add_client(Client { sink, path: path.clone(), filter: None, catch_up: None }) {
                    log::warn!("reply fifo {path}: {e}");
                }
            }
        }
    }

    fn add_client(&mut self, client: Client) -> Result<Token> {
        let token = self.register(client.sink.fd(), Source::Client, Interest::WRITABLE)?;
        self.clients.insert(token, client);
        Ok(token)
    }

    fn drop_client(&mut self, token: Token) {
        if let Some(client) = self.clients.remove(&token) {
            self.deregister(client.sink.fd(), token);
            if client.filter.is_some() {
                log::debug!("subscriber {} dropped", client.path);
            }
        }
    }

    fn handle_client(&mut self, token: Token, error: bool) {
        let Some(client) = self.clients.get_mut(&token) else { return };
        // EPOLLERR on a FIFO's write end: the reader closed it.
        if error {
            return self.drop_client(token);
        }
        match feed(client, &self.log, &self.journal) {
            Fed::Done => self.drop_client(token),
            Fed::Again => {
                // Edge-triggered, and the pipe still has room: re-arming
                // reports it writable again on the next poll.
                let fd = client.sink.fd().as_raw_fd();
                if let Err(e) = self.poll.registry().reregister(&mut SourceFd(&fd), token, Interest::WRITABLE) {
                    log::warn!("subscriber {}: re-arm: {}", client.path, describe_io(&e));
                }
            }
            Fed::Pending | Fed::Drained => {}
        }
    }

    // ---- requests ----

    /// The container of an id: bad_request for an id no container can
    /// have, not_found for one that none has.
    fn lookup(&self, id: &str) -> Result<&Container> {
        protocol::validate_id(id)?;
        self.by_id
            .get(id)
            .and_then(|i| self.containers.get(i))
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no container {id:?}")))
    }

    fn lookup_instance(&self, id: &str) -> Result<u64> {
        self.lookup(id).map(|c| c.instance)
    }

    fn describe(&self, instance: u64) -> Value {
        match self.containers.get(&instance) {
            Some(c) => {
                json!({ "id": &*c.id, "instance": c.instance, "pid": c.pid.as_raw_nonzero().get(), "status": c.status.as_str() })
            }
            None => json!({}),
        }
    }

    /// Creates a container (and starts it when asked); returns its
    /// instance, or None when a runtime command finishes the job later.
    fn create(&mut self, req: &CreateRequest, reply: Option<String>) -> Result<Option<u64>> {
        protocol::validate_id(&req.id)?;
        if self.shutdown.is_some() {
            return Err(Error::new(
                ErrorKind::ShuttingDown,
                format!("cannot create {:?}: the supervisor is shutting down", req.id),
            ));
        }
        if self.by_id.contains_key(req.id.as_str()) {
            return Err(Error::new(ErrorKind::Exists, format!("container {:?} already exists", req.id)));
        }
        if self.helpers.values().any(|h| h.job.holds(&req.id)) {
            return Err(Error::new(
                ErrorKind::Exists,
                format!("container {:?} is being created or deleted by the OCI runtime", req.id),
            ));
        }
        if let Some(bundle) = &req.bundle {
            runtime::check_bundle(bundle)?;
            let runtime = Runtime::resolve(req.runtime.as_deref(), &self.config.root)?;
            if runtime.state.join(&req.id).exists() {
                // Never `runtime delete` what an earlier supervisor left: it
                // may still run.
                return Err(Error::new(
                    ErrorKind::Exists,
                    format!(
                        "the OCI runtime already has a container {:?} in {} (left by an earlier supervisor?); remove it with `{} --root {} delete --force {}`",
                        req.id,
                        runtime.state.display(),
                        runtime.program.display(),
                        runtime.state.display(),
                        req.id
                    ),
                ));
            }
            std::fs::create_dir_all(&runtime.state)
                .map_err(|e| Error::os(ErrorKind::System, format!("create {}", runtime.state.display()), e))?;
            let stdio = self.open_stdio(req)?;
            let argv = runtime.argv(Job::Create, &req.id, Some(bundle));
            let pending = PendingCreate { req: req.clone(), reply, runtime };
            self.spawn_helper(argv, stdio, HelperJob::Create(Box::new(pending)))?;
            return Ok(None);
        }
        if req.runtime.is_some() {
            return Err(Error::new(ErrorKind::BadRequest, "\"runtime\" needs a \"bundle\""));
        }
        let stdio = self.open_stdio(req)?;
        let plan = Plan::new(req, stdio, &self.inherited)?;
        let spawned = spawn::spawn(plan, req.start)?;
        let instance =
            self.add_container(req, spawned.pid, spawned.pidfd, spawned.start, Some(spawned.status), None)?;
        if let Some(container) = self.containers.get_mut(&instance) {
            container.child_memory = Some(spawned.memory);
        }
        if req.start {
            self.start(instance, reply)?;
        }
        Ok(Some(instance))
    }

    /// The fds for a container's stdin, stdout and stderr.
    fn open_stdio(&self, req: &CreateRequest) -> Result<[Stdio; 3]> {
        let stdin = match &req.stdin {
            Some(path) => fifo::open_stdio(path, "stdin")?,
            None => Stdio::Shared(self.dev_null.as_raw_fd()),
        };
        let stdout = match &req.stdout {
            Some(path) => fifo::open_stdio(path, "stdout")?,
            None => Stdio::Inherit,
        };
        let stderr = match &req.stderr {
            Some(path) => fifo::open_stdio(path, "stderr")?,
            None => Stdio::Inherit,
        };
        Ok([stdin, stdout, stderr])
    }

    /// Records a new container process, created and waiting for `start`,
    /// and emits `created`; its instance is that event's seq.
    fn add_container(
        &mut self,
        req: &CreateRequest,
        pid: Pid,
        pidfd: OwnedFd,
        start_pipe: Option<OwnedFd>,
        status_pipe: Option<OwnedFd>,
        runtime: Option<Runtime>,
    ) -> Result<u64> {
        let instance = self.log.next_seq();
        let pidfd_token = match self.register(&pidfd, Source::Pidfd(instance), Interest::READABLE) {
            Ok(token) => token,
            Err(e) => {
                reaper::kill_and_reap(&pidfd);
                return Err(e);
            }
        };
        let id: Rc<str> = req.id.as_str().into();
        let mut container = Container {
            id: id.clone(),
            instance,
            status: Status::Creating,
            pid,
            pidfd: Some(pidfd),
            pidfd_token,
            start_pipe,
            status_pipe,
            status_seen: Vec::new(),
            child_memory: None,
            pending_start: None,
            pending_delete: Vec::new(),
            deleting: false,
            remove: req.remove,
            argv: req.argv.clone(),
            bundle: req.bundle.clone(),
            runtime,
            annotations: req.annotations.clone(),
            created_at: Timestamp::now(),
            started_at: None,
            stopped_at: None,
            exit: None,
            exec_error: None,
            events: Vec::with_capacity(4),
        };
        log::debug!("create {} argv {}", req.id, spawn::describe_argv(&req.argv));
        let event = container.transition(Status::Created, container.created_at);
        self.by_pid.insert(pid.as_raw_nonzero().get(), instance);
        self.by_id.insert(id, instance);
        self.containers.insert(instance, container);
        self.emit(instance, event);
        Ok(instance)
    }

    /// Runs an OCI runtime command as a helper process, watched by pidfd.
    fn spawn_helper(&mut self, argv: Vec<String>, stdio: [Stdio; 3], job: HelperJob) -> Result<()> {
        log::debug!("runtime: {}", spawn::describe_argv(&argv));
        let req = CreateRequest { argv, ..Default::default() };
        let spawned = spawn::spawn(Plan::new(&req, stdio, &self.inherited)?, true)?;
        let pid = spawned.pid.as_raw_nonzero().get();
        let token = match self.register(&spawned.pidfd, Source::Helper(pid), Interest::READABLE) {
            Ok(token) => token,
            Err(e) => {
                reaper::kill_and_reap(&spawned.pidfd);
                return Err(e);
            }
        };
        let helper = Helper { pidfd: spawned.pidfd, token, job, _status_pipe: spawned.status, _memory: spawned.memory };
        self.helpers.insert(pid, helper);
        Ok(())
    }

    /// Reaps every `runtime create` helper that has exited (registering its
    /// container); returns whether any did.
    fn settle_runtime_creates(&mut self) -> bool {
        let creates: Vec<i32> =
            self.helpers.iter().filter(|(_, h)| matches!(h.job, HelperJob::Create(_))).map(|(pid, _)| *pid).collect();
        let mut any = false;
        for pid in creates {
            any |= self.reap_helper(pid);
        }
        any
    }

    /// Reaps a helper and acts on how its runtime command ended.
    fn reap_helper(&mut self, pid: i32) -> bool {
        let Some(helper) = self.helpers.get(&pid) else { return false };
        let Some(exit) = reaper::reap_pidfd(&helper.pidfd) else { return false };
        let helper = self.helpers.remove(&pid).expect("looked up");
        self.deregister(&helper.pidfd, helper.token);
        match helper.job {
            HelperJob::Create(pending) => self.finish_runtime_create(*pending, exit),
            HelperJob::Start(instance) => self.finish_runtime_start(instance, exit),
            HelperJob::Delete { id, then } => {
                if exit.status != 0 {
                    log::warn!("runtime delete {id} exited with status {}", exit.status);
                }
                match then {
                    AfterDelete::Forget(instance) => self.forget(instance),
                    AfterDelete::FailCreate(reply, err) => self.reply(reply, Err(err)),
                    AfterDelete::Nothing => {}
                }
            }
        }
        true
    }

    fn finish_runtime_create(&mut self, pending: PendingCreate, exit: Exit) {
        let PendingCreate { req, reply, runtime } = pending;
        let result = (|| {
            if exit.status != 0 {
                return Err(Error::new(
                    ErrorKind::System,
                    format!(
                        "{} create {:?} exited with status {}: {}",
                        runtime.program.display(),
                        req.id,
                        exit.status,
                        runtime.last_log_line()
                    ),
                ));
            }
            let raw = runtime.read_pid(&req.id)?;
            let pid = Pid::from_raw(raw).ok_or_else(|| Error::new(ErrorKind::System, "runtime pid file holds 0"))?;
            // The init was reparented to us when `create` exited and cannot
            // have been reaped: it waits for `start`.
            let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
                .map_err(|e| Error::os(ErrorKind::System, format!("pidfd_open container init {raw}"), e))?;
            self.add_container(&req, pid, pidfd, None, None, Some(runtime.clone()))
        })();
        match result {
            Ok(instance) if req.start => {
                if let Err(e) = self.start(instance, reply.clone()) {
                    self.reply(reply, Err(e));
                }
            }
            Ok(instance) => {
                let described = self.describe(instance);
                self.reply(reply, Ok(described));
            }
            Err(e) => {
                log::warn!("create {}: {e}", req.id);
                // Clean what the runtime may have left, and answer (freeing
                // the id) only once that is done.
                let argv = runtime.argv(Job::Delete, &req.id, None);
                let _ = std::fs::remove_file(runtime.pid_file(&req.id));
                let job = HelperJob::Delete { id: req.id.clone(), then: AfterDelete::FailCreate(reply.clone(), e) };
                if let Err(spawn_err) = self.spawn_helper(argv, self.null_stdio(), job) {
                    log::warn!("runtime delete {}: {spawn_err}", req.id);
                    self.reply(reply, Err(spawn_err));
                }
            }
        }
    }

    fn finish_runtime_start(&mut self, instance: u64, exit: Exit) {
        let Some(container) = self.containers.get_mut(&instance) else { return };
        // Already settled when the container stopped first.
        if container.pending_start.is_none() {
            return;
        }
        if exit.status == 0 {
            return self.resolve_start(instance, ExecOutcome::Started);
        }
        let pending = container.pending_start.take().expect("checked");
        let runtime = container.runtime.as_ref().expect("a runtime container");
        let err = Error::new(
            ErrorKind::System,
            format!(
                "{} start {:?} exited with status {}: {}",
                runtime.program.display(),
                &*container.id,
                exit.status,
                runtime.last_log_line()
            ),
        );
        log::warn!("start: {err}");
        self.reply(pending.reply, Err(err));
    }

    fn null_stdio(&self) -> [Stdio; 3] {
        [Stdio::Shared(self.dev_null.as_raw_fd()), Stdio::Inherit, Stdio::Inherit]
    }

    fn handle_start(&mut self, id: &str, reply: Option<String>) -> Result<()> {
        let instance = self.lookup_instance(id)?;
        self.start(instance, reply)
    }

    /// Releases a created container; the reply waits for the exec outcome.
    fn start(&mut self, instance: u64, reply: Option<String>) -> Result<()> {
        let container = self.containers.get_mut(&instance).expect("caller checked the instance");
        container.require(Action::Start, "start")?;
        if container.pending_start.is_some() {
            return Err(Error::new(
                ErrorKind::WrongState,
                format!("cannot start container {:?}: it is being started already", &*container.id),
            ));
        }
        if let Some(runtime) = &container.runtime {
            let argv = runtime.argv(Job::Start, &container.id, None);
            self.spawn_helper(argv, self.null_stdio(), HelperJob::Start(instance))?;
            let token =
                self.helpers.values().find(|h| matches!(h.job, HelperJob::Start(i) if i == instance)).map(|h| h.token);
            let container = self.containers.get_mut(&instance).expect("still there");
            container.pending_start = Some(PendingStart { token: token.expect("just spawned"), reply });
            return Ok(());
        }
        // No start pipe: released at spawn already (create with start).
        let start = container.start_pipe.take();
        let Some(status) = container.status_pipe.take() else {
            return Err(Error::new(ErrorKind::WrongState, format!("cannot start container {:?}", &*container.id)));
        };
        // Registered first: once released, the outcome must be seen. The
        // outcome is whole only at end-of-file (the child's write end closes
        // on exec or death), so the loop waits for the hang-up alone: a pipe
        // never signals EPOLLPRI, and EPOLLHUP is always reported. Waking for
        // the released byte would cost every start one more wake-up.
        let token = self.register(&status, Source::ExecStatus(instance), Interest::PRIORITY)?;
        if let Some(Err(e)) = start.map(spawn::release) {
            self.deregister(&status, token);
            return Err(e);
        }
        let container = self.containers.get_mut(&instance).expect("still there");
        container.status_pipe = Some(status);
        container.pending_start = Some(PendingStart { token, reply });
        // The outcome may already be there; the edge for it is not lost
        // (registration reports a ready fd), so the loop will see it.
        Ok(())
    }

    fn handle_exec_status(&mut self, instance: u64) {
        let Some(container) = self.containers.get_mut(&instance) else { return };
        let Some(pipe) = &container.status_pipe else { return };
        let outcome = spawn::read_exec_outcome(pipe, &mut container.status_seen);
        if outcome != ExecOutcome::Pending {
            self.resolve_start(instance, outcome);
        }
    }

    /// Acts on the exec outcome: `started`, or the exec error for the reply
    /// and, once reaped, the `stopped` event.
    fn resolve_start(&mut self, instance: u64, outcome: ExecOutcome) {
        let Some(container) = self.containers.get_mut(&instance) else { return };
        let Some(pending) = container.pending_start.take() else { return };
        let pipe = container.status_pipe.take();
        container.status_seen = Vec::new();
        // The outcome is known: the child has exec'd or died, and no longer
        // reads the memory it shared with us.
        container.child_memory = None;
        if let Some(pipe) = &pipe {
            self.deregister(pipe, pending.token);
        }
        drop(pipe);
        let container = self.containers.get_mut(&instance).expect("still there");
        let result = match outcome {
            ExecOutcome::Started => {
                let event = container.transition(Status::Running, Timestamp::now());
                self.emit(instance, event);
                return self.reply(pending.reply, Ok(self.describe(instance)));
            }
            ExecOutcome::ExecFailed(errno) => {
                let err = std::io::Error::from_raw_os_error(errno);
                let message = format!("execve {}: {}", container.argv[0], describe_io(&err));
                container.exec_error = Some(message.clone());
                let code = spawn::exec_exit_code(errno);
                log::warn!("start {}: {message} (status {code})", container.id);
                (Error::new(ErrorKind::ExecFailed, format!("container {:?}: {message}", &*container.id)), code)
            }
            ExecOutcome::NeverStarted | ExecOutcome::Pending => {
                let Some(exit) = &container.exit else {
                    // It died before its start byte (a kill won the race):
                    // the reply waits for the reap, which says how.
                    container.pending_start = Some(pending);
                    return;
                };
                let message = format!("container {:?} stopped before it could start", &*container.id);
                (Error::new(ErrorKind::WrongState, message), exit.status)
            }
            ExecOutcome::SetupFailed(errno) => {
                let err = std::io::Error::from_raw_os_error(errno);
                let message = format!("set up container process: {}", describe_io(&err));
                container.exec_error = Some(message.clone());
                log::warn!("start {}: {message}", container.id);
                (
                    Error::new(ErrorKind::System, format!("container {:?}: {message}", &*container.id)),
                    spawn::SETUP_FAILED,
                )
            }
        };
        let (err, status) = result;
        let fields = json!({ "id": &*container.id, "instance": instance, "status": status });
        self.reply_value(pending.reply, protocol::error_reply(&err, fields));
    }

    fn handle_kill(&mut self, id: &str, signal: Option<&SignalArg>, all: bool) -> Result<Value> {
        let number = match signal {
            Some(s) => s.number()?,
            None => SIGTERM,
        };
        let container = self.lookup(id)?;
        container.require(Action::Kill, "kill")?;
        let result = signal_container(container, number, all);
        match result {
            Ok(()) => {}
            // ESRCH: it exited and awaits reaping; the reaper reports it.
            Err(Errno::SRCH) => log::debug!("kill {id}: already exited"),
            Err(e) => return Err(Error::os(ErrorKind::System, format!("kill container {id:?}"), e)),
        }
        log::info!("kill {id} {}{}", crate::signals::signal_name(number), if all { " (process group)" } else { "" });
        Ok(json!({}))
    }

    /// Deletes now (Some reply) or once the killed process is reaped (None).
    fn handle_delete(&mut self, id: &str, force: bool, reply: Option<String>) -> Result<Option<Value>> {
        let instance = self.lookup_instance(id)?;
        let container = self.containers.get_mut(&instance).expect("looked up");
        container.require(if force { Action::ForceDelete } else { Action::Delete }, "delete")?;
        if container.status == Status::Stopped {
            self.delete(instance, vec![reply]);
            return Ok(None);
        }
        if let Err(e) = signal_container(container, SIGKILL, true) {
            if e != Errno::SRCH {
                return Err(Error::os(ErrorKind::System, format!("kill container {id:?}"), e));
            }
        }
        container.pending_delete.push(reply);
        Ok(None)
    }

    fn handle_list(&self) -> Value {
        let mut all: Vec<&Container> = self.containers.values().collect();
        all.sort_by_key(|c| c.instance);
        json!({ "containers": all.iter().map(|c| c.state()).collect::<Vec<_>>() })
    }

    fn handle_subscribe(&mut self, req: &SubscribeRequest) -> Result<Value> {
        if let Some(ids) = &req.ids {
            for id in ids {
                protocol::validate_id(id)?;
            }
        }
        let fd = fifo::open_fifo_writer(&req.path, "subscriber fifo")?;
        // Publish what this iteration queued so far: the replay then holds
        // only journaled events, and everything later comes live.
        self.publish_events();
        let last_published = self.log.last_published();
        // The starting point: `since`, else now. Events after it are read
        // back in order; with ids and no `since`, their retained events
        // (all older) come first.
        let start = req.since.unwrap_or(last_published);
        let mut retained: BTreeMap<u64, Rc<Published>> = BTreeMap::new();
        let mut unknown = Vec::new();
        for id in req.ids.iter().flatten() {
            match self.by_id.get(id.as_str()).and_then(|i| self.containers.get(i)) {
                Some(c) if req.since.is_none() => retained.extend(c.events.iter().map(|e| (e.seq, e.clone()))),
                Some(_) => {}
                None => unknown.push(id.clone()),
            }
        }
        if req.since.is_some() {
            self.check_reach(start)?;
        }
        let filter = Filter {
            ids: req.ids.as_ref().map(|ids| ids.iter().cloned().collect()),
            types: req.types.as_ref().map_or(u8::MAX, |t| t.iter().fold(0, |bits, kind| bits | 1 << *kind as u8)),
            after: start,
        };
        let retained = retained.into_values().filter(|e| filter.wants(e.kind, &e.id)).collect();
        let catch_up = CatchUp { retained, next: start.saturating_add(1), cursor: None };
        let client = Client {
            sink: Sink::new(fd, self.config.subscriber_buffer),
            path: req.path.clone(),
            filter: Some(filter),
            catch_up: Some(catch_up),
        };
        let token = self.add_client(client)?;
        log::debug!("subscriber {} added from seq {}", req.path, start.saturating_add(1));
        self.handle_client(token, false);
        Ok(json!({ "next": self.log.next_seq(), "unknown": unknown }))
    }

    /// Refuses a `since` older than anything kept: a silent gap otherwise.
    fn check_reach(&self, since: u64) -> Result<()> {
        let want = since.saturating_add(1);
        if want > self.log.last_published() || self.log.recent_from(want).is_some() {
            return Ok(());
        }
        let first = self.journal.first_seq()?.unwrap_or(self.log.last_published() + 1);
        if first <= want {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Expired,
            format!(
                "events {want} to {} are no longer retained (the oldest kept is seq {first}); subscribe with since {} or later",
                first - 1,
                first - 1
            ),
        ))
    }

    // ---- events ----

    /// Queues an event and keeps it with its container for replay.
    fn emit(&mut self, instance: u64, event: Event) {
        let published = self.log.push(&event);
        if event.kind != EventType::Deleted {
            if let Some(container) = self.containers.get_mut(&instance) {
                container.events.push(published);
            }
        }
    }

    /// Journals the queued events, fans them out, then sends the replies.
    fn publish(&mut self) {
        self.publish_events();
        self.send_replies();
        for pidfd in self.exited_pidfds.drain(..) {
            let _ = self.poll.registry().deregister(&mut SourceFd(&pidfd.as_raw_fd()));
        }
    }

    /// Journals the queued events and fans them out.
    fn publish_events(&mut self) {
        let batch = self.log.take_pending();
        if !batch.is_empty() {
            if let Err(e) = self.journal.append(&batch) {
                log::error!("{e}");
            }
            let mut done = Vec::new();
            for (token, client) in self.clients.iter_mut() {
                let Some(filter) = &client.filter else { continue };
                // A subscriber still catching up reads these back later.
                if client.sink.is_closing() || client.catch_up.is_some() {
                    continue;
                }
                let mut pushed = false;
                for event in &batch {
                    if filter.matches(event.seq, event.kind, &event.id) {
                        pushed = true;
                        if !client.sink.push_event(event) {
                            log::warn!("subscriber {} overflowed at seq {}", client.path, event.seq);
                            break;
                        }
                    }
                }
                if pushed && client.sink.flush() == Flushed::Done {
                    done.push(*token);
                }
            }
            for token in done {
                self.drop_client(token);
            }
            // The log comes last: subscribers should not wait for it.
            if log::log_enabled!(log::Level::Info) {
                for event in &batch {
                    log::info!("{}", String::from_utf8_lossy(event.line.strip_suffix(b"\n").unwrap_or(&event.line)));
                }
            }
        }
    }

    // ---- exits and reaping ----

    /// A pidfd became readable: reap that container and publish its
    /// `stopped` at once. Other zombies are the SIGCHLD handler's: the same
    /// exit raised SIGCHLD, so its signalfd is ready in this poll or the next.
    fn handle_exit(&mut self, instance: u64) {
        self.reap_container(instance);
        self.publish_events();
    }

    /// SIGCHLD: empties the signalfd and reaps everything that exited.
    /// SIGCHLD is a standard signal: however many children exit, at most one
    /// is pending, so one read empties it (a later one makes a new edge).
    fn handle_child_exits(&mut self) {
        let mut buf = [0u8; 4 * std::mem::size_of::<libc::signalfd_siginfo>()];
        while matches!(rustix::io::read(&self.child_exits, &mut buf), Ok(n) if n == buf.len()) {}
        self.reap();
    }

    fn handle_signals(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for signal in pending {
            match signal {
                _ if self.config.init.is_some() => self.forward(signal),
                _ if SHUTDOWN_SIGNALS.contains(&signal) => {
                    log::info!("{} received: shutting down", crate::signals::signal_name(signal));
                    self.begin_shutdown(None);
                }
                _ => log::info!("{} received: ignored", crate::signals::signal_name(signal)),
            }
        }
    }

    /// Init mode: passes a signal on to `main`.
    fn forward(&mut self, signal: i32) {
        let main = self.init_main.and_then(|i| self.containers.get(&i));
        match main {
            Some(c) if container::can_kill(c.status) => {
                log::debug!("forwarding {} to main", crate::signals::signal_name(signal));
                let _ = signal_container(c, signal, false);
            }
            _ if matches!(signal, SIGTERM | SIGINT) => self.begin_shutdown(None),
            _ => {}
        }
    }

    /// Reaps every exited child: container processes through their pidfds,
    /// orphans by PID. SIGCHLD coalesces, so this loops until none is left.
    fn reap(&mut self) {
        loop {
            match reaper::peek_zombie() {
                Ok(Some(pid)) => match self.by_pid.get(&pid).copied() {
                    Some(instance) => {
                        if !self.reap_container(instance) {
                            log::error!("container pid {pid} is a zombie but its pidfd reports no exit");
                            break;
                        }
                    }
                    None if self.helpers.contains_key(&pid) => {
                        if !self.reap_helper(pid) {
                            log::error!("runtime helper pid {pid} is a zombie but its pidfd reports no exit");
                            break;
                        }
                    }
                    // An unknown zombie may be the init of a runtime
                    // container whose `runtime create` has exited but is not
                    // yet processed: settle those first, then look again.
                    None if self.settle_runtime_creates() && self.by_pid.contains_key(&pid) => {}
                    None => {
                        let exit = reaper::reap_orphan(pid);
                        log::debug!("reaped orphan {pid}: status {:?}", exit.map(|e| e.status));
                    }
                },
                Ok(None) => {
                    self.no_children = false;
                    break;
                }
                Err(errno) => {
                    self.no_children = errno == libc::ECHILD;
                    break;
                }
            }
        }
    }

    /// Reaps a container process if it exited; returns whether it did.
    fn reap_container(&mut self, instance: u64) -> bool {
        let Some(container) = self.containers.get(&instance) else { return false };
        let Some(pidfd) = &container.pidfd else { return false };
        let Some(mut exit) = reaper::reap_pidfd(pidfd) else { return false };
        // A process that exits at once after exec can be reaped before its
        // status pipe is read: settle `started` first (the pipe holds the
        // whole outcome now that the process is gone). Without a start, the
        // pipe may still name a setup failure.
        let container = self.containers.get_mut(&instance).expect("still there");
        // Known from here, for a start answered at the reap.
        container.exit = Some(exit.clone());
        if let Some(pipe) = &container.status_pipe {
            let outcome = spawn::read_exec_outcome(pipe, &mut container.status_seen);
            if container.pending_start.is_some() {
                self.resolve_start(instance, outcome);
            } else if let ExecOutcome::SetupFailed(errno) = outcome {
                let err = std::io::Error::from_raw_os_error(errno);
                container.exec_error = Some(format!("set up container process: {}", describe_io(&err)));
            }
        } else if container.pending_start.is_some() {
            // A runtime container whose init exited before `runtime start`
            // returned was started; any other died before its start byte.
            let outcome = if container.runtime.is_some() { ExecOutcome::Started } else { ExecOutcome::NeverStarted };
            self.resolve_start(instance, outcome);
        }
        let container = self.containers.get_mut(&instance).expect("still there");
        let pidfd = container.pidfd.take().expect("checked above");
        let token = container.pidfd_token;
        exit.error = container.exec_error.take();
        container.exit = Some(exit);
        container.start_pipe = None;
        container.status_pipe = None;
        container.child_memory = None;
        let pid = container.pid.as_raw_nonzero().get();
        let event = container.transition(Status::Stopped, Timestamp::now());
        let remove = container.remove;
        let waiting = std::mem::take(&mut container.pending_delete);
        let status = container.exit.as_ref().map_or(0, |e| e.status);
        // Closed once the event is out: subscribers wait for no syscall
        // they do not need.
        self.sources.remove(&token);
        self.exited_pidfds.push(pidfd);
        self.by_pid.remove(&pid);
        self.emit(instance, event);
        self.stopped_order.push_back(instance);
        self.stopped_count += 1;
        if remove || !waiting.is_empty() {
            self.delete(instance, waiting);
        }
        if self.init_main == Some(instance) {
            log::info!("main stopped with status {status}: shutting down");
            self.exit_code = status;
            self.begin_shutdown(None);
        }
        self.enforce_stopped_limit();
        true
    }

    /// Deletes a stopped container: at once, or, for an OCI runtime's, once
    /// `runtime delete` has run, so that its id is free again only when the
    /// runtime is done with it. Each of `replies` is answered then.
    fn delete(&mut self, instance: u64, replies: Vec<Option<String>>) {
        let Some(container) = self.containers.get_mut(&instance) else { return };
        debug_assert_eq!(container.status, Status::Stopped);
        container.pending_delete.extend(replies);
        if container.deleting {
            return;
        }
        container.deleting = true;
        self.stopped_count -= 1;
        if let Some(runtime) = &container.runtime {
            let id = container.id.to_string();
            let argv = runtime.argv(Job::Delete, &id, None);
            let job = HelperJob::Delete { id: id.clone(), then: AfterDelete::Forget(instance) };
            match self.spawn_helper(argv, self.null_stdio(), job) {
                Ok(()) => return,
                Err(e) => log::warn!("runtime delete {id}: {e}"),
            }
        }
        self.forget(instance);
    }

    /// Drops a deleted container's record, emits `deleted` and answers the
    /// delete requests.
    fn forget(&mut self, instance: u64) {
        let Some(container) = self.containers.remove(&instance) else { return };
        self.by_id.remove(&container.id);
        if let Some(runtime) = &container.runtime {
            let _ = std::fs::remove_file(runtime.pid_file(&container.id));
        }
        let event = container.deleted_event(Timestamp::now());
        self.emit(instance, event);
        for reply in container.pending_delete {
            self.reply(reply, Ok(json!({})));
        }
        // Keep the order queue from growing with containers deleted by hand.
        while self.stopped_order.front().is_some_and(|i| !self.containers.contains_key(i)) {
            self.stopped_order.pop_front();
        }
        if self.stopped_order.len() > 2 * self.stopped_count + 64 {
            let containers = &self.containers;
            self.stopped_order.retain(|i| containers.contains_key(i));
        }
    }

    /// Deletes the oldest stopped containers beyond the configured number.
    fn enforce_stopped_limit(&mut self) {
        while self.stopped_count > self.config.max_stopped {
            let Some(oldest) = self.stopped_order.pop_front() else { break };
            if self.containers.get(&oldest).is_some_and(|c| c.status == Status::Stopped && !c.deleting) {
                log::debug!("deleting stopped container instance {oldest}: over --max-stopped");
                self.delete(oldest, Vec::new());
            }
        }
    }

    // ---- shutdown ----

    fn begin_shutdown(&mut self, reply: Option<String>) {
        if let Some(shutdown) = &mut self.shutdown {
            shutdown.replies.push(reply);
            return;
        }
        log::info!("shutdown: SIGTERM to every container, SIGKILL after {:?}", self.config.grace);
        if let Some(socket) = &self.config.notify {
            notify(socket, "STOPPING=1");
        }
        for container in self.containers.values() {
            if container.pidfd.is_some() {
                let _ = signal_container(container, SIGTERM, true);
            }
        }
        self.shutdown = Some(Shutdown {
            deadline: Instant::now() + self.config.grace,
            killed: false,
            orphans_signalled: false,
            replies: vec![reply],
        });
    }

    /// One shutdown step; returns true when nothing is left to wait for.
    fn advance_shutdown(&mut self) -> bool {
        self.reap();
        let containers_left = self.containers.values().any(|c| c.pidfd.is_some());
        let shutdown = self.shutdown.as_mut().expect("shutting down");
        if !containers_left && !shutdown.orphans_signalled {
            // Descendants that left their container's process group were
            // reparented to us: they get the same SIGTERM and grace.
            shutdown.orphans_signalled = true;
            self.clean_runtime_state();
            // Runtime helpers (a `runtime delete`) are let finish.
            let helpers: HashSet<i32> = self.helpers.keys().copied().collect();
            signal_children(Signal::TERM, &helpers);
            self.reap();
        }
        let shutdown = self.shutdown.as_mut().expect("shutting down");
        if !containers_left && self.no_children {
            return true;
        }
        if Instant::now() >= shutdown.deadline && !shutdown.killed {
            shutdown.killed = true;
            log::warn!("shutdown: grace period over, SIGKILL to what is left");
            for container in self.containers.values() {
                if container.pidfd.is_some() {
                    let _ = signal_container(container, SIGKILL, true);
                }
            }
        }
        if self.shutdown.as_ref().expect("shutting down").killed {
            // Everything was sent SIGKILL; new orphans may still appear as
            // their parents die, so kill and reap until no child is left,
            // sparing only the runtime helpers that clean up after the
            // runtime's containers once those are gone.
            for _ in 0..1000 {
                self.reap();
                let containers_left = self.containers.values().any(|c| c.pidfd.is_some());
                let shutdown = self.shutdown.as_mut().expect("shutting down");
                if !containers_left && !shutdown.orphans_signalled {
                    shutdown.orphans_signalled = true;
                    self.clean_runtime_state();
                }
                if self.no_children && self.helpers.is_empty() {
                    break;
                }
                let helpers: HashSet<i32> = self.helpers.keys().copied().collect();
                signal_children(Signal::KILL, &helpers);
                let mut events = Events::with_capacity(64);
                let _ = self.poll.poll(&mut events, Some(Duration::from_millis(10)));
                self.drain_exits(&events);
            }
            return true;
        }
        false
    }

    /// At shutdown, once every container stopped: `runtime delete` for each
    /// runtime container not being deleted already, so that neither its state
    /// nor its cgroups outlive the supervisor.
    fn clean_runtime_state(&mut self) {
        let jobs: Vec<(String, Vec<String>)> = self
            .containers
            .values()
            .filter(|c| !c.deleting)
            .filter_map(|c| c.runtime.as_ref().map(|r| (c.id.to_string(), r.argv(Job::Delete, &c.id, None))))
            .collect();
        for (id, argv) in jobs {
            let job = HelperJob::Delete { id: id.clone(), then: AfterDelete::Nothing };
            if let Err(e) = self.spawn_helper(argv, self.null_stdio(), job) {
                log::warn!("runtime delete {id}: {e}");
            }
        }
    }

    /// On the way out: answers every complete request in the control FIFO
    /// with `shutting_down`, so no client waits for a reply that never
    /// comes. Returns true at end-of-file (no writer has `ctl` open).
    fn refuse_pending_requests(&mut self) -> bool {
        let mut buf = [0u8; 16 * 1024];
        let eof = loop {
            match rustix::io::read(&self.ctl, &mut buf) {
                Ok(0) => break true,
                Ok(n) => self.ctl_buf.extend_from_slice(&buf[..n]),
                Err(Errno::INTR) => continue,
                Err(_) => break false,
            }
        };
        let complete = self.ctl_buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let held: Vec<u8> = self.ctl_buf.drain(..complete).collect();
        for line in held.split(|b| *b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)) {
            let parsed = protocol::parse_line(line);
            let err = Error::new(ErrorKind::ShuttingDown, "the supervisor is shutting down");
            log::warn!("request refused: {err}");
            self.reply(parsed.reply, Err(err));
        }
        eof
    }

    /// Stops being a writer of `ctl`: it is read through a new read-only
    /// description from here on, so that end-of-file tells when the last
    /// client that still has it open is done.
    fn stop_writing_ctl(&mut self) {
        let reopened = fs_open_self_fd(&self.ctl);
        match reopened {
            Ok(fd) => {
                let _ = self.poll.registry().deregister(&mut SourceFd(&self.ctl.as_raw_fd()));
                self.ctl = fd;
                if let Err(e) =
                    self.poll.registry().register(&mut SourceFd(&self.ctl.as_raw_fd()), CTL, Interest::READABLE)
                {
                    log::warn!("register control fifo: {}", describe_io(&e));
                }
            }
            Err(e) => log::warn!("reopen control fifo read-only: {}", describe_io(&e.into())),
        }
    }

    /// At the end, for subscribers that did not read their last events: ends
    /// each stream with an overflow line naming the first event it missed.
    fn cut_off_subscribers(&mut self) {
        for client in self.clients.values_mut().filter(|c| c.filter.is_some() && c.owes()) {
            let owed = client.catch_up.take().map(|c| c.retained.front().map_or(c.next, |e| e.seq));
            if client.sink.cut_off(owed) {
                log::warn!(
                    "shutdown: subscriber {} did not read its last events; it gets an overflow line",
                    client.path
                );
            }
            if client.sink.flush() != Flushed::Done {
                log::warn!("shutdown: subscriber {}: no room left for the overflow line", client.path);
            }
        }
    }

    /// Handles pidfd events that arrived during the final kill loop.
    fn drain_exits(&mut self, events: &Events) {
        for event in events.iter() {
            if event.token() == CHILD_EXITS {
                self.handle_child_exits();
                continue;
            }
            match self.sources.get(&event.token()).copied() {
                Some(Source::Pidfd(instance)) => {
                    self.reap_container(instance);
                }
                Some(Source::Helper(pid)) => {
                    self.reap_helper(pid);
                }
                Some(Source::Client) => self.handle_client(event.token(), event.is_error()),
                _ => {}
            }
        }
    }

    /// Publishes the last events, answers `shutdown`, lets subscribers drain
    /// for a moment, and returns the exit code.
    fn finish(mut self) -> i32 {
        self.reap();
        // No new client can open `ctl` from here on (it finds no supervisor
        // at once); what is already in it, or written by a client that opened
        // it before, is answered shutting_down below and while subscribers
        // drain. The next supervisor on this root makes `ctl` anew.
        let _ = std::fs::remove_file(self.config.root.join(root::CTL_FILE));
        self.stop_writing_ctl();
        let mut ctl_done = self.refuse_pending_requests();
        let replies = self.shutdown.take().map(|s| s.replies).unwrap_or_default();
        for reply in replies {
            self.reply(reply, Ok(json!({})));
        }
        self.publish();
        // A sink whose writable edge was taken by an earlier poll gets no
        // new one: try each once more before waiting.
        let tokens: Vec<Token> = self.clients.keys().copied().collect();
        for token in tokens {
            self.handle_client(token, false);
        }
        // Until subscribers have their last events and every client that
        // opened `ctl` has closed it: while subscribers read, for up to
        // FINAL_FLUSH_MAX; a subscriber that reads nothing for FINAL_FLUSH is
        // cut off, with an overflow line, so that its gap is not silent.
        let give_up = Instant::now() + FINAL_FLUSH_MAX;
        let mut deadline = Instant::now() + FINAL_FLUSH;
        let mut events = Events::with_capacity(64);
        while !ctl_done || self.clients.values().any(Client::owes) {
            let left = deadline.min(give_up).saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.cut_off_subscribers();
                break;
            }
            if self.poll.poll(&mut events, Some(left)).is_err() {
                continue;
            }
            for event in events.iter() {
                if event.token() == CTL && !ctl_done {
                    // Still reachable while subscribers drain: say no.
                    ctl_done = self.refuse_pending_requests();
                    self.send_replies();
                    if ctl_done {
                        let _ = self.poll.registry().deregister(&mut SourceFd(&self.ctl.as_raw_fd()));
                    }
                } else if self.clients.contains_key(&event.token()) {
                    self.handle_client(event.token(), event.is_error());
                    deadline = Instant::now() + FINAL_FLUSH;
                }
            }
        }
        log::info!("supervisor exits with status {}", self.exit_code);
        self.exit_code
    }
}

/// Signals a container's process (through its pidfd) or, with `all`, its
/// process group (its PID: it leads its own session). The process is
/// unreaped while this is called, so neither PID nor group can be reused.
fn signal_container(container: &Container, signal: i32, all: bool) -> std::result::Result<(), Errno> {
    let Some(pidfd) = &container.pidfd else { return Err(Errno::SRCH) };
    // SAFETY: `signal` is a number in 1..=64, checked by the caller.
    let sig = unsafe { Signal::from_raw_unchecked(signal) };
    if all {
        match rustix::process::kill_process_group(container.pid, sig) {
            // The group may be gone while the leader is a zombie.
            Ok(()) | Err(Errno::SRCH) => {}
            Err(e) => return Err(e),
        }
    }
    rustix::process::pidfd_send_signal(pidfd.as_fd(), sig)
}

fn signal_children(signal: Signal, except: &HashSet<i32>) {
    for pid in reaper::children().into_iter().filter(|p| !except.contains(p)) {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

/// A new read-only open file description of the FIFO behind `fd` (through
/// /proc/self/fd, which works after the path was removed).
fn fs_open_self_fd(fd: &OwnedFd) -> rustix::io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::fs::open(path, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, rustix::fs::Mode::empty())
}

/// Writes what a client has queued and, for a subscriber catching up,
/// queues more of its replay, a pipe's worth at a time, until the pipe is
/// full, its turn is over, or it reaches the live stream.
fn feed(client: &mut Client, log: &EventLog, journal: &Journal) -> Fed {
    let mut seen = 0;
    loop {
        match client.sink.flush() {
            Flushed::Done => return Fed::Done,
            Flushed::Pending => return Fed::Pending,
            Flushed::Drained => {}
        }
        let (Some(catch_up), Some(filter)) = (client.catch_up.as_mut(), client.filter.as_mut()) else {
            return Fed::Drained;
        };
        if seen >= REPLAY_TURN {
            return Fed::Again;
        }
        match refill(catch_up, filter, &mut client.sink, log, journal) {
            Ok(Some(bytes)) => seen += bytes,
            Ok(None) => {
                // Live from here: everything up to `next` was queued, and
                // what is published next is fanned out to it.
                filter.after = filter.after.max(catch_up.next - 1);
                client.catch_up = None;
            }
            Err(next) => {
                log::warn!("subscriber {}: events from seq {next} are no longer in the journal", client.path);
                client.sink.cut_off(Some(next));
                client.catch_up = None;
            }
        }
    }
}

/// Queues the next part of a replay, about [`REPLAY_CHUNK`] bytes looked
/// at, within the sink's limit. Returns the bytes looked at, None once caught
/// up with what is published, or Err(seq) when the events from seq on are
/// gone (rotated out of the journal, or never written to it).
fn refill(
    catch_up: &mut CatchUp,
    filter: &Filter,
    sink: &mut Sink,
    log: &EventLog,
    journal: &Journal,
) -> std::result::Result<Option<usize>, u64> {
    let mut seen = 0;
    while let Some(event) = catch_up.retained.front() {
        if seen >= REPLAY_CHUNK || !sink.has_room(event.line.len()) {
            return Ok(Some(seen));
        }
        seen += event.line.len();
        sink.push_replay(catch_up.retained.pop_front().expect("looked at"));
    }
    if catch_up.next > log.last_published() {
        return Ok(None);
    }
    if let Some(recent) = log.recent_from(catch_up.next) {
        catch_up.cursor = None;
        for event in recent {
            let wanted = filter.matches(event.seq, event.kind, &event.id);
            if seen >= REPLAY_CHUNK || (wanted && !sink.has_room(event.line.len())) {
                break;
            }
            seen += event.line.len();
            if wanted {
                sink.push_replay(event.clone());
            }
            catch_up.next = event.seq + 1;
        }
        return Ok(Some(seen));
    }
    // Older than the ring: from the journal, a chunk of lines at a time.
    let cursor = match catch_up.cursor.as_mut() {
        Some(cursor) => cursor,
        None => catch_up.cursor.insert(journal.seek(catch_up.next).map_err(|e| {
            log::warn!("{e}");
            catch_up.next
        })?),
    };
    // A copy reads ahead; the cursor itself moves line by line below, as
    // far as the lines are taken.
    let mut ahead = *cursor;
    let lines = match journal.read(&mut ahead, REPLAY_CHUNK.min(sink.room())) {
        Ok(journal::Lines::Some(lines)) => lines,
        // The ring does not reach back and the journal has nothing more:
        // those events were never journaled (a failed write).
        Ok(journal::Lines::End) | Ok(journal::Lines::Gone) => return Err(catch_up.next),
        Err(e) => {
            log::warn!("{e}");
            return Err(catch_up.next);
        }
    };
    for line in lines {
        seen += line.bytes.len();
        if line.seq > catch_up.next {
            return Err(catch_up.next);
        }
        if line.seq == catch_up.next {
            if let Some(event) = Published::from_line(line.seq, line.bytes) {
                if filter.matches(event.seq, event.kind, &event.id) {
                    if !sink.has_room(event.line.len()) {
                        // No room: the cursor stays before this line.
                        return Ok(Some(seen));
                    }
                    sink.push_replay(Rc::new(event));
                }
            }
            catch_up.next += 1;
        }
        *cursor = line.next;
    }
    Ok(Some(seen))
}

/// Blocks SIGCHLD and returns a signalfd for it. SIGCHLD goes through a
/// signalfd, not a handler like the other signals: every container exit
/// raises it, and a handler (signal-hook's writes a socket) interrupts
/// epoll_wait and costs a second wake-up on the exit path, which is what the
/// latency benchmark measures. Children get an empty mask back (spawn).
fn child_exit_fd() -> Result<OwnedFd> {
    // SAFETY: plain libc calls on local, initialized sigset_t values;
    // signalfd(2) returns a new fd that we own (rustix has no signalfd).
    unsafe {
        // An inherited SIG_IGN (or SA_NOCLDWAIT) would have the kernel reap
        // every child itself: no SIGCHLD, and waitid finds no status.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        if libc::sigaction(SIGCHLD, &dfl, std::ptr::null_mut()) != 0 {
            return Err(Error::os(ErrorKind::System, "reset SIGCHLD", std::io::Error::last_os_error()));
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, SIGCHLD);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(Error::os(ErrorKind::System, "block SIGCHLD", std::io::Error::last_os_error()));
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(Error::os(ErrorKind::System, "signalfd SIGCHLD", std::io::Error::last_os_error()));
        }
        Ok(std::os::fd::FromRawFd::from_raw_fd(fd))
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (every container holds
/// fds here) and returns the original, which children get back.
fn raise_nofile_limit() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
    // SAFETY: valid in-pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return None;
    }
    Some(limit)
}

const _: () = assert!(MAX_LINE <= MAX_HELD_LINE);
