//! bubblewrap's command line for one box, and whether bubblewrap can build boxes here.

use std::ffi::{CString, OsString};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use joule_planner::catalog::ToolLimits;
use seccompiler::BpfProgram;

use super::{Grant, NOBODY, seccomp};
use crate::enter::Helper;

/// Where the inner-walls helper is bound inside the box.
const ENTER: &str = "/.joule/enter";
/// The tool's working directory inside the box.
pub const WORKDIR: &str = "/work";

/// Top-level entries of a merged-`/usr` system: links into `/usr`, or directories of their own
/// on an older layout; either way the box gets what the host has, read-only.
const ROOT_ENTRIES: [&str; 6] = ["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Files of `/etc` programs read at start (the dynamic loader's cache, the time zone, the
/// alternatives behind `awk` and friends, user and group names).
const ETC: [&str; 5] = [
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/alternatives",
    "/etc/passwd",
    "/etc/group",
];

/// What a tool with the network needs of `/etc` besides: name resolution and certificates.
const ETC_NETWORK: [&str; 6] = [
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
];

/// What one box holds.
pub struct BoxSpec<'a> {
    pub grant: &'a Grant,
    pub program: &'a Path,
    pub argv: &'a [String],
    pub limits: &'a ToolLimits,
    pub filters: &'a [BpfProgram],
    pub helper: Option<&'a Helper>,
    /// Whether the helper enters Landlock (the kernel has it).
    pub landlock: bool,
}

/// bubblewrap's arguments, the descriptors they name, and what joule stages for it.
pub struct Built {
    pub args: Vec<OsString>,
    pub keep: Vec<OwnedFd>,
    pub stage: Option<Stage>,
}

/// Paths joule (as root) mounts where bubblewrap, running as `nobody`, can reach them.
///
/// bubblewrap looks its bind sources up with its own credentials, so as `nobody` it cannot
/// bind a workflow directory under a private home, or an interpreter installed in root's
/// home. The child, still root and in a mount namespace of its own (nothing propagates to the
/// host), mounts a small tmpfs at `dir` and binds each source (canonical paths, resolved by
/// the parent) there; bubblewrap then binds from those.
pub struct Stage {
    pub dir: CString,
    pub options: CString,
    /// (the source, where it is mounted, whether it is a file).
    pub items: Vec<(CString, CString, bool)>,
}

/// Where the stage goes: a directory every system has that bubblewrap does not mount over
/// (it builds its root under `/tmp`).
fn stage_dir() -> Option<&'static str> {
    ["/dev/shm", "/run", "/mnt", "/var/tmp"]
        .into_iter()
        .find(|d| Path::new(d).is_dir())
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::other(format!("{} has a NUL byte", p.display())))
}

/// A sealed-in-memory copy of `bytes` for bubblewrap to read.
fn memfd(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    let c = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: c is a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    // SAFETY: rewinds a descriptor we own.
    if unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_SET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file.into())
}

/// Whether `path` is already in the box as part of the system (`/usr`, the root links).
fn in_system(path: &Path) -> bool {
    path.starts_with("/usr")
        || ROOT_ENTRIES
            .iter()
            .any(|e| path.starts_with(Path::new("/").join(e)))
}

