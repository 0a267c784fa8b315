//! What several verbs share: printing errors and data, exit codes, and
//! waiting for a container's `stopped` event while forwarding signals.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::{Client, ClientError, Next, Subscription, Watch};

/// Exit code: the operation failed.
pub const FAILED: i32 = 1;
/// Exit code of `wait`, `run`, `create --wait` when pidvisor itself failed.
pub const PIDVISOR_FAILED: i32 = 125;
/// Exit code of `event --timeout` when nothing matched in time.
pub const TIMED_OUT: i32 = 124;

/// Prints an error on stderr as "pidvisor VERB: message".
pub fn report(verb: &str, err: &dyn std::fmt::Display) {
    eprintln!("pidvisor {verb}: {err}");
}

/// Prints one line of data on stdout. A closed stdout (`| head`) ends the
/// process quietly, with status 0.
pub fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// Checks a container id on the command line, so that a malformed one is
/// a usage error (status 2) before anything is sent or started.
pub fn parse_id(text: &str) -> Result<String, String> {
    pidvisor_supervisor::protocol::validate_id(text).map(|()| text.to_string()).map_err(|e| e.to_string())
}

/// Parses "10s", "500ms", "2m", "1h" or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("invalid duration {text:?} (try 10s, 500ms, 2m)"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("invalid duration unit {unit:?} in {text:?} (use ms, s, m or h)")),
    };
    if !value.is_finite() || value < 0.0 || value * scale > 1e9 {
        return Err(format!("invalid duration {text:?}"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

/// Parses a byte size: "1048576", "64K", "1M", "1G".
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, scale) = match text.char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&text[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&text[..i], 1 << 30),
        _ => (text, 1),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("invalid size {text:?} (try 65536, 64K, 1M)"))
}

/// Signals forwarded by `run` and `create --wait` to their container, so
/// that Ctrl-C and `kill` of the client reach the command as if it ran
/// directly.
const FORWARDED: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// A self-pipe for the forwarded signals.
pub struct SignalForwarder {
    read: OwnedFd,
    _ids: Vec<signal_hook::SigId>,
    flags: Vec<(i32, std::sync::Arc<std::sync::atomic::AtomicBool>)>,
}

impl SignalForwarder {
    /// Installs the handlers.
    pub fn install() -> Option<Self> {
        let (read, write) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK).ok()?;
        let write = std::os::unix::net::UnixStream::from(write);
        let mut ids = Vec::new();
        let mut flags = Vec::new();
        for sig in FORWARDED {
            let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            ids.push(signal_hook::flag::register(sig, flag.clone()).ok()?);
            ids.push(signal_hook::low_level::pipe::register(sig, write.try_clone().ok()?).ok()?);
            flags.push((sig, flag));
        }
        Some(SignalForwarder { read, _ids: ids, flags })
    }

    /// The pipe to poll.
    pub fn fd(&self) -> &OwnedFd {
        &self.read
    }

    /// The signals that arrived since the last call.
    pub fn take(&self) -> Vec<i32> {
        let mut buf = [0u8; 64];
        while matches!(rustix::io::read(&self.read, &mut buf), Ok(n) if n > 0) {}
        self.flags
            .iter()
            .filter(|(_, flag)| flag.swap(false, std::sync::atomic::Ordering::SeqCst))
            .map(|(sig, _)| *sig)
            .collect()
    }
}

