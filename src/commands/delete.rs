//! `pidvisor delete`: forgets a stopped container.

use std::path::PathBuf;

use serde_json::json;

use super::common::{parse_id, report, FAILED};
use crate::client::Client;

/// Delete a stopped container: its record and retained events are dropped
/// and a `deleted` event is published.
///
/// A container that has not stopped is refused unless --force, which kills
/// its process group with SIGKILL, waits until it is reaped (publishing
/// `stopped`) and then deletes it.
///
/// Example:
///   pidvisor delete job1 && pidvisor delete --force web
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Kill and reap the container first if it has not stopped.
    #[arg(long, short = 'f')]
    force: bool,

    /// The container's id.
    #[arg(value_parser = parse_id)]
    id: String,
}

/// Runs `delete`.
pub fn run(args: Args, root: PathBuf) -> i32 {
    match Client::new(root).request(json!({"op": "delete", "id": args.id, "force": args.force})) {
        Ok(_) => 0,
        Err(e) => {
            report("delete", &e);
            FAILED
        }
    }
}
