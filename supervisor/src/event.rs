//! Lifecycle events: their wire form, the exit-status mapping, and the log
//! that numbers them, keeps a bounded ring of recent ones for `since`, and
//! queues them until the loop journals and fans them out.

use std::collections::VecDeque;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::signals::signal_name;
use crate::time::Timestamp;

/// The four lifecycle events, in the order a container goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// The container process exists and waits for `start`.
    Created,
    /// The container process exec'd its command.
    Started,
    /// The container process exited; carries the exit details.
    Stopped,
    /// The container was forgotten.
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "created",
            EventType::Started => "started",
            EventType::Stopped => "stopped",
            EventType::Deleted => "deleted",
        }
    }
}

/// How a container process ended, as the kernel reported it through waitid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exit {
    /// The exit code when it exited, else null.
    pub exit_code: Option<i32>,
    /// The terminating signal's name when a signal killed it, else null.
    #[serde(serialize_with = "serialize_signal")]
    pub signal: Option<i32>,
    /// Whether the kernel wrote a core dump.
    pub core_dumped: bool,
    /// The shell convention: `exit_code`, or 128 + the signal number.
    pub status: i32,
    /// For an exec failure: the errno, named ("execve ./x: No such file or directory (ENOENT)").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn serialize_signal<S: serde::Serializer>(signal: &Option<i32>, s: S) -> Result<S::Ok, S::Error> {
    match signal {
        Some(n) => s.serialize_str(&signal_name(*n)),
        None => s.serialize_none(),
    }
}

impl Exit {
    /// An exit with a code.
    pub fn code(code: i32) -> Self {
        Exit { exit_code: Some(code), signal: None, core_dumped: false, status: code, error: None }
    }

    /// A death by a signal.
    pub fn signaled(signal: i32, core_dumped: bool) -> Self {
        Exit { exit_code: None, signal: Some(signal), core_dumped, status: 128 + signal, error: None }
    }

    /// Maps what waitid(2) reported.
    pub fn from_waitid(status: &rustix::process::WaitIdStatus) -> Self {
        if let Some(signal) = status.terminating_signal() {
            Exit::signaled(signal, status.dumped())
        } else {
            Exit::code(status.exit_status().unwrap_or(0))
        }
    }
}

/// One lifecycle event before it is numbered.
#[derive(Debug, Clone)]
pub struct Event {
    /// Which event.
    pub kind: EventType,
    /// The container's id.
    pub id: Rc<str>,
    /// The container's instance number.
    pub instance: u64,
    /// The container process, where there is one.
    pub pid: Option<i32>,
    /// When it happened.
    pub time: Timestamp,
    /// For `stopped`: how the process ended.
    pub exit: Option<Exit>,
}

/// A numbered event with its JSON line, shared by the retention, the journal
/// and every subscriber queue so it is serialized once.
#[derive(Debug)]
pub struct Published {
    /// Its sequence number.
    pub seq: u64,
    /// Which event.
    pub kind: EventType,
    /// The container's id.
    pub id: Rc<str>,
    /// The container's instance number.
    pub instance: u64,
    /// The JSON line, with its newline.
    pub line: Box<[u8]>,
}

#[derive(Serialize)]
struct WireEvent<'a> {
    seq: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    instance: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<i32>,
    time: String,
    #[serde(flatten)]
    exit: Option<&'a Exit>,
}

impl Published {
    /// A journal line read back: its type, id and instance parsed from it.
    /// None for a line that is not a whole event (a torn one).
    pub fn from_line(seq: u64, line: Vec<u8>) -> Option<Published> {
        #[derive(Deserialize)]
        struct Head<'a> {
            #[serde(rename = "type")]
            kind: EventType,
            #[serde(borrow)]
            id: std::borrow::Cow<'a, str>,
            #[serde(default)]
            instance: u64,
        }
        let head: Head = serde_json::from_slice(&line).ok()?;
        let id = head.id.as_ref().into();
        Some(Published { seq, kind: head.kind, id, instance: head.instance, line: line.into() })
    }

    /// Numbers and serializes an event.
    pub fn new(seq: u64, event: &Event) -> Self {
        let wire = WireEvent {
            seq,
            kind: event.kind.as_str(),
            id: &event.id,
            instance: event.instance,
            pid: event.pid,
            time: event.time.to_rfc3339(),
            exit: event.exit.as_ref(),
        };
        let mut line = serde_json::to_vec(&wire).expect("an event always serializes");
        line.push(b'\n');
        Published { seq, kind: event.kind, id: event.id.clone(), instance: event.instance, line: line.into() }
    }
}

/// Numbers events, holds the ones not yet published, and keeps a bounded ring
/// of the most recent published ones to serve `since`.
pub struct EventLog {
    next_seq: u64,
    pending: Vec<Rc<Published>>,
    recent: VecDeque<Rc<Published>>,
    recent_capacity: usize,
}

