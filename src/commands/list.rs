//! `pidvisor list`: lists the containers.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::common::{print_line, report, FAILED};
use crate::client::Client;

/// List the containers: id, instance, pid, status, exit status, command.
///
/// With --json, one JSON array of the same states `pidvisor state` prints.
///
/// Example:
///   pidvisor list --json | jq -r '.[] | select(.status=="stopped") | .id'
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `list`.
pub fn run(args: Args, root: PathBuf) -> i32 {
    let reply = match Client::new(root).request(json!({"op": "list"})) {
        Ok(reply) => reply,
        Err(e) => {
            report("list", &e);
            return FAILED;
        }
    };
    let empty = Vec::new();
    let containers = reply["containers"].as_array().unwrap_or(&empty);
    if args.json {
        print_line(&Value::Array(containers.clone()).to_string());
        return 0;
    }
    print_line(&format!("{:<24} {:>9} {:>8} {:<8} {:>6} COMMAND", "ID", "INSTANCE", "PID", "STATUS", "EXIT"));
    for c in containers {
        let exit = c["exit"]["status"].as_i64().map(|s| s.to_string()).unwrap_or_else(|| "-".into());
        let argv: Vec<&str> =
            c["argv"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        print_line(&format!(
            "{:<24} {:>9} {:>8} {:<8} {:>6} {}",
            c["id"].as_str().unwrap_or("?"),
            c["instance"].as_u64().map(|i| i.to_string()).unwrap_or_default(),
            c["pid"].as_i64().map(|p| p.to_string()).unwrap_or_default(),
            c["status"].as_str().unwrap_or("?"),
            exit,
            match c["bundle"].as_str() {
                Some(bundle) if !bundle.is_empty() => format!("bundle {bundle}"),
                _ => argv.join(" "),
            }
        ));
    }
    0
}
