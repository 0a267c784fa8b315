//! `pidvisor-bench SECTION [--key value]...`: runs one benchmark section
//! against the supervisor `scripts/bench` started and prints its result as
//! one JSON line on stdout (progress goes to stderr); `report` prints the
//! table from the collected lines. See the crate docs and `scripts/bench`.

use pidvisor_bench::opts::Opts;
use pidvisor_bench::{report, sections, Res};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(section) = args.first() else {
        eprintln!("usage: pidvisor-bench latency|throughput|run|idle|fanout|report [--key value]...");
        std::process::exit(2);
    };
    let result: Res<serde_json::Value> = Opts::parse(&args[1..]).and_then(|opts| match section.as_str() {
        "latency" => sections::latency::run(&opts),
        "throughput" => sections::throughput::run(&opts),
        "run" => sections::run::run(&opts),
        "idle" => sections::idle::run(&opts),
        "fanout" => sections::fanout::run(&opts),
        "report" => report::run(&opts),
        other => Err(format!("unknown section {other:?}")),
    });
    match result {
        Ok(serde_json::Value::Null) => {}
        Ok(value) => println!("{value}"),
        Err(e) => {
            eprintln!("pidvisor-bench {section}: {e}");
            std::process::exit(1);
        }
    }
}
