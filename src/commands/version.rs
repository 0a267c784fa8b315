//! `pidvisor version`: prints the client's and the supervisor's versions.

use std::path::PathBuf;

use serde_json::json;

use super::common::print_line;
use crate::client::Client;

/// Print pidvisor's version, and the running supervisor's if there is one.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `version`.
pub fn run(_args: Args, root: PathBuf) -> i32 {
    print_line(&format!("pidvisor {}", pidvisor_supervisor::protocol::VERSION));
    if let Ok(reply) = Client::new(root).request(json!({"op": "version"})) {
        print_line(&format!("supervisor {}", reply["version"].as_str().unwrap_or("?")));
    }
    0
}