/// bubblewrap's arguments for a box; with `staged`, the extra binds go through a [`Stage`].
pub fn arguments(b: &BoxSpec, staged: bool) -> io::Result<Built> {
    let mut args: Vec<OsString> = Vec::new();
    let mut keep: Vec<OwnedFd> = Vec::new();
    let mut stage = match (staged, stage_dir()) {
        (true, Some(dir)) => Some(Stage {
            dir: CString::new(dir).map_err(io::Error::other)?,
            options: CString::new("mode=755,size=64k").map_err(io::Error::other)?,
            items: Vec::new(),
        }),
        (true, None) => {
            return Err(io::Error::other(
                "no directory to stage the box's binds in (/dev/shm, /run, /mnt, /var/tmp)",
            ));
        }
        (false, _) => None,
    };
    // A source bubblewrap can reach: the path itself, or its staged copy.
    let mut source = |path: &Path, file: bool| -> io::Result<PathBuf> {
        let Some(st) = stage.as_mut() else {
            return Ok(path.to_path_buf());
        };
        let path = path.canonicalize()?;
        let n = st.items.len();
        let dir = Path::new(st.dir.to_str().map_err(io::Error::other)?);
        let target = dir.join(format!("joule-{}-{n}", std::process::id()));
        st.items.push((cstring(&path)?, cstring(&target)?, file));
        Ok(target)
    };
    let mut arg = |a: &str| args.push(a.into());
    for a in [
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
    ] {
        arg(a);
    }
    if b.grant.network {
        arg("--share-net");
    }
    let id = NOBODY.to_string();
    for a in ["--uid", &id, "--gid", &id, "--hostname", "joule-tool"] {
        arg(a);
    }
    // The system, read-only.
    arg("--ro-bind");
    arg("/usr");
    arg("/usr");
    for entry in ROOT_ENTRIES {
        let host = Path::new("/").join(entry);
        match std::fs::read_link(&host) {
            Ok(target) => {
                args.push("--symlink".into());
                args.push(target.into());
                args.push(host.into());
            }
            Err(_) if host.is_dir() => {
                args.push("--ro-bind".into());
                args.push(host.clone().into());
                args.push(host.into());
            }
            Err(_) => {}
        }
    }
    let etc: Vec<&str> = if b.grant.network {
        ETC.iter().chain(&ETC_NETWORK).copied().collect()
    } else {
        ETC.to_vec()
    };
    for path in etc {
        args.extend(["--ro-bind-try".into(), path.into(), path.into()]);
    }
    // Fresh /proc and a minimal /dev, then size-limited scratch space.
    let size = b.limits.disk_mb.max(1).saturating_mul(1 << 20).to_string();
    args.extend([
        "--proc".into(),
        "/proc".into(),
        "--dev".into(),
        "/dev".into(),
    ]);
    for dir in ["/dev/shm", "/tmp", WORKDIR] {
        args.extend([
            "--size".into(),
            size.clone().into(),
            "--tmpfs".into(),
            dir.into(),
        ]);
    }
    // The program's installation and the granted paths, read-only at their own paths.
    let mut extra: Vec<PathBuf> = Vec::new();
    if let Ok(real) = b.program.canonicalize() {
        extra.extend(super::install_prefix(&real));
    }
    extra.extend(super::install_prefix(b.program));
    extra.extend(b.grant.read.iter().cloned());
    extra.retain(|p| !in_system(p));
    extra.sort();
    extra.dedup();
    extra.retain(|p| p.exists());
    for path in &extra {
        let from = source(path, !path.is_dir())?;
        args.extend(["--ro-bind".into(), from.into(), path.clone().into()]);
    }
    if let Some(h) = b.helper {
        let from = source(&h.program, true)?;
        args.extend(["--ro-bind".into(), from.into(), ENTER.into()]);
    }
    // Nothing writable but the scratch mounts: the box's own root and /dev go read-only.
    for dir in ["/dev", "/"] {
        args.extend(["--remount-ro".into(), dir.into()]);
    }
    args.extend(["--chdir".into(), WORKDIR.into()]);
    for (i, program) in b.filters.iter().enumerate() {
        let fd = memfd(&format!("joule-seccomp-{i}"), &seccomp::bytes(program))?;
        args.push("--add-seccomp-fd".into());
        args.push(fd.as_raw_fd().to_string().into());
        keep.push(fd);
    }
    args.push("--".into());
    if let Some(h) = b.helper {
        args.push(ENTER.into());
        args.extend(h.args.iter().cloned());
        let mut read: Vec<PathBuf> = [
            "/usr",
            "/etc",
            "/proc",
            "/dev/null",
            "/dev/zero",
            "/dev/urandom",
            "/dev/random",
            "/dev/full",
        ]
        .into_iter()
        .map(PathBuf::from)
        .collect();
        read.extend(
            ROOT_ENTRIES
                .iter()
                .map(|e| Path::new("/").join(e))
                .filter(|p| p.exists()),
        );
        read.extend(extra.iter().cloned());
        if b.landlock {
            for p in &read {
                args.push("--read".into());
                args.push(p.clone().into());
            }
            for p in [WORKDIR, "/tmp", "/dev/shm", "/dev/null"] {
                args.push("--write".into());
                args.push(p.into());
            }
            if !b.grant.network {
                args.push("--no-tcp".into());
            }
        }
        args.push("--".into());
    }
    args.push(b.program.into());
    args.extend(b.argv.iter().map(OsString::from));
    Ok(Built { args, keep, stage })
}

/// bubblewrap, found on `PATH` and tried once: it must be able to build a box here (the
/// kernel may refuse user namespaces). Every failure says what to do.
pub fn usable() -> Result<PathBuf, String> {
    static PROBE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let found = std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("bwrap"))
                    .find(|c| c.is_file())
            });
            let Some(bwrap) = found else {
                return Err("bubblewrap (`bwrap`), joule's tool sandbox, is not installed: install it with `apt-get install bubblewrap`".into());
            };
            let mut probe = std::process::Command::new(&bwrap);
            probe
                .args(["--unshare-all", "--unshare-user", "--disable-userns"])
                .args(["--uid", "65534", "--gid", "65534", "--ro-bind", "/", "/"])
                .args(["--", "/bin/true"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null());
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                use std::os::unix::process::CommandExt;
                probe.uid(NOBODY).gid(NOBODY);
            }
            match probe.output() {
                Ok(o) if o.status.success() => Ok(bwrap),
                Ok(o) => Err(format!(
                    "bubblewrap cannot build a box on this host ({}); it needs unprivileged user namespaces (`sysctl kernel.unprivileged_userns_clone=1`, or a container that allows them)",
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => Err(format!("cannot start {}: {e}", bwrap.display())),
            }
        })
        .clone()
}
