//! The supervisor crate's error type: every failure names the operation, the
//! object and, where there is one, the errno, so that a log line or a reply
//! says what went wrong without a second look.

use std::fmt;
use std::io;

use serde::Serialize;

/// What kind of failure a reply carries; the wire name is the snake_case form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is not valid JSON, not an object, or has a missing, unknown
    /// or ill-typed field, an invalid id, signal or path.
    BadRequest,
    /// The request line is longer than the protocol allows.
    TooLong,
    /// No container has that id.
    NotFound,
    /// A container with that id already exists.
    Exists,
    /// The container is not in a state that allows the operation.
    WrongState,
    /// A path given by the client is unusable (not a FIFO, a symlink, relative,
    /// no reader, missing).
    BadPath,
    /// The container process could not exec its command.
    ExecFailed,
    /// A system call failed for a reason that is not the client's input.
    System,
    /// The supervisor is shutting down and takes no new containers.
    ShuttingDown,
    /// The events asked for (`since`) are no longer retained.
    Expired,
}

/// An error of the supervisor: a kind for the wire, a message for people and
/// the underlying OS error where there is one.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<io::Error>,
}

impl Error {
    /// An error with a kind and a message that names the operation and object.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), source: None }
    }

    /// A failed system call: `what` names the operation and the object, the
    /// errno is appended when displayed.
    pub fn os(kind: ErrorKind, what: impl Into<String>, err: impl Into<io::Error>) -> Self {
        Error { kind, message: what.into(), source: Some(err.into()) }
    }

    /// The kind sent on the wire.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The raw errno of the underlying OS error, if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.as_ref().and_then(io::Error::raw_os_error)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(err) = &self.source {
            write!(f, ": {}", describe_io(err))?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// An io::Error as "No such file or directory (ENOENT)": the text people read
/// and the errno name they search for.
pub fn describe_io(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => {
            let text = io::Error::from_raw_os_error(code).to_string();
            // std appends " (os error N)"; replace it with the errno's name.
            let text = text.split(" (os error").next().unwrap_or(&text).to_string();
            match errno_name(code) {
                Some(name) => format!("{text} ({name})"),
                None => format!("{text} (errno {code})"),
            }
        }
        None => err.to_string(),
    }
}

/// The symbolic name of the errnos a supervisor meets.
pub fn errno_name(code: i32) -> Option<&'static str> {
    Some(match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EPIPE => "EPIPE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ELOOP => "ELOOP",
        libc::ENOSYS => "ENOSYS",
        libc::ELIBBAD => "ELIBBAD",
        libc::ECONNREFUSED => "ECONNREFUSED",
        _ => return None,
    })
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
