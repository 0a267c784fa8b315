//! The wire protocol: requests read from the control FIFO, one JSON object a
//! line, and the replies written to a client's reply FIFO. Parsing is strict
//! (unknown fields are errors) so that a typo is reported, not ignored.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::event::EventType;

/// Longest request line accepted: PIPE_BUF, the largest write the kernel
/// keeps atomic on a FIFO, so that concurrent writers never interleave.
pub const MAX_LINE: usize = 4096;

/// Largest spec file a request may name with `"spec"`.
pub const MAX_SPEC_FILE: u64 = 1 << 20;

/// The version reported by `version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The OCI runtime-spec version whose state format `state` follows.
pub const OCI_VERSION: &str = "1.2.0";

/// One request, named by its `op` field.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Create a container (and start it when `start` is true).
    Create(CreateRequest),
    /// Let a created container exec its command.
    Start {
        /// The container's id.
        id: String,
    },
    /// Send a signal to a container's process, or its process group.
    Kill {
        /// The container's id.
        id: String,
        /// Number or name; SIGTERM when absent.
        signal: Option<SignalArg>,
        /// Signal the whole process group.
        all: bool,
    },
    /// Forget a stopped container (with `force`: kill it first).
    Delete {
        /// The container's id.
        id: String,
        /// Kill and reap a container that is not stopped yet.
        force: bool,
    },
    /// The OCI state of one container.
    State {
        /// The container's id.
        id: String,
    },
    /// The state of every container.
    List {},
    /// Register a FIFO that receives event lines.
    Subscribe(SubscribeRequest),
    /// Stop every container and exit.
    Shutdown {},
    /// The supervisor's version.
    Version {},
}

/// The ops, as `op` names them.
const OPS: &str = "create, start, kill, delete, state, list, subscribe, shutdown, version";

/// The fields of `start` and `state`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdFields {
    id: String,
}

/// The fields of `kill`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillFields {
    id: String,
    #[serde(default)]
    signal: Option<SignalArg>,
    #[serde(default)]
    all: bool,
}

/// The fields of `delete`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteFields {
    id: String,
    #[serde(default)]
    force: bool,
}

/// The fields of `list`, `shutdown` and `version`: none.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

impl Request {
    /// Builds the request an `op` names from the rest of its fields; errors
    /// name the field at fault ("field \"id\": invalid type: integer `5`,
    /// expected a string").
    fn from_fields(op: &str, fields: Map<String, Value>) -> Result<Request> {
        let fields = Value::Object(fields);
        Ok(match op {
            "create" => Request::Create(typed(fields)?),
            "start" => Request::Start { id: typed::<IdFields>(fields)?.id },
            "kill" => {
                let KillFields { id, signal, all } = typed(fields)?;
                Request::Kill { id, signal, all }
            }
            "delete" => {
                let DeleteFields { id, force } = typed(fields)?;
                Request::Delete { id, force }
            }
            "state" => Request::State { id: typed::<IdFields>(fields)?.id },
            "list" => typed::<NoFields>(fields).map(|_| Request::List {})?,
            "subscribe" => Request::Subscribe(typed(fields)?),
            "shutdown" => typed::<NoFields>(fields).map(|_| Request::Shutdown {})?,
            "version" => typed::<NoFields>(fields).map(|_| Request::Version {})?,
            other => return Err(Error::new(ErrorKind::BadRequest, format!("unknown op {other:?} (the ops: {OPS})"))),
        })
    }

    /// The `op` name, for log lines.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Create(_) => "create",
            Request::Start { .. } => "start",
            Request::Kill { .. } => "kill",
            Request::Delete { .. } => "delete",
            Request::State { .. } => "state",
            Request::List {} => "list",
            Request::Subscribe(_) => "subscribe",
            Request::Shutdown {} => "shutdown",
            Request::Version {} => "version",
        }
    }
}

