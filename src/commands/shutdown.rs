//! `pidvisor shutdown`: stops the supervisor.

use std::path::PathBuf;

use serde_json::json;

use super::common::{report, FAILED};
use crate::client::Client;

/// Stop the supervisor: SIGTERM to every running container, SIGKILL after
/// its grace period, reap everything, publish every `stopped` event, exit.
///
/// Returns once all containers have stopped.
///
/// Example:
///   pidvisor shutdown
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {}

/// Runs `shutdown`.
pub fn run(_args: Args, root: PathBuf) -> i32 {
    match Client::new(root).request(json!({"op": "shutdown"})) {
        Ok(_) => 0,
        Err(e) => {
            report("shutdown", &e);
            FAILED
        }
    }
}