impl EventLog {
    /// A log whose first event gets `next_seq`; the ring keeps `recent_capacity` events.
    pub fn new(next_seq: u64, recent_capacity: usize) -> Self {
        EventLog { next_seq, pending: Vec::new(), recent: VecDeque::new(), recent_capacity }
    }

    /// The seq the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Numbers an event and queues it for publishing; returns it for retention.
    pub fn push(&mut self, event: &Event) -> Rc<Published> {
        let published = Rc::new(Published::new(self.next_seq, event));
        self.next_seq += 1;
        self.pending.push(published.clone());
        published
    }

    /// Takes the queued events (in seq order) and remembers them in the ring.
    pub fn take_pending(&mut self) -> Vec<Rc<Published>> {
        let batch = std::mem::take(&mut self.pending);
        for event in &batch {
            if self.recent.len() == self.recent_capacity {
                self.recent.pop_front();
            }
            if self.recent_capacity > 0 {
                self.recent.push_back(event.clone());
            }
        }
        batch
    }

    /// The seq of the last published event (0 when none).
    pub fn last_published(&self) -> u64 {
        self.next_seq - 1 - self.pending.len() as u64
    }

    /// The published events from seq `first` on, if the ring still reaches
    /// back that far (None: older ones are in the journal only).
    pub fn recent_from(&self, first: u64) -> Option<impl Iterator<Item = &Rc<Published>>> {
        // The ring is contiguous: every published event passes through it.
        let oldest = self.recent.front().map_or(self.last_published() + 1, |e| e.seq);
        let skip = first.checked_sub(oldest)?;
        Some(self.recent.iter().skip(usize::try_from(skip).unwrap_or(usize::MAX)))
    }
}

/// A `created` event numbered `seq`, for the unit tests of the modules that
/// queue and store events.
#[cfg(test)]
pub fn test_event(seq: u64) -> Rc<Published> {
    let e =
        Event { kind: EventType::Created, id: "x".into(), instance: seq, pid: Some(1), time: Timestamp(0), exit: None };
    Rc::new(Published::new(seq, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventType) -> Event {
        Event { kind, id: "job".into(), instance: 3, pid: Some(42), time: Timestamp(0), exit: None }
    }

    #[test]
    fn stopped_line_has_every_field() {
        let mut e = event(EventType::Stopped);
        e.exit = Some(Exit::signaled(9, false));
        let line = Published::new(9, &e).line;
        let text = std::str::from_utf8(&line).unwrap();
        assert_eq!(
            text,
            "{\"seq\":9,\"type\":\"stopped\",\"id\":\"job\",\"instance\":3,\"pid\":42,\"time\":\"1970-01-01T00:00:00.000000000Z\",\"exit_code\":null,\"signal\":\"SIGKILL\",\"core_dumped\":false,\"status\":137}\n"
        );
        let mut e = event(EventType::Stopped);
        e.exit = Some(Exit { error: Some("execve x: ENOENT".into()), ..Exit::code(127) });
        let v: serde_json::Value = serde_json::from_slice(&Published::new(1, &e).line).unwrap();
        assert_eq!(v["exit_code"], 127);
        assert_eq!(v["signal"], serde_json::Value::Null);
        assert_eq!(v["error"], "execve x: ENOENT");
    }

    #[test]
    fn deleted_line_has_no_exit_fields() {
        let mut e = event(EventType::Deleted);
        e.pid = None;
        let v: serde_json::Value = serde_json::from_slice(&Published::new(1, &e).line).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 5);
    }

    #[test]
    fn ring_serves_recent_events_and_knows_its_reach() {
        let mut log = EventLog::new(1, 3);
        for _ in 0..5 {
            log.push(&event(EventType::Created));
        }
        assert_eq!(log.last_published(), 0);
        log.take_pending();
        assert_eq!(log.last_published(), 5);
        let seqs = |first| log.recent_from(first).map(|it| it.map(|e| e.seq).collect::<Vec<_>>());
        assert_eq!(seqs(3), Some(vec![3, 4, 5]));
        assert_eq!(seqs(5), Some(vec![5]));
        assert_eq!(seqs(6), Some(vec![]));
        assert_eq!(seqs(2), None, "seq 2 left the ring");
    }

    #[test]
    fn a_line_reads_back_as_the_event_it_was() {
        let mut e = event(EventType::Stopped);
        e.exit = Some(Exit::code(3));
        let line = Published::new(7, &e).line.to_vec();
        let back = Published::from_line(7, line.clone()).unwrap();
        assert_eq!((back.kind, &*back.id, back.instance, &*back.line), (EventType::Stopped, "job", 3, &line[..]));
        assert!(Published::from_line(7, line[..20].to_vec()).is_none(), "a torn line");
    }
}
