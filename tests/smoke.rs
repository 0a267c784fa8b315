//! A first end-to-end check of the harness and the supervisor.
mod common;
use common::*;
use serde_json::json;

#[test]
fn runs_a_container_to_its_exit_code() {
    let sv = Sv::start();
    let ev = sv.run_to_stop("a", &["sh", "-c", "exit 3"]);
    assert_eq!(ev["status"], 3);
    assert_eq!(ev["exit_code"], 3);
    let reply = sv.request(json!({"op": "version"}));
    assert_eq!(reply["ok"], true);
    sv.barrier();
    assert!(sv.zombies().is_empty());
}