/// The fields of `create`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// The container's id.
    pub id: String,
    /// The command and its arguments; argv[0] without a slash is searched in
    /// the PATH of the container's environment.
    #[serde(default)]
    pub argv: Vec<String>,
    /// The container's whole environment; the supervisor's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Working directory (absolute); the supervisor's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Path opened for reading as stdin; /dev/null when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Path opened (appending, created if missing) as stdout; the
    /// supervisor's stdout when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// Path opened (appending, created if missing) as stderr; the
    /// supervisor's stderr when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// Start at once, in the same request.
    #[serde(default, skip_serializing_if = "is_false")]
    pub start: bool,
    /// Delete the container as soon as it has stopped (`run --rm`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub remove: bool,
    /// An OCI bundle directory, run through `runtime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    /// The OCI runtime for `bundle`: crun, runc or a path; crun by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Annotations reported by `state`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The fields of `subscribe`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubscribeRequest {
    /// A FIFO the subscriber created and opened for reading.
    pub path: String,
    /// Only events of these containers; their retained events are replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    /// Only events of these types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<EventType>>,
    /// Replay every retained event with a greater seq first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

/// A signal given as a number or a name.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum SignalArg {
    /// 9
    Number(i64),
    /// "KILL", "SIGKILL"
    Name(String),
}

impl<'de> Deserialize<'de> for SignalArg {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SignalArg;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a signal number or name (9, \"KILL\", \"SIGKILL\")")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> std::result::Result<SignalArg, E> {
                Ok(SignalArg::Number(n))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> std::result::Result<SignalArg, E> {
                Ok(SignalArg::Number(i64::try_from(n).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> std::result::Result<SignalArg, E> {
                Ok(SignalArg::Name(name.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl SignalArg {
    /// The signal number, or a bad_request error naming the input.
    pub fn number(&self) -> Result<i32> {
        let parsed = match self {
            SignalArg::Number(n) => i32::try_from(*n).ok().filter(|n| (1..=crate::signals::MAX_SIGNAL).contains(n)),
            SignalArg::Name(name) => crate::signals::parse_signal(name),
        };
        parsed.ok_or_else(|| {
            let shown = match self {
                SignalArg::Number(n) => n.to_string(),
                SignalArg::Name(s) => format!("{s:?}"),
            };
            Error::new(ErrorKind::BadRequest, format!("invalid signal {shown}"))
        })
    }
}

/// A request line taken apart: the reply path (when one could be read) and
/// the request or the reason it is not one.
pub struct Parsed {
    /// Where to send the reply, if the client asked for one.
    pub reply: Option<String>,
    /// The request, or why the line is not a valid request.
    pub request: Result<Request>,
}

/// Parses one request line (without its newline). The reply path is taken
/// out first, so that even a request with bad fields gets its error reply.
pub fn parse_line(line: &[u8]) -> Parsed {
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return Parsed {
                reply: None,
                request: Err(Error::new(ErrorKind::BadRequest, format!("malformed request: {e}"))),
            }
        }
    };
    let Value::Object(mut map) = value else {
        return Parsed {
            reply: None,
            request: Err(Error::new(ErrorKind::BadRequest, "malformed request: not a JSON object")),
        };
    };
    let reply = match map.remove("reply") {
        None => None,
        Some(Value::String(path)) => Some(path),
        Some(_) => {
            return Parsed {
                reply: None,
                request: Err(Error::new(ErrorKind::BadRequest, "field \"reply\" must be a string")),
            }
        }
    };
    if line.len() > MAX_LINE {
        return Parsed { reply, request: Err(too_long(line.len())) };
    }
    Parsed { reply, request: request_from_map(map) }
}

/// The reply path of a line too long to be parsed: the string after the
/// first `"reply":` in what was held of it, if any (best effort, so that the
/// client hears `too_long` rather than nothing).
pub fn reply_path_in(held: &[u8]) -> Option<String> {
    let key = b"\"reply\"";
    let at = held.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = held[at..].trim_ascii_start().strip_prefix(b":")?.trim_ascii_start();
    serde_json::Deserializer::from_slice(rest).into_iter::<String>().next()?.ok()
}

/// The error for a line over [`MAX_LINE`].
pub fn too_long(len: usize) -> Error {
    too_long_error(format!("{len} bytes"))
}

/// The error for a line still unterminated after `held` bytes.
pub fn too_long_unterminated(held: usize) -> Error {
    too_long_error(format!("more than {held} bytes"))
}

fn too_long_error(size: String) -> Error {
    Error::new(
        ErrorKind::TooLong,
        format!("request line of {size} is over the limit of {MAX_LINE}; send large specs by file (\"spec\": \"/abs/path.json\")"),
    )
}

fn request_from_map(mut map: Map<String, Value>) -> Result<Request> {
    if let Some(spec) = map.remove("spec") {
        let Value::String(path) = spec else {
            return Err(Error::new(ErrorKind::BadRequest, "field \"spec\" must be a string"));
        };
        for (key, value) in read_spec_file(&path)? {
            map.entry(key).or_insert(value);
        }
    }
    match map.remove("op") {
        Some(Value::String(op)) => Request::from_fields(&op, map),
        Some(_) => Err(Error::new(ErrorKind::BadRequest, "field \"op\" must be a string")),
        None => Err(Error::new(ErrorKind::BadRequest, format!("request has no \"op\" field (the ops: {OPS})"))),
    }
}

/// Deserializes an op's fields, naming the one at fault in the error.
fn typed<T: serde::de::DeserializeOwned>(fields: Value) -> Result<T> {
    serde_path_to_error::deserialize(fields).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message =
            if path == "." { format!("invalid request: {inner}") } else { format!("field {path:?}: {inner}") };
        Error::new(ErrorKind::BadRequest, message)
    })
}

/// Reads the JSON object of a spec file: absolute, a regular file, not a
/// symlink, at most [`MAX_SPEC_FILE`] bytes.
fn read_spec_file(path: &str) -> Result<Map<String, Value>> {
    if !path.starts_with('/') {
        return Err(Error::new(ErrorKind::BadPath, format!("spec file {path:?}: not an absolute path")));
    }
    // lstat first: a device or FIFO is never opened at all.
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => {}
        Ok(_) => return Err(Error::new(ErrorKind::BadPath, format!("spec file {path}: not a regular file"))),
        Err(e) => return Err(Error::os(ErrorKind::BadPath, format!("spec file {path}"), e)),
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::os(ErrorKind::BadPath, format!("open spec file {path}"), e))?;
    let meta = file.metadata().map_err(|e| Error::os(ErrorKind::BadPath, format!("stat spec file {path}"), e))?;
    if !meta.file_type().is_file() || meta.file_type().is_fifo() {
        return Err(Error::new(ErrorKind::BadPath, format!("spec file {path}: not a regular file")));
    }
    if meta.len() > MAX_SPEC_FILE {
        return Err(Error::new(
            ErrorKind::BadPath,
            format!("spec file {path}: {} bytes is over the limit of {MAX_SPEC_FILE}", meta.len()),
        ));
    }
    let mut text = Vec::new();
    file.take(MAX_SPEC_FILE)
        .read_to_end(&mut text)
        .map_err(|e| Error::os(ErrorKind::BadPath, format!("read spec file {path}"), e))?;
    match serde_json::from_slice(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::new(ErrorKind::BadRequest, format!("spec file {path}: not a JSON object"))),
        Err(e) => Err(Error::new(ErrorKind::BadRequest, format!("spec file {path}: {e}"))),
    }
}

/// Checks a container id: `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`.
pub fn validate_id(id: &str) -> Result<()> {
    let bytes = id.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::BadRequest,
            format!("invalid container id {id:?}: use 1 to 64 of [A-Za-z0-9_.-], starting with a letter or digit"),
        ))
    }
}

