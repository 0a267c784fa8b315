//! The supervisor's root directory: where it is, checking that it is ours and
//! private, the `lock` that makes one supervisor per root, and the `ctl` FIFO.

use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, ErrorKind, Result};

/// The control FIFO's name in the root.
pub const CTL_FILE: &str = "ctl";
/// The lock file's name in the root.
pub const LOCK_FILE: &str = "lock";

/// The root directory: `explicit` (from `--root` or `$PIDVISOR_ROOT`), else
/// `$XDG_RUNTIME_DIR/pidvisor`, else `/run/pidvisor` for root, else
/// `/tmp/pidvisor-$UID`.
pub fn default_root(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("pidvisor");
    }
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        PathBuf::from("/run/pidvisor")
    } else {
        PathBuf::from(format!("/tmp/pidvisor-{}", uid.as_raw()))
    }
}

/// Creates the root (mode 0700) if missing and checks that it is a directory,
/// not a symlink, owned by us and writable by nobody else.
pub fn prepare_root(root: &Path) -> Result<()> {
    let shown = root.display();
    match fs::mkdir(root, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(Errno::NOENT) => {
            if let Some(parent) = root.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::os(ErrorKind::System, format!("create parent of root {shown}"), e))?;
            }
            match fs::mkdir(root, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(Error::os(ErrorKind::System, format!("create root {shown}"), e)),
            }
        }
        Err(e) => return Err(Error::os(ErrorKind::System, format!("create root {shown}"), e)),
    }
    let stat = fs::lstat(root).map_err(|e| Error::os(ErrorKind::System, format!("stat root {shown}"), e))?;
    let kind = FileType::from_raw_mode(stat.st_mode);
    if kind != FileType::Directory {
        return Err(Error::new(ErrorKind::BadPath, format!("root {shown} is not a directory (a symlink or a file)")));
    }
    let me = rustix::process::geteuid().as_raw();
    if stat.st_uid != me {
        return Err(Error::new(
            ErrorKind::BadPath,
            format!("root {shown} is owned by uid {}, not by us (uid {me}); refusing it", stat.st_uid),
        ));
    }
    if stat.st_mode & 0o022 != 0 {
        return Err(Error::new(
            ErrorKind::BadPath,
            format!(
                "root {shown} is writable by {} (mode {:o}); refusing it (chmod 700 it)",
                if stat.st_mode & 0o002 != 0 { "others" } else { "its group" },
                stat.st_mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Takes the root's lock and writes our PID into it. A second supervisor gets
/// an error naming the PID that holds it. The lock lasts as long as the fd.
pub fn take_lock(root: &Path) -> Result<OwnedFd> {
    let path = root.join(LOCK_FILE);
    let shown = path.display();
    let fd =
        fs::open(&path, OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::from_raw_mode(0o600))
            .map_err(|e| Error::os(ErrorKind::System, format!("open lock {shown}"), e))?;
    // Clients probe the lock with a momentary shared flock (lock_holder):
    // a probe is not a supervisor, so retry for a while before giving up.
    let mut result = fs::flock(&fd, FlockOperation::NonBlockingLockExclusive);
    for _ in 0..100 {
        if result != Err(Errno::WOULDBLOCK) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
        result = fs::flock(&fd, FlockOperation::NonBlockingLockExclusive);
    }
    match result {
        Ok(()) => {}
        Err(Errno::WOULDBLOCK) => {
            let holder = read_lock_pid(&fd).map(|p| format!(" (pid {p})")).unwrap_or_default();
            return Err(Error::new(
                ErrorKind::Exists,
                format!("another supervisor{holder} already runs on root {}", root.display()),
            ));
        }
        Err(e) => return Err(Error::os(ErrorKind::System, format!("lock {shown}"), e)),
    }
    let mut file = std::fs::File::from(fd);
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(|e| Error::os(ErrorKind::System, format!("write pid to {shown}"), e))?;
    Ok(file.into())
}

/// The PID written in a root's lock file, if it is held by a live supervisor.
pub fn lock_holder(root: &Path) -> Option<i32> {
    let fd = fs::open(root.join(LOCK_FILE), OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW, Mode::empty()).ok()?;
    // Free lock: no supervisor, whatever the file says.
    if fs::flock(&fd, FlockOperation::NonBlockingLockShared).is_ok() {
        return None;
    }
    read_lock_pid(&fd)
}

fn read_lock_pid(fd: &OwnedFd) -> Option<i32> {
    let mut file = std::fs::File::from(fd.as_fd().try_clone_to_owned().ok()?);
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Creates `ctl` (mode 0600) or checks that the existing one is a FIFO (not a
/// symlink), and opens it for reading and writing: holding a write end
/// ourselves means the loop never sees end-of-file as clients come and go.
pub fn open_ctl(root: &Path) -> Result<OwnedFd> {
    let path = root.join(CTL_FILE);
    let shown = path.display();
    match fs::mknodat(fs::CWD, &path, FileType::Fifo, Mode::from_raw_mode(0o600), 0) {
        Ok(()) => {}
        Err(Errno::EXIST) => {
            let stat = fs::lstat(&path).map_err(|e| Error::os(ErrorKind::System, format!("stat {shown}"), e))?;
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::Fifo => {}
                FileType::Symlink => {
                    return Err(Error::new(
                        ErrorKind::BadPath,
                        format!("control fifo {shown} is a symlink; refusing it"),
                    ))
                }
                _ => {
                    return Err(Error::new(
                        ErrorKind::BadPath,
                        format!("control fifo {shown} is not a fifo; refusing it"),
                    ))
                }
            }
            fs::chmod(&path, Mode::from_raw_mode(0o600))
                .map_err(|e| Error::os(ErrorKind::System, format!("chmod {shown}"), e))?;
        }
        Err(e) => return Err(Error::os(ErrorKind::System, format!("mkfifo {shown}"), e)),
    }
    // O_RDWR on a FIFO is Linux-defined (fifo(7)): it never blocks and keeps
    // a writer open.
    let fd = fs::open(&path, OFlags::RDWR | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Error::os(ErrorKind::System, format!("open control fifo {shown}"), e))?;
    let stat = fs::fstat(&fd).map_err(|e| Error::os(ErrorKind::System, format!("fstat {shown}"), e))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Fifo {
        return Err(Error::new(ErrorKind::BadPath, format!("control fifo {shown} is not a fifo; refusing it")));
    }
    Ok(fd)
}
