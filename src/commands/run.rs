//! `pidvisor run`: create + start + wait, like running the command directly.

use std::path::PathBuf;

use serde_json::json;

use super::common::{parse_id, report, wait_for_stop, write_pid_file, SignalForwarder, PIDVISOR_FAILED};
use super::create::Options;
use crate::client::{failed, Client, ClientError};

/// Create and start a container, wait for it, exit with its status.
///
/// Behaves like running the command directly: it gets your environment, cwd
/// and stdio (unless options say otherwise), and SIGINT, SIGTERM, SIGHUP and
/// SIGQUIT sent to `pidvisor run` are passed on to it. Exits with the
/// container's status (exit code, or 128 + signal), 127/126 when the command
/// cannot be executed, 125 when pidvisor itself failed. When no supervisor
/// runs on the root, one is started in the background.
///
/// Examples:
///   pidvisor run hello -- sh -c 'echo hi; exit 3'; echo $?    # hi, 3
///   pidvisor run --rm job1 --stdout /tmp/job1.log -- make test
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Delete the container once it stopped; returns once it is deleted, so
    /// the id is free again.
    #[arg(long)]
    rm: bool,

    #[command(flatten)]
    options: Options,

    /// The container's id: 1-64 of [A-Za-z0-9_.-], starting alphanumeric.
    #[arg(value_parser = parse_id)]
    id: String,

    /// The command and its arguments (not with --bundle).
    #[arg(last = true, required_unless_present = "bundle", value_name = "CMD")]
    command: Vec<String>,
}

/// Runs `run`.
pub fn run(args: Args, root: PathBuf) -> i32 {
    let mut request = match args.options.request(&args.id, &args.command, true) {
        Ok(r) => r,
        Err(e) => {
            report("run", &e);
            return 2;
        }
    };
    request["start"] = true.into();
    if args.rm {
        request["remove"] = true.into();
    }
    let client = Client::new(root);
    if let Err(e) = client.ensure_supervisor() {
        report("run", &e);
        return PIDVISOR_FAILED;
    }
    // Subscribe first: with --rm the container may be gone by the time a
    // later subscription would ask for its events.
    let types = if args.rm { json!(["stopped", "deleted"]) } else { json!(["stopped"]) };
    let mut sub = match client.subscribe(json!({"ids": [&args.id], "types": types})) {
        Ok(s) => s,
        Err(e) => {
            report("run", &e);
            return PIDVISOR_FAILED;
        }
    };
    let forwarder = SignalForwarder::install();
    let reply = match client.request_raw(&mut request, None) {
        Ok(reply) => reply,
        Err(e) => {
            report("run", &e);
            return PIDVISOR_FAILED;
        }
    };
    let instance = reply["instance"].as_u64();
    let pid = reply["pid"].as_i64();
    if reply["ok"] != true {
        let err = failed(reply);
        report("run", &err);
        // An exec failure still ends in a `stopped` event (127 or 126);
        // anything else means no container was made.
        match (&err, instance) {
            (ClientError::Failed { .. }, Some(_)) => {}
            _ => return PIDVISOR_FAILED,
        }
    }
    if let (Some(path), Some(pid)) = (&args.options.pid_file, pid) {
        if let Err(e) = write_pid_file(path, pid) {
            report("run", &e);
        }
    }
    match wait_for_stop(&client, &mut sub, &args.id, || instance, forwarder.as_ref(), args.rm) {
        Ok(status) => status,
        Err(e) => {
            report("run", &e);
            PIDVISOR_FAILED
        }
    }
}
