//! `pidvisor start`: lets a created container exec its command.

use std::path::PathBuf;

use serde_json::json;

use super::common::{parse_id, report, FAILED};
use crate::client::Client;

/// Start a created container: its process execs its command.
///
/// Returns once execve succeeded (the container is `running`), or fails
/// with the errno when it did not (the container then stops with status 127
/// for a missing command, 126 for one that cannot be executed).
///
/// Example:
///   pidvisor create web -- ./server && pidvisor start web
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The container's id.
    #[arg(value_parser = parse_id)]
    id: String,
}

/// Runs `start`.
pub fn run(args: Args, root: PathBuf) -> i32 {
    match Client::new(root).request(json!({"op": "start", "id": args.id})) {
        Ok(_) => 0,
        Err(e) => {
            report("start", &e);
            FAILED
        }
    }
}
