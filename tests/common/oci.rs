//! OCI bundle fixtures: a minimal bundle whose rootfs is a statically linked
//! busybox with applet symlinks, a check that runc and busybox are there
//! (the tests fail, never skip, when they are not: `scripts/test` installs
//! them), and a guard that removes a test's runc containers even when the
//! test panics.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

use super::run_with_deadline;

/// The applets linked in every bundle's /bin.
pub const APPLETS: &[&str] =
    &["sh", "ash", "true", "false", "sleep", "echo", "cat", "kill", "grep", "ls", "ps", "env", "id", "test", "printf"];

/// What a bundle's config.json varies in.
#[derive(Debug, Clone, Default)]
pub struct BundleOptions {
    /// Give the container a network namespace of its own.
    pub network: bool,
    /// Extra `NAME=VALUE` entries after PATH.
    pub env: Vec<String>,
}

/// Where the tools the bundle tests need are.
#[derive(Debug, Clone)]
pub struct Tools {
    /// A statically linked busybox.
    pub busybox: PathBuf,
    /// The runc executable.
    pub runc: PathBuf,
}

const HOW_TO_INSTALL: &str = "scripts/test installs it (apt-get install runc busybox-static)";

/// Finds runc and a static busybox, or panics saying how to install them.
/// `$BUSYBOX` overrides /bin/busybox (it must be statically linked).
pub fn require_tools() -> Tools {
    assert!(
        rustix::process::geteuid().is_root(),
        "the OCI bundle tests run runc, which needs root here; run them as root"
    );
    let busybox = std::env::var_os("BUSYBOX").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/bin/busybox"));
    match is_static_elf(&busybox) {
        Ok(true) => {}
        Ok(false) => panic!(
            "{} is dynamically linked; the bundle tests need busybox-static: {HOW_TO_INSTALL}",
            busybox.display()
        ),
        Err(e) => panic!("{}: {e}; the bundle tests need a static busybox: {HOW_TO_INSTALL}", busybox.display()),
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let runc = std::env::split_paths(&path)
        .map(|dir| dir.join("runc"))
        .find(|p| rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok())
        .unwrap_or_else(|| panic!("runc not found in PATH; the bundle tests need it: {HOW_TO_INSTALL}"));
    Tools { busybox, runc }
}

/// Whether an ELF executable has no program interpreter (PT_INTERP), i.e.
/// runs in a rootfs without a dynamic loader.
fn is_static_elf(path: &Path) -> Result<bool, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("read: {e}"))?;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a little-endian 64-bit ELF file".into());
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        if at + 4 > bytes.len() {
            return Err("truncated program headers".into());
        }
        const PT_INTERP: u32 = 3;
        if u32_at(at) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Builds a bundle in `dir` (created if missing) running `args`, and
/// returns its absolute path: rootfs/ with busybox and its applets, and a
/// config.json with a read-only root, /proc, /dev, /dev/pts, /dev/shm, the
/// pid, mount, ipc and uts namespaces (network when asked), no terminal.
pub fn make_bundle(dir: &Path, args: &[&str], opts: &BundleOptions) -> PathBuf {
    let tools = require_tools();
    assert!(dir.is_absolute(), "bundle dir {} must be absolute", dir.display());
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(rootfs.join(sub)).unwrap();
    }
    // Copied by cp, not here: this test process forks in other threads, and
    // a child inheriting a write fd to the binary would make its exec fail
    // with ETXTBSY.
    let out = run_with_deadline(Command::new("cp").arg(&tools.busybox).arg(rootfs.join("bin/busybox")));
    assert!(out.status.success(), "cp {}: {}", tools.busybox.display(), String::from_utf8_lossy(&out.stderr));
    for applet in APPLETS {
        symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config(args, opts)).unwrap()).unwrap();
    dir.to_path_buf()
}

/// The config.json of [`make_bundle`]: `runc spec` trimmed to what a
/// non-interactive busybox container needs.
pub fn config(args: &[&str], opts: &BundleOptions) -> Value {
    let mut env = vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    env.extend(opts.env.iter().cloned());
    let mut namespaces =
        vec![json!({"type": "pid"}), json!({"type": "mount"}), json!({"type": "ipc"}), json!({"type": "uts"})];
    if opts.network {
        namespaces.push(json!({"type": "network"}));
    }
    let caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": env,
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "pidvisor-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777", "size=65536k"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": namespaces,
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// A container id unique on this host (runc's cgroup paths are global):
/// `name`, this test process's PID.
pub fn unique_id(name: &str) -> String {
    let id = format!("{name}-{}", std::process::id());
    assert!(id.len() <= 64, "id {id} too long");
    id
}

/// Runs runc on a supervisor root's runtime state directory.
pub fn runc(root: &Path, args: &[&str]) -> Output {
    let tools = require_tools();
    run_with_deadline(Command::new(tools.runc).arg("--root").arg(root.join("runtime")).args(args))
}

/// Whether runc on `root` knows container `id` (its state directory exists;
/// `runc list` reads the same directories).
pub fn runc_knows(root: &Path, id: &str) -> bool {
    root.join("runtime").join(id).exists()
}

/// Removes runc's container `id` under a supervisor root when dropped, so a
/// failed test leaves no container, process or cgroup behind. Declare it
/// after the `Sv`, so it runs while the root still exists.
pub struct RuncGuard {
    /// The supervisor root.
    pub root: PathBuf,
    /// The container id.
    pub id: String,
}

impl RuncGuard {
    pub fn new(root: &Path, id: &str) -> Self {
        RuncGuard { root: root.to_path_buf(), id: id.to_string() }
    }
}

impl Drop for RuncGuard {
    fn drop(&mut self) {
        // Never panics: it may run while a failed test unwinds.
        if runc_knows(&self.root, &self.id) {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(self.root.join("runtime"))
                .args(["delete", "--force", &self.id])
                .stdin(std::process::Stdio::null())
                .output();
        }
    }
}
