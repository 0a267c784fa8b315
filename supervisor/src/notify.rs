//! systemd's readiness protocol (sd_notify(3)), written out: one datagram to
//! `$NOTIFY_SOCKET`. The CLI uses the same protocol to learn that a
//! supervisor it started in the background is ready.

use std::ffi::{OsStr, OsString};
use std::os::unix::net::UnixDatagram;

/// Takes `$NOTIFY_SOCKET` out of the environment, as sd_notify(3)'s
/// unset_environment does, so that no container inherits it (an OCI runtime
/// would try to proxy it), and returns it.
pub fn take_notify_socket() -> Option<OsString> {
    let socket = std::env::var_os("NOTIFY_SOCKET")?;
    std::env::remove_var("NOTIFY_SOCKET");
    Some(socket)
}

/// Sends `state` ("READY=1", "STOPPING=1") to the socket `path`. An address
/// starting with '@' is in the abstract namespace.
pub fn notify(path: &OsStr, state: &str) {
    let result = UnixDatagram::unbound().and_then(|socket| {
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path);
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)
        } else {
            socket.send_to(state.as_bytes(), path)
        }
    });
    if let Err(e) = result {
        // A socket that is gone was a one-shot readiness listener (the CLI's).
        if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) {
            log::debug!("notify {state}: {e}");
            return;
        }
        log::warn!("notify {state} to NOTIFY_SOCKET {}: {e}", path.to_string_lossy());
    }
}
