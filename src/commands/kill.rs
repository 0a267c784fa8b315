//! `pidvisor kill`: sends a signal to a container.

use std::path::PathBuf;

use serde_json::json;

use super::common::{parse_id, report, FAILED};
use crate::client::Client;

/// Send a signal to a container's process (default SIGTERM).
///
/// SIGNAL is a number or a name, with or without SIG: 9, KILL and SIGKILL
/// are the same. With --all the whole process group gets it. Signalling a
/// process that has exited but is not yet reaped is not an error.
///
/// Examples:
///   pidvisor kill web
///   pidvisor kill --all web KILL
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Signal the container's whole process group.
    #[arg(long, short = 'a')]
    all: bool,

    /// The container's id.
    #[arg(value_parser = parse_id)]
    id: String,

    /// The signal: a number or a name [default: SIGTERM].
    #[arg(default_value = "SIGTERM")]
    signal: String,
}

/// Runs `kill`.
pub fn run(args: Args, root: PathBuf) -> i32 {
    let Some(number) = pidvisor_supervisor::signals::parse_signal(&args.signal) else {
        report("kill", &format!("invalid signal {:?} (try 9, KILL or SIGKILL)", args.signal));
        return 2;
    };
    match Client::new(root).request(json!({"op": "kill", "id": args.id, "signal": number, "all": args.all})) {
        Ok(_) => 0,
        Err(e) => {
            report("kill", &e);
            FAILED
        }
    }
}
