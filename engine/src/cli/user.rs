//! `tern user add/remove/list`: the SMTP AUTH users file (`crate::auth`),
//! named by `--users-file`, else by the config's `auth.users_file`. The
//! running server reads the file at start-up only: restart it to apply.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;

use clap::Subcommand;

use super::{load, Common};
use crate::auth::{self, Added, Users};
use crate::config::Overrides;

/// Longest password read: RFC 4616 (SASL PLAIN) requires servers to take
/// passwords of up to 255 octets; a longer line is a mistake (a file
/// piped in by accident), not a password.
const PASSWORD_BYTES_MAX: usize = 1024;

/// Which users file.
#[derive(clap::Args, Clone, Default)]
pub(super) struct UsersFileArgs {
    /// The users file (default: the config's auth.users_file).
    #[arg(long)]
    users_file: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand)]
pub(super) enum UserAction {
    /// Add NAME, or set its password: one line read from stdin (prompted
    /// for, without echo, when stdin is a terminal).
    Add {
        /// User name: 1..=255 bytes, no ':', whitespace or control characters.
        name: String,
        #[command(flatten)]
        file: UsersFileArgs,
    },
    /// Remove NAME (an error if the file does not have it).
    Remove {
        /// User name.
        name: String,
        #[command(flatten)]
        file: UsersFileArgs,
    },
    /// The user names, one per line, in file order.
    List {
        #[command(flatten)]
        file: UsersFileArgs,
    },
}

/// Runs one `tern user` command (`add` reads the password from stdin).
pub(super) fn run(action: UserAction, out: &mut impl Write) -> anyhow::Result<()> {
    match action {
        UserAction::Add { name, file } => {
            let path = users_file(&file)?;
            auth::check_name(&name).map_err(|why| anyhow::anyhow!("user {name:?}: {why}"))?;
            let password = read_password(&name)?;
            let verb = match auth::add_user(&path, &name, &auth::hash_password(&password))? {
                Added::New => "added",
                Added::Replaced => "replaced",
            };
            writeln!(out, "{verb} {name} in {}", path.display())?;
        }
        UserAction::Remove { name, file } => {
            let path = users_file(&file)?;
            auth::remove_user(&path, &name)?;
            writeln!(out, "removed {name} from {}", path.display())?;
        }
        UserAction::List { file } => {
            for name in Users::load(&users_file(&file)?)?.names() {
                writeln!(out, "{name}")?;
            }
        }
    }
    Ok(())
}

/// `--users-file`, else `auth.users_file` of the config (a relative path
/// there is relative to the config file).
fn users_file(args: &UsersFileArgs) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.users_file {
        return Ok(p.clone());
    }
    load(&args.common, Overrides::default())?
        .auth
        .users_file
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no users file: pass --users-file PATH, or --config FILE with auth.users_file"
            )
        })
}

/// One line of stdin, without its line end; on a terminal, prompted for
/// on stderr with echo off.
fn read_password(name: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let echo = if stdin.is_terminal() {
        eprint!("password for {name}: ");
        EchoOff::new()
    } else {
        None
    };
    let mut line = String::new();
    let read = stdin
        .lock()
        .take(PASSWORD_BYTES_MAX as u64 + 2)
        .read_line(&mut line);
    if echo.is_some() {
        eprintln!();
    }
    drop(echo);
    read?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.len() > PASSWORD_BYTES_MAX {
        anyhow::bail!("password longer than {PASSWORD_BYTES_MAX} bytes");
    }
    if password.is_empty() {
        anyhow::bail!("empty password (give it as one line on stdin)");
    }
    Ok(password.to_owned())
}

/// The terminal on stdin with echo off, until dropped.
struct EchoOff(libc::termios);

impl EchoOff {
    /// `None` when the terminal's settings cannot be read or set (the
    /// password is then echoed).
    fn new() -> Option<EchoOff> {
        // SAFETY: termios is plain data that tcgetattr fills in; fd 0 is
        // stdin, open for the whole process.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return None;
            }
            let mut quiet = saved;
            quiet.c_lflag &= !libc::ECHO;
            (libc::tcsetattr(0, libc::TCSANOW, &quiet) == 0).then_some(EchoOff(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `new` on the same fd.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.0);
        }
    }
}
