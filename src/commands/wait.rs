//! `pidvisor wait`: waits for a container to stop.

use std::path::PathBuf;

use serde_json::json;

use super::common::{parse_id, report, wait_for_stop, PIDVISOR_FAILED};
use crate::client::Client;

/// Wait for a container to stop and exit with its status.
///
/// The status is the shell's: the exit code, or 128 + the signal number.
/// Returns at once for a container that has stopped already. Exits 125 when
/// there is no such container or pidvisor itself failed.
///
/// Example:
///   pidvisor create job -- make test && pidvisor start job && pidvisor wait job
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The container's id.
    #[arg(value_parser = parse_id)]
    id: String,
}

/// Runs `wait`.
pub fn run(args: Args, root: PathBuf) -> i32 {
    let client = Client::new(root);
    let mut sub = match client.subscribe(json!({"ids": [&args.id], "types": ["stopped"]})) {
        Ok(s) => s,
        Err(e) => {
            report("wait", &e);
            return PIDVISOR_FAILED;
        }
    };
    if !sub.unknown.is_empty() {
        report("wait", &format!("no container {:?}", args.id));
        return PIDVISOR_FAILED;
    }
    match wait_for_stop(&client, &mut sub, &args.id, || None, None, false) {
        Ok(status) => status,
        Err(e) => {
            report("wait", &e);
            PIDVISOR_FAILED
        }
    }
}
