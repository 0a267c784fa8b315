//! `pidvisor state`: prints a container's OCI state.

use std::path::PathBuf;

use serde_json::json;

use super::common::{parse_id, print_line, report, FAILED};
use crate::client::Client;

/// Print a container's state as JSON: the OCI state (ociVersion, id,
/// status, pid, bundle, annotations) plus instance, argv, times and, once
/// stopped, `exit` with exit_code, signal, core_dumped and status.
///
/// Example:
///   pidvisor state web | jq -r .status
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The container's id.
    #[arg(value_parser = parse_id)]
    id: String,
}

/// Runs `state`.
pub fn run(args: Args, root: PathBuf) -> i32 {
    match Client::new(root).request(json!({"op": "state", "id": args.id})) {
        Ok(reply) => {
            print_line(&serde_json::to_string_pretty(&reply["state"]).expect("serializes"));
            0
        }
        Err(e) => {
            report("state", &e);
            FAILED
        }
    }
}
