//! The one reaper. Every child the supervisor has — container processes and
//! the orphans reparented to it as `PR_SET_CHILD_SUBREAPER` — is reaped here.
//! It peeks at the next zombie with `WNOWAIT` so that a container process is
//! only ever reaped through its own pidfd (its status is never stolen, and
//! never one of a reused PID), while any other zombie is an orphan and is
//! reaped by PID at once.

use std::os::fd::AsFd;

use rustix::process::{waitid, WaitId, WaitIdOptions};

use crate::event::Exit;

/// The PID of a child that has exited and is not yet reaped, without reaping
/// it; None when there is none. `Err` carries ECHILD: no children at all.
pub fn peek_zombie() -> Result<Option<i32>, i32> {
    // rustix's waitid does not expose si_pid, which is the whole point here.
    // SAFETY: siginfo_t is plain data, zeroed as waitid(2) requires for
    // WNOHANG (si_pid stays 0 when no child has changed state).
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: a valid out-pointer to a siginfo_t we own.
        let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT) };
        if rc < 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if errno == libc::EINTR {
                continue;
            }
            return Err(errno);
        }
        // SAFETY: waitid filled a SIGCHLD siginfo, whose si_pid is valid.
        let pid = unsafe { info.si_pid() };
        return Ok((pid != 0).then_some(pid));
    }
}

/// Reaps an orphan (a PID that is not a container process).
pub fn reap_orphan(pid: i32) -> Option<Exit> {
    let pid = rustix::process::Pid::from_raw(pid)?;
    match waitid(WaitId::Pid(pid), WaitIdOptions::EXITED | WaitIdOptions::NOHANG) {
        Ok(Some(status)) => Some(Exit::from_waitid(&status)),
        _ => None,
    }
}

/// Reaps a container process through its pidfd; None while it still runs.
pub fn reap_pidfd(pidfd: impl AsFd) -> Option<Exit> {
    loop {
        return match waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED | WaitIdOptions::NOHANG) {
            Ok(Some(status)) => Some(Exit::from_waitid(&status)),
            Err(rustix::io::Errno::INTR) => continue,
            _ => None,
        };
    }
}

/// Takes down a child the supervisor could not take on (its registration
/// failed): SIGKILL, then a blocking reap, so that the memory it shared with
/// us until exec (its stack is reused by the next spawn) is released only
/// once it is gone. SIGKILL ends it promptly: before exec it blocks in
/// nothing uninterruptible.
pub fn kill_and_reap(pidfd: impl AsFd) {
    let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
    loop {
        match waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED) {
            Err(rustix::io::Errno::INTR) => continue,
            _ => return,
        }
    }
}

/// The PIDs of our children, for shutdown: from
/// /proc/self/task/*/children, or a scan of /proc when that is missing.
pub fn children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        let mut found = false;
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                found = true;
                pids.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
        if found {
            return pids;
        }
    }
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) {
            // The fields after the last ')' are: state ppid ...
            let ppid = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
            if ppid == Some(me) {
                pids.push(pid);
            }
        }
    }
    pids
}
