//! The inner-walls helper: the first program inside the box. It closes every descriptor but
//! 0, 1 and 2 (whatever joule's own parent leaked to it, whatever bubblewrap held), enters
//! Landlock, and becomes the tool. It is `joule-sandbox-enter` (this crate's binary) or the
//! `joule` binary itself (`joule __sandbox-enter`), found beside the running program.
//!
//! Its command line: `[--read PATH]... [--write PATH]... [--no-tcp] -- PROGRAM ARGS...`.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::landlock;

/// The helper's own binary name.
pub const HELPER: &str = "joule-sandbox-enter";
/// How `joule` is asked to be the helper.
pub const JOULE_SUBCOMMAND: &str = "__sandbox-enter";

/// The helper program, and the arguments that make it the helper.
#[derive(Debug, Clone)]
pub struct Helper {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl Helper {
    /// `joule-sandbox-enter` beside the running program (or one directory up: a test binary
    /// in `target/debug/deps`), else the running program itself when it is `joule`.
    pub fn locate() -> Option<Helper> {
        static FOUND: OnceLock<Option<Helper>> = OnceLock::new();
        FOUND
            .get_or_init(|| {
                let exe = std::env::current_exe().ok()?;
                let dir = exe.parent()?;
                for d in [Some(dir), dir.parent()].into_iter().flatten() {
                    let candidate = d.join(HELPER);
                    if candidate.is_file() {
                        return Some(Helper {
                            program: candidate,
                            args: Vec::new(),
                        });
                    }
                }
                let joule = [Some(exe.clone()), Some(dir.join("joule"))]
                    .into_iter()
                    .flatten()
                    .find(|p| p.file_name().is_some_and(|n| n == "joule") && p.is_file())?;
                Some(Helper {
                    program: joule,
                    args: vec![JOULE_SUBCOMMAND.into()],
                })
            })
            .clone()
    }
}

/// What the helper was asked to do.
#[derive(Debug, Default, PartialEq)]
struct Walls {
    read: Vec<PathBuf>,
    write: Vec<PathBuf>,
    no_tcp: bool,
    command: Vec<OsString>,
}

fn parse(args: Vec<OsString>) -> Result<Walls, String> {
    let mut w = Walls::default();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--read") => w.read.push(it.next().ok_or("--read needs a path")?.into()),
            Some("--write") => w
                .write
                .push(it.next().ok_or("--write needs a path")?.into()),
            Some("--no-tcp") => w.no_tcp = true,
            Some("--") => {
                w.command = it.collect();
                break;
            }
            _ => return Err(format!("unexpected argument {a:?}")),
        }
    }
    if w.command.is_empty() {
        return Err("no command after `--`".into());
    }
    Ok(w)
}

/// Runs the helper with its arguments (after the program name, and after
/// [`JOULE_SUBCOMMAND`] for `joule`). Returns only to fail: on success the process is the tool.
pub fn main(args: Vec<OsString>) -> std::process::ExitCode {
    let error = match parse(args).and_then(|w| become_tool(&w)) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    eprintln!("joule sandbox: {error}");
    std::process::ExitCode::from(126)
}

fn become_tool(w: &Walls) -> Result<std::convert::Infallible, String> {
    // SAFETY: closes descriptors of this process; nothing of Rust's owns them.
    if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) } != 0 {
        return Err(format!(
            "cannot close inherited descriptors: {}",
            std::io::Error::last_os_error()
        ));
    }
    if !w.read.is_empty() || !w.write.is_empty() {
        let read: Vec<&Path> = w.read.iter().map(PathBuf::as_path).collect();
        let write: Vec<&Path> = w.write.iter().map(PathBuf::as_path).collect();
        landlock::restrict(&read, &write, w.no_tcp)?;
    }
    let argv: Vec<CString> = w
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| "an argument has a NUL byte".to_string()))
        .collect::<Result<_, _>>()?;
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let env: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: argv and env are NUL-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(argv[0].as_ptr(), ptrs.as_ptr(), env.as_ptr()) };
    Err(format!(
        "cannot run {}: {}",
        w.command[0].to_string_lossy(),
        std::io::Error::last_os_error()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helpers_command_line_reads_back() {
        let w = parse(
            [
                "--read",
                "/usr",
                "--write",
                "/work",
                "--no-tcp",
                "--",
                "/bin/echo",
                "--read",
            ]
            .map(OsString::from)
            .to_vec(),
        )
        .unwrap();
        assert_eq!(w.read, [PathBuf::from("/usr")]);
        assert_eq!(w.write, [PathBuf::from("/work")]);
        assert!(w.no_tcp);
        assert_eq!(w.command, ["/bin/echo", "--read"].map(OsString::from));
        assert!(parse(vec!["--".into()]).is_err());
        assert!(parse(vec!["--bogus".into()]).is_err());
    }
}
