//! `pidvisor event`: prints lifecycle events as JSON lines.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::common::{parse_duration, parse_id, print_line, report, FAILED, TIMED_OUT};
use crate::client::{Client, Next, Watch};

/// Print lifecycle events as JSON lines on stdout.
///
/// Without --follow, prints the first matching event and exits 0. With IDs,
/// first replays those containers' retained events, so
/// `event --type created ID` returns at once when `created` already
/// happened, and waits for it otherwise: subscribe-then-check, race-free.
/// With --since SEQ, replays every event after SEQ (from memory or the
/// journal). With --follow, prints every matching event until the supervisor
/// shuts down, resuming by itself (without duplicates) if it fell behind.
///
/// When no supervisor runs on the root, one is started in the background
/// (as by `create`), so the hook workflow below works from a clean slate.
///
/// Types: created, started, stopped, deleted. --timeout exits 124 when
/// nothing matched in time. It ends quietly (0) when nobody reads its stdout
/// any more. With PIDVISOR_DEBUG=1 it says on stderr once it is subscribed
/// and whenever it resumes.
///
/// Examples:
///   pidvisor event --type created web && ./hook && pidvisor start web
///   pidvisor event --follow --type stopped | jq -c '{id, status}'
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Only these event types (comma-separated or repeated).
    #[arg(long = "type", short = 't', value_delimiter = ',', value_name = "T")]
    types: Vec<EventTypeArg>,

    /// Replay every event with a greater seq first.
    #[arg(long, value_name = "SEQ")]
    since: Option<u64>,

    /// Keep printing events instead of exiting after the first.
    #[arg(long, short = 'f')]
    follow: bool,

    /// Give up after this long (10s, 500ms, 2m): exit 124 if nothing
    /// matched; with --follow, exit 0 then if something was printed.
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    timeout: Option<Duration>,

    /// Only events of these containers (their retained events come first).
    #[arg(value_parser = parse_id)]
    ids: Vec<String>,
}

/// An event type, as accepted on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum EventTypeArg {
    Created,
    Started,
    Stopped,
    Deleted,
}

impl EventTypeArg {
    fn as_str(self) -> &'static str {
        match self {
            EventTypeArg::Created => "created",
            EventTypeArg::Started => "started",
            EventTypeArg::Stopped => "stopped",
            EventTypeArg::Deleted => "deleted",
        }
    }
}

/// Runs `event`.
pub fn run(args: Args, root: PathBuf) -> i32 {
    let client = Client::new(root);
    // Like `create`: in `create --wait ID ... & event --type created ID`,
    // either may come first, so either may start the supervisor.
    if let Err(e) = client.ensure_supervisor() {
        report("event", &e);
        return FAILED;
    }
    let deadline = args.timeout.map(|t| Instant::now() + t);
    let mut since = args.since;
    let mut printed = false;
    loop {
        let mut fields = json!({});
        if !args.ids.is_empty() {
            fields["ids"] = json!(args.ids);
        }
        if !args.types.is_empty() {
            fields["types"] = json!(args.types.iter().map(|t| t.as_str()).collect::<Vec<_>>());
        }
        if let Some(seq) = since {
            fields["since"] = seq.into();
        }
        let mut sub = match client.subscribe(fields) {
            Ok(s) => s,
            Err(e) => {
                report("event", &e);
                return FAILED;
            }
        };
        debug(&format!("subscribed (the next event is seq {})", sub.next));
        let stdout = rustix::stdio::stdout();
        loop {
            match sub.next_line(deadline, Some(Watch::Closed(stdout))) {
                Ok(Next::Line(line)) => {
                    let event: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                    if event["type"] == "overflow" {
                        // Fell behind: resume from the first seq we missed.
                        let next = event["next"].as_u64().unwrap_or(1);
                        log_overflow(next);
                        since = Some(next.saturating_sub(1));
                        break;
                    }
                    print_line(&line);
                    printed = true;
                    if !args.follow {
                        return 0;
                    }
                }
                Ok(Next::End) => {
                    if args.follow {
                        return 0;
                    }
                    report("event", &"the supervisor shut down before a matching event");
                    return FAILED;
                }
                // Nobody reads our stdout any more (`| head -1`): done, quietly.
                Ok(Next::Interrupted) => return 0,
                Ok(Next::Timeout) => return if printed { 0 } else { TIMED_OUT },
                Err(e) => {
                    report("event", &e);
                    return FAILED;
                }
            }
        }
    }
}

fn log_overflow(next: u64) {
    debug(&format!("fell behind; resuming from seq {next}"));
}

/// A progress note on stderr when PIDVISOR_DEBUG is set: scripts and tests
/// can wait for "subscribed" to know that what happens next is seen.
fn debug(note: &str) {
    if std::env::var_os("PIDVISOR_DEBUG").is_some() {
        eprintln!("pidvisor event: {note}");
    }
}
