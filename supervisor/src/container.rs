//! A container's record and its lifecycle: the [`Status`] enum, the guards
//! that decide every (status, request) pair, and the one [`transition`] that
//! changes status and emits the event and the log line.

use std::os::fd::OwnedFd;
use std::rc::Rc;

use mio::Token;
use rustix::process::Pid;

use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, EventType, Exit, Published};
use crate::time::Timestamp;

/// The OCI lifecycle: creating → created → running → stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The process is being cloned and set up (or the OCI runtime creates it).
    Creating,
    /// The process is set up and waits for `start`.
    Created,
    /// The process exec'd its command.
    Running,
    /// The process exited and was reaped.
    Stopped,
}

impl Status {
    /// The OCI name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        }
    }
}

/// The requests whose legality depends on the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `start`
    Start,
    /// `kill`
    Kill,
    /// `delete` without force
    Delete,
    /// `delete` with force
    ForceDelete,
}

/// Whether `action` is allowed in `status`. Every pair is decided here.
pub fn check(status: Status, action: Action) -> std::result::Result<(), &'static str> {
    use Action::*;
    use Status::*;
    match (status, action) {
        (Created, Start) => Ok(()),
        (Creating, Start) => Err("it is still being created"),
        (Running, Start) => Err("it was started already"),
        (Stopped, Start) => Err("it has stopped"),
        (Created | Running, Kill) => Ok(()),
        (Creating, Kill) => Err("it is still being created"),
        (Stopped, Kill) => Err("it has stopped"),
        (Stopped, Delete | ForceDelete) => Ok(()),
        (Created | Running, ForceDelete) => Ok(()),
        (Creating, Delete | ForceDelete) => Err("it is still being created"),
        (Created | Running, Delete) => Err("it has not stopped (use force to kill it first)"),
    }
}

/// Whether a container in `status` may be started.
pub fn can_start(status: Status) -> bool {
    check(status, Action::Start).is_ok()
}

/// Whether a container in `status` may be signalled.
pub fn can_kill(status: Status) -> bool {
    check(status, Action::Kill).is_ok()
}

/// Whether a container in `status` may be deleted (with or without force).
pub fn can_delete(status: Status, force: bool) -> bool {
    check(status, if force { Action::ForceDelete } else { Action::Delete }).is_ok()
}

/// A `start` waiting for the exec outcome, and whom to answer.
pub struct PendingStart {
    /// The status pipe's token.
    pub token: Token,
    /// The reply path of the `start` (or `create` with start) request.
    pub reply: Option<String>,
}

/// One supervised container.
pub struct Container {
    /// The user's id.
    pub id: Rc<str>,
    /// Unique across the root's lifetime: the seq of its `created` event.
    pub instance: u64,
    /// Where it is in its lifecycle.
    pub status: Status,
    /// The container process.
    pub pid: Pid,
    /// The pidfd, while the process is unreaped.
    pub pidfd: Option<OwnedFd>,
    /// The pidfd's token.
    pub pidfd_token: Token,
    /// The start pipe's write end, until started.
    pub start_pipe: Option<OwnedFd>,
    /// The status pipe's read end, until the exec outcome is known.
    pub status_pipe: Option<OwnedFd>,
    /// What the status pipe said so far.
    pub status_seen: Vec<u8>,
    /// What the container process reads until it has exec'd (it shares our
    /// memory until then); dropped once the exec outcome is known.
    pub child_memory: Option<Box<crate::spawn::ChildMemory>>,
    /// Set between `start` and the exec outcome.
    pub pending_start: Option<PendingStart>,
    /// Replies owed once it is deleted (a forced `delete` waits for the
    /// reap, a runtime container's for `runtime delete`).
    pub pending_delete: Vec<Option<String>>,
    /// Deletion has begun (an OCI runtime's `delete` runs).
    pub deleting: bool,
    /// Delete as soon as it stopped.
    pub remove: bool,
    /// The command, for `state` and `list`.
    pub argv: Vec<String>,
    /// The OCI bundle, if any.
    pub bundle: Option<String>,
    /// The OCI runtime that runs the bundle.
    pub runtime: Option<crate::runtime::Runtime>,
    /// Annotations for `state`.
    pub annotations: std::collections::BTreeMap<String, String>,
    /// When it was created, started and stopped.
    pub created_at: Timestamp,
    /// When execve succeeded.
    pub started_at: Option<Timestamp>,
    /// When it was reaped.
    pub stopped_at: Option<Timestamp>,
    /// How it ended.
    pub exit: Option<Exit>,
    /// The exec failure, named, kept until reaped.
    pub exec_error: Option<String>,
    /// Its events so far, kept for replay until it is deleted.
    pub events: Vec<Rc<Published>>,
}

