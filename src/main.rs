//! `pidvisor`: the command line. One subcommand a verb, each in
//! `commands/<verb>.rs`; all but `supervise` are clients of the supervisor's
//! FIFO protocol (`client.rs`).

mod client;
mod commands;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// A Linux process supervisor that tells you — without polling and without
/// races — when a container was created, started or stopped, and with which
/// exit status.
///
/// One `pidvisor supervise` process owns every container it launches and
/// pushes `created`, `started`, `stopped` and `deleted` events to subscriber
/// FIFOs. The other verbs talk to it through the control FIFO in its root.
///
/// Exit codes: 0 success; 1 the operation failed; 2 usage error; `wait`,
/// `run` and `create --wait` exit with the container's status (125 when
/// pidvisor itself failed); `event --timeout` exits 124 when nothing matched.
///
/// Example:
///   pidvisor run hello -- sh -c 'echo hi; exit 3'; echo $?   # hi, 3
#[derive(Parser, Debug)]
#[command(name = "pidvisor", version, max_term_width = 100)]
pub struct Cli {
    /// The supervisor's root directory [default: $XDG_RUNTIME_DIR/pidvisor,
    /// else /run/pidvisor for root, else /tmp/pidvisor-$UID].
    #[arg(long, global = true, env = "PIDVISOR_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Supervise(commands::supervise::Args),
    Create(commands::create::Args),
    Start(commands::start::Args),
    Run(commands::run::Args),
    Kill(commands::kill::Args),
    Delete(commands::delete::Args),
    State(commands::state::Args),
    List(commands::list::Args),
    Event(commands::event::Args),
    Wait(commands::wait::Args),
    Shutdown(commands::shutdown::Args),
    Version(commands::version::Args),
}

fn main() {
    let cli = Cli::parse();
    let root = pidvisor_supervisor::root::default_root(cli.root.as_deref());
    let root = absolute(root);
    let code = match cli.command {
        Command::Supervise(args) => commands::supervise::run(args, root),
        Command::Create(args) => commands::create::run(args, root),
        Command::Start(args) => commands::start::run(args, root),
        Command::Run(args) => commands::run::run(args, root),
        Command::Kill(args) => commands::kill::run(args, root),
        Command::Delete(args) => commands::delete::run(args, root),
        Command::State(args) => commands::state::run(args, root),
        Command::List(args) => commands::list::run(args, root),
        Command::Event(args) => commands::event::run(args, root),
        Command::Wait(args) => commands::wait::run(args, root),
        Command::Shutdown(args) => commands::shutdown::run(args, root),
        Command::Version(args) => commands::version::run(args, root),
    };
    std::process::exit(code);
}

/// The root as an absolute path: the supervisor runs in `/` and FIFO paths
/// on the wire must be absolute.
fn absolute(path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        return path;
    }
    match std::env::current_dir() {
        Ok(cwd) => cwd.join(path),
        Err(_) => path,
    }
}