/// A successful reply: `{"ok":true, ...fields}`.
pub fn ok_reply(fields: Value) -> Value {
    let mut map = Map::new();
    map.insert("ok".into(), Value::Bool(true));
    if let Value::Object(extra) = fields {
        map.extend(extra);
    }
    Value::Object(map)
}

/// A failed reply: `{"ok":false,"error":{"kind":...,"message":...}}`, plus
/// `fields` (for an exec failure: the container's id, instance and status).
pub fn error_reply(err: &Error, fields: Value) -> Value {
    let mut map = Map::new();
    map.insert("ok".into(), Value::Bool(false));
    map.insert("error".into(), serde_json::json!({"kind": err.kind(), "message": err.to_string()}));
    if let Value::Object(extra) = fields {
        map.extend(extra);
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Parsed {
        parse_line(line.as_bytes())
    }

    #[test]
    fn parses_each_op() {
        let r = parse(r#"{"op":"create","id":"a","argv":["true"],"start":true,"reply":"/tmp/r"}"#);
        assert_eq!(r.reply.as_deref(), Some("/tmp/r"));
        match r.request.unwrap() {
            Request::Create(c) => {
                assert_eq!(c.id, "a");
                assert!(c.start);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(r#"{"op":"list"}"#).request, Ok(Request::List {})));
        assert!(matches!(
            parse(r#"{"op":"kill","id":"a","signal":"KILL","all":true}"#).request,
            Ok(Request::Kill { all: true, .. })
        ));
        assert!(matches!(parse(r#"{"op":"kill","id":"a","signal":9}"#).request, Ok(Request::Kill { .. })));
        let sub = parse(r#"{"op":"subscribe","path":"/x","types":["stopped"],"since":3}"#);
        assert!(matches!(sub.request, Ok(Request::Subscribe(SubscribeRequest { since: Some(3), .. }))));
    }

    #[test]
    fn rejects_bad_input_but_keeps_the_reply_path() {
        let r = parse(r#"{"op":"start","reply":"/tmp/r"}"#);
        assert_eq!(r.reply.as_deref(), Some("/tmp/r"));
        assert_eq!(r.request.unwrap_err().kind(), ErrorKind::BadRequest);
        for bad in [
            "",
            "{",
            "[1]",
            "\u{1}\u{2}garbage",
            r#"{"id":"a"}"#,
            r#"{"op":"fly"}"#,
            r#"{"op":"start","id":5}"#,
            r#"{"op":"start","id":"a","extra":1}"#,
            r#"{"op":"list","bogus":true}"#,
            r#"{"op":"subscribe","path":"/x","types":["exploded"]}"#,
        ] {
            assert_eq!(parse(bad).request.unwrap_err().kind(), ErrorKind::BadRequest, "{bad}");
        }
        // Type errors name the field (and the signal, what it takes).
        for (bad, said) in [
            (r#"{"op":"start","id":5}"#, r#"field "id": invalid type: integer `5`, expected a string"#),
            (r#"{"op":"create","id":"a","argv":["true"],"start":"yes"}"#, r#"field "start": invalid type"#),
            (r#"{"op":"create","id":"a","env":{"A":1}}"#, r#"field "env.A": invalid type"#),
            (
                r#"{"op":"kill","id":"a","signal":true}"#,
                r#"field "signal": invalid type: boolean `true`, expected a signal number or name"#,
            ),
            (r#"{"op":"subscribe","path":5}"#, r#"field "path": invalid type"#),
            (r#"{"op":"fly"}"#, r#"unknown op "fly" (the ops: create,"#),
            (r#"{"op":"list","bogus":true}"#, "unknown field `bogus`"),
        ] {
            let message = parse(bad).request.unwrap_err().to_string();
            assert!(message.contains(said), "{bad}: {message}");
        }
        let long = format!(r#"{{"op":"version","reply":"/r","pad":"{}"}}"#, "x".repeat(MAX_LINE));
        let r = parse(&long);
        assert_eq!(r.reply.as_deref(), Some("/r"));
        assert_eq!(r.request.unwrap_err().kind(), ErrorKind::TooLong);
    }

    #[test]
    fn checks_ids_and_signals() {
        for good in ["a", "A9", "web-1.prod_2", &"x".repeat(64)] {
            assert!(validate_id(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "ä", &"x".repeat(65)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
        assert_eq!(SignalArg::Number(9).number().unwrap(), 9);
        assert_eq!(SignalArg::Name("term".into()).number().unwrap(), 15);
        assert!(SignalArg::Number(0).number().is_err());
        assert!(SignalArg::Number(1 << 40).number().is_err());
    }

    #[test]
    fn spec_file_fields_fill_the_request() {
        let dir = std::env::temp_dir().join(format!("pidvisor-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("spec.json");
        std::fs::write(&path, r#"{"op":"create","id":"big","argv":["true"]}"#).unwrap();
        let line = format!(r#"{{"spec":"{}"}}"#, path.display());
        assert!(matches!(parse(&line).request, Ok(Request::Create(_))));
        let rel = parse(r#"{"op":"create","spec":"rel.json"}"#);
        assert_eq!(rel.request.unwrap_err().kind(), ErrorKind::BadPath);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
