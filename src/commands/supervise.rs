//! `pidvisor supervise`: runs the supervisor in the foreground.

use std::path::PathBuf;
use std::time::Duration;

use pidvisor_supervisor::{Config, Supervisor};

use super::common::{parse_duration, parse_size, FAILED, PIDVISOR_FAILED};

/// Run the supervisor in the foreground.
///
/// It takes the root's lock, creates the control FIFO `ctl`, becomes the
/// subreaper of everything it launches and serves requests until SIGTERM,
/// SIGINT, SIGHUP (unless started ignoring it, as by nohup), SIGQUIT or
/// `pidvisor shutdown`. Then it sends SIGTERM to every running container,
/// SIGKILL after --grace, reaps everything and exits 0. SIGUSR1 and SIGUSR2
/// are ignored.
///
/// With a command after `--` (init mode), it runs that command as container
/// `main`, forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and
/// SIGWINCH to it, and exits with main's status once it stops. It works as
/// PID 1 of a container.
///
/// Logs go to stderr: every lifecycle transition at info, only warnings in
/// init mode (RUST_LOG=debug for more).
///
/// Examples:
///   pidvisor --root /tmp/ci supervise &
///   pidvisor supervise --notify            # under systemd, Type=notify
///   pidvisor supervise -- /app/server      # as a container's PID 1
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Send READY=1 and STOPPING=1 to $NOTIFY_SOCKET (systemd Type=notify).
    #[arg(long)]
    notify: bool,

    /// How long shutdown waits after SIGTERM before SIGKILL (10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    grace: Duration,

    /// Stopped containers kept for `state`, `wait` and replay; beyond this
    /// the oldest are deleted (with their `deleted` events).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    max_stopped: usize,

    /// Recent events kept in memory to serve `event --since` (older ones
    /// are read back from the journal).
    #[arg(long, default_value_t = 4096, value_name = "N")]
    retained_events: usize,

    /// Bytes a subscriber may have queued before it gets an `overflow` line
    /// and end-of-file (64K, 1M).
    #[arg(long, default_value = "1M", value_parser = parse_size, value_name = "SIZE")]
    subscriber_buffer: u64,

    /// Size of events.jsonl before it is rotated to events.jsonl.1.
    #[arg(long, default_value = "16M", value_parser = parse_size, value_name = "SIZE")]
    journal_size: u64,

    /// Init mode: the command to run as container `main`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Runs the supervisor; returns its exit code.
pub fn run(args: Args, root: PathBuf) -> i32 {
    // Before anything opens an fd: whatever we inherited is not ours to pass on.
    pidvisor_supervisor::supervisor::sanitize_inherited_fds();
    // As PID 1 of a container the supervisor speaks only of trouble, like
    // tini; as a service it logs every lifecycle transition.
    let level = if args.command.is_empty() { "info" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).format_target(false).init();
    let mut config = Config::new(root);
    // Taken out of the environment either way: containers must not see it.
    let socket = pidvisor_supervisor::notify::take_notify_socket();
    if args.notify {
        if socket.is_none() {
            log::warn!("--notify: NOTIFY_SOCKET is not set; nothing will be notified");
        }
        config.notify = socket;
    }
    config.grace = args.grace;
    config.max_stopped = args.max_stopped;
    config.retained_events = args.retained_events;
    config.subscriber_buffer = usize::try_from(args.subscriber_buffer).unwrap_or(usize::MAX);
    config.journal_size = args.journal_size;
    let init = !args.command.is_empty();
    if init {
        config.init = Some(args.command);
    }
    match Supervisor::new(config) {
        Ok(supervisor) => supervisor.run(),
        Err(e) => {
            log::error!("{e}");
            if init {
                PIDVISOR_FAILED
            } else {
                FAILED
            }
        }
    }
}
