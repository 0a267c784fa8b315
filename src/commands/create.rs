//! `pidvisor create`: creates a container that waits for `start`.

use std::cell::Cell;
use std::path::PathBuf;

use serde_json::Value;

use super::common::{
    parse_id, report, wait_for_stop, write_pid_file, CreateFields, SignalForwarder, FAILED, PIDVISOR_FAILED,
};
use crate::client::Client;

/// Create a container: its process is set up but does not exec until
/// `pidvisor start`.
///
/// The process gets its own session, the given cwd, environment (yours,
/// with --env applied) and stdio, default signal dispositions and no fds
/// beyond 0-2. Without --stdout/--stderr its output goes to the supervisor's
/// own stdout and stderr; with --wait it is attached to yours.
///
/// With --wait, `create` stays until the container stops and exits with its
/// status (forwarding SIGINT, SIGTERM, SIGHUP and SIGQUIT to it meanwhile).
/// When no supervisor runs on the root, one is started in the background.
///
/// With --bundle, the container is an OCI bundle run through an OCI runtime
/// (runc or crun): `runtime create` makes it, `pidvisor start` runs
/// `runtime start`, and the container process is the runtime's init.
///
/// The race-free hook workflow:
///   pidvisor create --wait web -- ./server &
///   pidvisor event --type created web && ./hook && pidvisor start web
///   fg    # the server's exit status
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Stay until the container stops; exit with its status.
    #[arg(long)]
    wait: bool,

    #[command(flatten)]
    pub options: Options,

    /// The container's id: 1-64 of [A-Za-z0-9_.-], starting alphanumeric.
    #[arg(value_parser = parse_id)]
    pub id: String,

    /// The command and its arguments (not with --bundle).
    #[arg(last = true, required_unless_present = "bundle", value_name = "CMD")]
    pub command: Vec<String>,
}

/// The options `create` and `run` share.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Working directory [default: the current one].
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,

    /// Set an environment variable (repeatable).
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    pub env: Vec<String>,

    /// Read stdin from this file or FIFO.
    #[arg(long, value_name = "FILE")]
    pub stdin: Option<PathBuf>,

    /// Append stdout to this file (created if missing) or FIFO.
    #[arg(long, value_name = "FILE")]
    pub stdout: Option<PathBuf>,

    /// Append stderr to this file (created if missing) or FIFO.
    #[arg(long, value_name = "FILE")]
    pub stderr: Option<PathBuf>,

    /// Write the container process's PID to this file.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,

    /// Run an OCI bundle (a directory with config.json) through an OCI
    /// runtime instead of a command.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["cwd", "env"])]
    pub bundle: Option<PathBuf>,

    /// The OCI runtime for --bundle: runc, crun or a path [default: runc,
    /// else crun].
    #[arg(long, value_name = "RUNTIME", requires = "bundle")]
    pub runtime: Option<String>,
}

impl Options {
    /// The create request for `id` running `command`.
    pub fn request(&self, id: &str, command: &[String], attach: bool) -> Result<Value, String> {
        CreateFields {
            id,
            argv: command,
            cwd: self.cwd.as_deref(),
            env: &self.env,
            stdin: self.stdin.as_deref(),
            stdout: self.stdout.as_deref(),
            stderr: self.stderr.as_deref(),
            bundle: self.bundle.as_deref(),
            runtime: self.runtime.as_deref(),
            attach,
        }
        .to_request()
    }
}

/// Runs `create`.
pub fn run(args: Args, root: PathBuf) -> i32 {
    let fail = if args.wait { PIDVISOR_FAILED } else { FAILED };
    let request = match args.options.request(&args.id, &args.command, args.wait) {
        Ok(r) => r,
        Err(e) => {
            report("create", &e);
            return 2;
        }
    };
    let client = Client::new(root);
    if let Err(e) = client.ensure_supervisor() {
        report("create", &e);
        return fail;
    }
    // With --wait: subscribe before creating, so the stop cannot be missed.
    let mut sub = if args.wait {
        match client.subscribe(serde_json::json!({"ids": [&args.id], "types": ["stopped"]})) {
            Ok(s) => Some(s),
            Err(e) => {
                report("create", &e);
                return fail;
            }
        }
    } else {
        None
    };
    let reply = match client.request(request) {
        Ok(reply) => reply,
        Err(e) => {
            report("create", &e);
            return fail;
        }
    };
    if let Some(path) = &args.options.pid_file {
        if let Err(e) = write_pid_file(path, reply["pid"].as_i64().unwrap_or(0)) {
            report("create", &e);
        }
    }
    let Some(sub) = sub.as_mut() else { return 0 };
    let instance = Cell::new(reply["instance"].as_u64());
    let forwarder = SignalForwarder::install();
    match wait_for_stop(&client, sub, &args.id, || instance.get(), forwarder.as_ref(), false) {
        Ok(status) => status,
        Err(e) => {
            report("create", &e);
            PIDVISOR_FAILED
        }
    }
}
