//! OCI bundles run through an installed OCI runtime (runc, crun, or a path).
//! The runtime's own commands — `create`, `start`, `delete` — run as helper
//! processes of the supervisor, watched through their pidfds like any
//! container, so the loop never waits for them. The container process is the
//! runtime's container init, which is reparented to the supervisor (a
//! subreaper) when `runtime create` exits; its exit status is read through
//! its own pidfd like every other container's.
//!
//! Each supervisor root keeps the runtime's state in `ROOT/runtime`, so two
//! roots never see each other's containers.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

/// The directory in the root that holds the runtime's state, pid files and log.
pub const RUNTIME_DIR: &str = "runtime";

/// An OCI runtime and where its state lives.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The runtime's executable, resolved.
    pub program: PathBuf,
    /// Its `--root` (state directory).
    pub state: PathBuf,
}

/// Which runtime command a helper process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// `create --bundle B --pid-file F ID`
    Create,
    /// `start ID`
    Start,
    /// `delete --force ID`
    Delete,
}

impl Job {
    /// The runtime's verb.
    pub fn verb(self) -> &'static str {
        match self {
            Job::Create => "create",
            Job::Start => "start",
            Job::Delete => "delete",
        }
    }
}

impl Runtime {
    /// Resolves `name` (crun, runc, or a path; runc, else crun, when None)
    /// against the supervisor's PATH; the state lives in `root/runtime`.
    pub fn resolve(name: Option<&str>, root: &Path) -> Result<Self> {
        let candidates: Vec<&str> = match name {
            Some(n) => vec![n],
            None => vec!["runc", "crun"],
        };
        for candidate in &candidates {
            if let Some(program) = find_program(candidate) {
                return Ok(Runtime { program, state: root.join(RUNTIME_DIR) });
            }
        }
        Err(Error::new(
            ErrorKind::BadRequest,
            format!("OCI runtime {} not found in PATH (install runc or crun, or give a path)", candidates.join(" or ")),
        ))
    }

    /// The pid file of a container.
    pub fn pid_file(&self, id: &str) -> PathBuf {
        self.state.join(format!("{id}.pid"))
    }

    /// The runtime's log, shared by all its commands on this root.
    pub fn log_file(&self) -> PathBuf {
        self.state.join("runtime.log")
    }

    /// The argv of a runtime command for container `id`.
    pub fn argv(&self, job: Job, id: &str, bundle: Option<&str>) -> Vec<String> {
        let mut argv = vec![
            self.program.to_string_lossy().into_owned(),
            "--root".into(),
            self.state.to_string_lossy().into_owned(),
            "--log".into(),
            self.log_file().to_string_lossy().into_owned(),
            job.verb().into(),
        ];
        match job {
            Job::Create => {
                argv.extend(["--bundle".into(), bundle.unwrap_or(".").into()]);
                argv.extend(["--pid-file".into(), self.pid_file(id).to_string_lossy().into_owned()]);
            }
            Job::Start => {}
            Job::Delete => argv.push("--force".into()),
        }
        argv.push(id.into());
        argv
    }

    /// The container init's PID, from the pid file `create` wrote.
    pub fn read_pid(&self, id: &str) -> Result<i32> {
        let path = self.pid_file(id);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::os(ErrorKind::System, format!("read pid file {}", path.display()), e))?;
        text.trim()
            .parse()
            .map_err(|_| Error::new(ErrorKind::System, format!("pid file {}: not a pid: {text:?}", path.display())))
    }

    /// The last line of the runtime's log, to explain a failure.
    pub fn last_log_line(&self) -> String {
        std::fs::read_to_string(self.log_file())
            .ok()
            .and_then(|text| text.lines().rev().find(|l| !l.trim().is_empty()).map(str::to_string))
            .unwrap_or_else(|| "no log".into())
    }
}

/// Checks a bundle directory: absolute, with a config.json.
pub fn check_bundle(bundle: &str) -> Result<()> {
    if !bundle.starts_with('/') {
        return Err(Error::new(ErrorKind::BadRequest, format!("bundle {bundle:?}: not an absolute path")));
    }
    let config = Path::new(bundle).join("config.json");
    if !config.is_file() {
        return Err(Error::new(ErrorKind::BadPath, format!("bundle {bundle}: no config.json")));
    }
    Ok(())
}

fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return is_executable(&path).then_some(path);
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).map(|dir| dir.join(OsStr::new(name))).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    rustix::fs::access(path, rustix::fs::Access::EXEC_OK).is_ok() && path.is_file()
}
