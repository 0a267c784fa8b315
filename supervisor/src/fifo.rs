//! Opening the paths clients name: reply and subscriber FIFOs (absolute, a
//! FIFO, not a symlink, with a reader; opened so the loop never blocks), and
//! the stdio paths of a container.

use std::os::fd::OwnedFd;

use rustix::fs::{self, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, ErrorKind, Result};
use crate::spawn::Stdio;

/// Opens the write end of a client's FIFO without blocking: `what` names it
/// in errors ("reply fifo", "subscriber fifo"). The returned fd is
/// non-blocking and close-on-exec.
pub fn open_fifo_writer(path: &str, what: &str) -> Result<OwnedFd> {
    if !path.starts_with('/') {
        return Err(Error::new(ErrorKind::BadPath, format!("{what} {path:?}: not an absolute path")));
    }
    // lstat first, so that a regular file or device is never opened at all.
    let stat = fs::lstat(path).map_err(|e| Error::os(ErrorKind::BadPath, format!("{what} {path}"), e))?;
    let kind = FileType::from_raw_mode(stat.st_mode);
    if kind == FileType::Symlink {
        return Err(Error::new(ErrorKind::BadPath, format!("{what} {path}: is a symlink")));
    }
    if kind != FileType::Fifo {
        return Err(Error::new(ErrorKind::BadPath, format!("{what} {path}: not a fifo")));
    }
    // O_NONBLOCK: open(2) of a FIFO for writing fails with ENXIO instead of
    // blocking when nobody has it open for reading (fifo(7)).
    let flags = OFlags::WRONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = fs::open(path, flags, Mode::empty()).map_err(|e| match e {
        Errno::NXIO => Error::new(ErrorKind::BadPath, format!("{what} {path}: no reader has it open")),
        Errno::LOOP => Error::new(ErrorKind::BadPath, format!("{what} {path}: is a symlink")),
        e => Error::os(ErrorKind::BadPath, format!("open {what} {path}"), e),
    })?;
    // The path may have been swapped between lstat and open.
    let stat = fs::fstat(&fd).map_err(|e| Error::os(ErrorKind::System, format!("fstat {what} {path}"), e))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Fifo {
        return Err(Error::new(ErrorKind::BadPath, format!("{what} {path}: not a fifo")));
    }
    Ok(fd)
}

/// For `/proc/PID/fd/N`: a duplicate of that very fd, taken with
/// pidfd_getfd(2) (Linux 5.6; needs ptrace access, as root or the same
/// user). Unlike reopening the path, it shares the client's open file
/// description: a file keeps one offset for the client and the container
/// (`{ pidvisor run ...; echo done; } > log` keeps both lines), and
/// sockets, which cannot be reopened through /proc, work too. None when the
/// path has another form or the call is refused; the caller then opens it.
fn take_client_fd(path: &str) -> Option<OwnedFd> {
    let rest = path.strip_prefix("/proc/")?;
    let (pid, fd) = rest.split_once("/fd/")?;
    let pid = rustix::process::Pid::from_raw(pid.parse().ok()?)?;
    let fd: i32 = fd.parse().ok()?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()?;
    rustix::process::pidfd_getfd(&pidfd, fd, rustix::process::PidfdGetfdFlags::empty()).ok()
}

/// Opens a container's stdio path: stdin for reading, stdout/stderr for
/// appending (created 0644 if missing). A client's `/proc/PID/fd/N` is taken
/// as that very fd where allowed; a stdin FIFO is left for the child to
/// open; anything else is opened without blocking and switched back to
/// blocking, since the container expects ordinary blocking stdio.
pub fn open_stdio(path: &str, stream: &str) -> Result<Stdio> {
    if !path.starts_with('/') {
        return Err(Error::new(ErrorKind::BadPath, format!("{stream} {path:?}: not an absolute path")));
    }
    if let Some(fd) = take_client_fd(path) {
        return Ok(Stdio::Fd(fd));
    }
    // A FIFO as stdin is opened by the container process itself, blocking
    // until a writer comes, as `cmd < fifo` does in a shell: opened here it
    // would read end-of-file before its writer has opened it, and the loop
    // must not wait for one.
    if stream == "stdin" && fs::stat(path).is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Fifo) {
        let cpath = std::ffi::CString::new(path)
            .map_err(|_| Error::new(ErrorKind::BadRequest, format!("{stream} {path:?} contains a NUL byte")))?;
        return Ok(Stdio::OpenFifo(cpath));
    }
    let base = OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let flags =
        if stream == "stdin" { OFlags::RDONLY | base } else { OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | base };
    let fd = fs::open(path, flags, Mode::from_raw_mode(0o644)).map_err(|e| match e {
        Errno::NXIO => {
            Error::os(ErrorKind::BadPath, format!("open {stream} {path} (a socket, or a fifo with no reader)"), e)
        }
        e => Error::os(ErrorKind::BadPath, format!("open {stream} {path}"), e),
    })?;
    // Our open created a new open file description, so clearing O_NONBLOCK
    // here does not touch the client's own descriptor.
    let status = fs::fcntl_getfl(&fd).map_err(|e| Error::os(ErrorKind::System, format!("fcntl {stream} {path}"), e))?;
    fs::fcntl_setfl(&fd, status - OFlags::NONBLOCK)
        .map_err(|e| Error::os(ErrorKind::System, format!("fcntl {stream} {path}"), e))?;
    Ok(Stdio::Fd(fd))
}