impl Container {
    /// Changes status and returns the event to publish (the loop logs it
    /// once it is published).
    pub fn transition(&mut self, to: Status, now: Timestamp) -> Event {
        let kind = match to {
            Status::Created => EventType::Created,
            Status::Running => EventType::Started,
            Status::Stopped => EventType::Stopped,
            Status::Creating => unreachable!("no transition leads back to creating"),
        };
        debug_assert!(matches!(
            (self.status, to),
            (Status::Creating, Status::Created)
                | (Status::Created, Status::Running)
                | (Status::Created | Status::Running, Status::Stopped)
        ));
        self.status = to;
        match to {
            Status::Running => self.started_at = Some(now),
            Status::Stopped => self.stopped_at = Some(now),
            _ => {}
        }
        let exit = if to == Status::Stopped { self.exit.clone() } else { None };
        Event {
            kind,
            id: self.id.clone(),
            instance: self.instance,
            pid: Some(self.pid.as_raw_nonzero().get()),
            time: now,
            exit,
        }
    }

    /// The `deleted` event; the caller forgets the container.
    pub fn deleted_event(&self, now: Timestamp) -> Event {
        Event {
            kind: EventType::Deleted,
            id: self.id.clone(),
            instance: self.instance,
            pid: None,
            time: now,
            exit: None,
        }
    }

    /// Refuses `action` with a wrong_state error naming the container.
    pub fn require(&self, action: Action, op: &str) -> Result<()> {
        check(self.status, action).map_err(|why| {
            Error::new(
                ErrorKind::WrongState,
                format!("cannot {op} container {:?} ({}): {why}", &*self.id, self.status.as_str()),
            )
        })
    }

    /// The OCI state, plus instance, times and exit details.
    pub fn state(&self) -> serde_json::Value {
        let mut state = serde_json::json!({
            "ociVersion": crate::protocol::OCI_VERSION,
            "id": &*self.id,
            "status": self.status.as_str(),
            "pid": self.pid.as_raw_nonzero().get(),
            "bundle": self.bundle.as_deref().unwrap_or(""),
            "annotations": &self.annotations,
            "instance": self.instance,
            "argv": &self.argv,
            "created": self.created_at.to_rfc3339(),
        });
        if let Some(t) = self.started_at {
            state["started"] = t.to_rfc3339().into();
        }
        if let Some(t) = self.stopped_at {
            state["stopped"] = t.to_rfc3339().into();
        }
        if let Some(exit) = &self.exit {
            state["exit"] = serde_json::to_value(exit).expect("exit serializes");
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole guard matrix, spelled out so a change to it is deliberate.
    #[test]
    fn guard_matrix() {
        use Action::*;
        use Status::*;
        let allowed = [
            (Creating, [false, false, false, false]),
            (Created, [true, true, false, true]),
            (Running, [false, true, false, true]),
            (Stopped, [false, false, true, true]),
        ];
        for (status, row) in allowed {
            for (action, ok) in [Start, Kill, Delete, ForceDelete].into_iter().zip(row) {
                assert_eq!(check(status, action).is_ok(), ok, "{status:?} {action:?}");
            }
        }
        assert!(can_start(Created) && !can_start(Running));
        assert!(can_kill(Running) && !can_kill(Stopped));
        assert!(can_delete(Running, true) && !can_delete(Running, false));
    }
}