/// Reads `sub` until the `stopped` event of `id` (and `instance`, once
/// known) — and, with `until_deleted`, its `deleted` too (so that the id is
/// free when `run --rm` returns); forwards signals to the container
/// meanwhile. Returns the status.
pub fn wait_for_stop(
    client: &Client,
    sub: &mut Subscription,
    id: &str,
    instance: impl Fn() -> Option<u64>,
    forward: Option<&SignalForwarder>,
    until_deleted: bool,
) -> Result<i32, ClientError> {
    let mut status = None;
    loop {
        match sub.next_line(None, forward.map(|f| Watch::Readable(f.fd())))? {
            Next::Line(line) => {
                let event: Value = serde_json::from_str(&line).map_err(|_| ClientError::Protocol(line.clone()))?;
                if event["type"] == "overflow" {
                    return Err(ClientError::Protocol("the subscription overflowed".into()));
                }
                let mine = event["id"] == id && instance().is_none_or(|i| event["instance"].as_u64() == Some(i));
                if mine && event["type"] == "stopped" {
                    let code = event["status"].as_i64().map(|s| s as i32).ok_or(ClientError::Protocol(line))?;
                    if !until_deleted {
                        return Ok(code);
                    }
                    status = Some(code);
                } else if let (true, "deleted", Some(code)) = (mine, event["type"].as_str().unwrap_or(""), status) {
                    return Ok(code);
                }
            }
            // The status is known; the supervisor went away before `deleted`.
            Next::End if status.is_some() => return Ok(status.unwrap_or_default()),
            Next::End => return Err(ClientError::SupervisorGone),
            Next::Timeout => return Err(ClientError::Timeout),
            Next::Interrupted => {
                for sig in forward.map(SignalForwarder::take).unwrap_or_default() {
                    let mut req = json!({"op": "kill", "id": id, "signal": sig});
                    // Fire and forget would lose errors; a short wait is fine.
                    let _ = client.request_raw(&mut req, Some(Instant::now() + Duration::from_secs(10)));
                }
            }
        }
    }
}

/// The create request fields shared by `create` and `run`.
pub struct CreateFields<'a> {
    pub id: &'a str,
    pub argv: &'a [String],
    pub cwd: Option<&'a Path>,
    pub env: &'a [String],
    pub stdin: Option<&'a Path>,
    pub stdout: Option<&'a Path>,
    pub stderr: Option<&'a Path>,
    pub bundle: Option<&'a Path>,
    pub runtime: Option<&'a str>,
    /// Attach the container to the caller's own stdio where no path is given.
    pub attach: bool,
}

impl CreateFields<'_> {
    /// The JSON request. The environment is the caller's, with `--env`
    /// applied, so the command runs as if started from this shell.
    pub fn to_request(&self) -> Result<Value, String> {
        let mut env: std::collections::BTreeMap<String, String> =
            std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect();
        for pair in self.env {
            match pair.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    env.insert(k.to_string(), v.to_string());
                }
                _ => return Err(format!("--env {pair:?}: expected NAME=VALUE")),
            }
        }
        let cwd = match self.cwd {
            Some(dir) => absolute(dir)?,
            None => {
                std::env::current_dir().map_err(|e| format!("current directory: {e}"))?.to_string_lossy().into_owned()
            }
        };
        let mut req = match self.bundle {
            // The bundle's config.json says what runs, where and with what.
            Some(bundle) => json!({ "op": "create", "id": self.id, "bundle": absolute(bundle)? }),
            None => json!({ "op": "create", "id": self.id, "argv": self.argv, "env": env, "cwd": cwd }),
        };
        if let Some(runtime) = self.runtime {
            req["runtime"] = runtime.into();
        }
        let me = std::process::id();
        for (name, given, fd) in [("stdin", self.stdin, 0), ("stdout", self.stdout, 1), ("stderr", self.stderr, 2)] {
            if let Some(path) = given {
                req[name] = absolute(path)?.into();
            } else if self.attach {
                // The supervisor opens our own fd through /proc: ttys,
                // pipes and files work; the container then writes directly.
                req[name] = format!("/proc/{me}/fd/{fd}").into();
            }
        }
        Ok(req)
    }
}

fn absolute(path: &Path) -> Result<String, String> {
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| format!("current directory: {e}"))?.join(path)
    };
    full.into_os_string().into_string().map_err(|p| format!("path {p:?} is not UTF-8"))
}

/// Writes the pid file for `--pid-file`.
pub fn write_pid_file(path: &Path, pid: i64) -> Result<(), String> {
    std::fs::write(path, format!("{pid}\n")).map_err(|e| format!("write pid file {}: {e}", path.display()))
}
