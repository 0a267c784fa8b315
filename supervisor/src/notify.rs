//! systemd's readiness protocol (sd_notify(3)), written out: one datagram to
//! `$NOTIFY_SOCKET`. The CLI uses the same protocol to learn that a
//! supervisor it started in the background is ready.

use std::os::unix::net::UnixDatagram;

/// Sends `state` ("READY=1", "STOPPING=1") to `$NOTIFY_SOCKET`, if set. An
/// address starting with '@' is in the abstract namespace.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let result = UnixDatagram::unbound().and_then(|socket| {
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)
        } else {
            socket.send_to(state.as_bytes(), &path)
        }
    });
    if let Err(e) = result {
        log::warn!("notify {state} to NOTIFY_SOCKET {}: {e}", path.to_string_lossy());
    }
}
