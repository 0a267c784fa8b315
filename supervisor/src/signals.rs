//! Signal names and numbers: what `kill` accepts ("9", "KILL", "SIGKILL",
//! "sigkill") and how `stopped` events name a terminating signal.

/// The standard Linux signals, by number.
const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", libc::SIGHUP),
    ("SIGINT", libc::SIGINT),
    ("SIGQUIT", libc::SIGQUIT),
    ("SIGILL", libc::SIGILL),
    ("SIGTRAP", libc::SIGTRAP),
    ("SIGABRT", libc::SIGABRT),
    ("SIGBUS", libc::SIGBUS),
    ("SIGFPE", libc::SIGFPE),
    ("SIGKILL", libc::SIGKILL),
    ("SIGUSR1", libc::SIGUSR1),
    ("SIGSEGV", libc::SIGSEGV),
    ("SIGUSR2", libc::SIGUSR2),
    ("SIGPIPE", libc::SIGPIPE),
    ("SIGALRM", libc::SIGALRM),
    ("SIGTERM", libc::SIGTERM),
    ("SIGSTKFLT", libc::SIGSTKFLT),
    ("SIGCHLD", libc::SIGCHLD),
    ("SIGCONT", libc::SIGCONT),
    ("SIGSTOP", libc::SIGSTOP),
    ("SIGTSTP", libc::SIGTSTP),
    ("SIGTTIN", libc::SIGTTIN),
    ("SIGTTOU", libc::SIGTTOU),
    ("SIGURG", libc::SIGURG),
    ("SIGXCPU", libc::SIGXCPU),
    ("SIGXFSZ", libc::SIGXFSZ),
    ("SIGVTALRM", libc::SIGVTALRM),
    ("SIGPROF", libc::SIGPROF),
    ("SIGWINCH", libc::SIGWINCH),
    ("SIGIO", libc::SIGIO),
    ("SIGPWR", libc::SIGPWR),
    ("SIGSYS", libc::SIGSYS),
];

/// The highest signal number the kernel accepts (SIGRTMAX on Linux).
pub const MAX_SIGNAL: i32 = 64;

/// The name of a signal number: "SIGKILL", "SIGRTMIN+3", or "SIG<n>".
pub fn signal_name(number: i32) -> String {
    if let Some((name, _)) = SIGNALS.iter().find(|(_, n)| *n == number) {
        return (*name).to_string();
    }
    let rtmin = libc::SIGRTMIN();
    if (rtmin..=MAX_SIGNAL).contains(&number) {
        return format!("SIGRTMIN+{}", number - rtmin);
    }
    format!("SIG{number}")
}

/// Parses "9", "KILL", "SIGKILL" or "sigkill" into a signal number in 1..=64.
pub fn parse_signal(text: &str) -> Option<i32> {
    let text = text.trim();
    if let Ok(number) = text.parse::<i32>() {
        return (1..=MAX_SIGNAL).contains(&number).then_some(number);
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    SIGNALS.iter().find(|(n, _)| *n == name).map(|(_, number)| *number)
}

/// Sets this thread's signal mask to `signal` alone.
pub fn block_only(signal: i32) {
    // SAFETY: plain libc calls on a local, initialized sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Whether a signal's disposition is SIG_IGN (as `nohup` leaves SIGHUP).
pub fn is_ignored(signal: i32) -> bool {
    // SAFETY: reads the disposition into a zeroed sigaction we own.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling() {
        for text in ["9", "KILL", "SIGKILL", "sigkill", "Kill"] {
            assert_eq!(parse_signal(text), Some(libc::SIGKILL), "{text}");
        }
        assert_eq!(parse_signal("TERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("65"), None);
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(parse_signal(""), None);
    }

    #[test]
    fn names_round_trip() {
        for (name, number) in SIGNALS {
            assert_eq!(signal_name(*number), *name);
            assert_eq!(parse_signal(name), Some(*number));
        }
        assert_eq!(signal_name(libc::SIGRTMIN() + 2), "SIGRTMIN+2");
    }
}
