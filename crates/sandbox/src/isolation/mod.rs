//! The walls around a tool process, built by construction rather than filtered after the
//! fact: the tool runs in a box that bubblewrap (the sandbox of Flatpak, audited and kept up by
//! its maintainers) builds for it, as an unprivileged user with no capabilities.
//!
//! Outermost first: joule starts bubblewrap in a cgroup of its own (memory counting shared
//! memory and tmpfs, processes, CPU; where the host lets joule create one), in its own session,
//! under resource limits, with no inherited descriptor but the box's own, as the unprivileged
//! `nobody` when joule is root. bubblewrap then makes new user, PID, mount, IPC, UTS and
//! (unless the tool has the network) network namespaces, maps the tool to uid 65534 with no
//! capabilities and no way to make further user namespaces, builds a minimal read-only root
//! (the system's `/usr` and its links, a few files of `/etc`, a fresh `/proc`, a minimal
//! `/dev`) with size-limited tmpfs for the working directory, `/tmp` and `/dev/shm`, binds the
//! program's installation and the tool's granted paths read-only, installs the seccomp
//! allow-list, and runs the inner-walls helper, which closes every descriptor but 0, 1 and 2,
//! enters Landlock, and becomes the tool. When the tool ends, the PID namespace's init ends
//! and takes every process of the box with it; the cgroup is emptied and removed.
//!
//! A layer this host cannot provide is recorded as absent, and a step whose policy requires it
//! fails rather than run without it.

mod bwrap;
pub mod cgroup;

pub mod seccomp;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use joule_planner::catalog::ToolLimits;

pub use joule_call::Layer;

use crate::enter::Helper;

/// The uid and gid a tool runs as, inside its box and (when joule is root) outside it.
pub const NOBODY: u32 = 65534;

/// What one tool process may reach beyond its box.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// Extra paths it may read (and execute from), bound read-only at the same path.
    pub read: Vec<PathBuf>,
    /// Whether it may use the network: the host's network namespace, internet sockets.
    pub network: bool,
}

/// A box prepared for one call: what the parent set up, and what the child enters between
/// fork and exec (system calls only).
pub struct Prepared {
    /// bubblewrap, and its arguments up to and including the command to run.
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    /// Descriptors bubblewrap must inherit (the seccomp programs, the sources of binds).
    keep: Vec<OwnedFd>,
    cgroup: Option<cgroup::Cgroup>,
    /// When joule is root: the binds staged for bubblewrap.
    stage: Option<bwrap::Stage>,
    /// When joule is root: the unprivileged uid bubblewrap runs as.
    run_as: Option<u32>,
    /// (resource, soft, hard).
    rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    /// Layers in force.
    pub layers: Vec<Layer>,
    /// Layers this host or configuration cannot provide, and why.
    pub absent: Vec<(Layer, String)>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("layers", &self.layers)
            .field("absent", &self.absent)
            .finish()
    }
}

impl Prepared {
    /// Kills every process of the call's cgroup (one that left every session included).
    /// Without the cgroup layer, the PID namespace's end is what takes them all.
    pub fn kill_all(&self) {
        if let Some(c) = &self.cgroup {
            c.kill_all();
        }
    }

    /// Whether the kernel killed a process of the call for its memory limit.
    pub fn oom_killed(&self) -> bool {
        self.cgroup.as_ref().is_some_and(cgroup::Cgroup::oom_killed)
    }
}

/// The resource limits of the processes of a box, and of bubblewrap itself.
fn rlimits(l: &ToolLimits, processes: u64) -> Vec<(libc::__rlimit_resource_t, u64, u64)> {
    let same = |r, v: u64| (r, v, v);
    vec![
        // SIGXCPU at the limit (so the error can name it), SIGKILL a second later.
        (libc::RLIMIT_CPU, l.cpu_s.max(1), l.cpu_s.max(1) + 1),
        same(libc::RLIMIT_AS, l.memory_mb.saturating_mul(1 << 20)),
        same(libc::RLIMIT_FSIZE, l.file_mb.saturating_mul(1 << 20)),
        same(libc::RLIMIT_CORE, 0),
        same(libc::RLIMIT_NOFILE, l.open_files),
        same(libc::RLIMIT_NPROC, processes),
    ]
}

/// Processes of `uid` running now, read in the parent (the child between fork and exec may
/// not allocate): `RLIMIT_NPROC` counts them all, so the tool's allowance is on top.
fn processes_of(uid: u32) -> u64 {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("status")).is_ok_and(|s| {
                        s.lines()
                            .find(|l| l.starts_with("Uid:"))
                            .and_then(|l| l.split_whitespace().nth(1))
                            .is_some_and(|u| u == uid.to_string())
                    })
                })
                .count() as u64
        })
        .unwrap_or(4096)
}

/// Prepares the box for `program` with `argv` under `limits` and `grant`. Fails when no box
/// can be built here (bubblewrap missing, or the kernel refuses its namespaces): a tool never
/// runs outside one.
pub fn prepare(
    grant: &Grant,
    program: &Path,
    argv: &[String],
    limits: &ToolLimits,
) -> Result<Prepared, String> {
    let bwrap = bwrap::usable()?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let run_as = root.then_some(NOBODY);
    let mut layers = vec![
        Layer::ProcessGroup,
        Layer::EmptyEnv,
        Layer::Workdir,
        Layer::Rlimits,
        Layer::UserNamespace,
        Layer::PidNamespace,
        Layer::MountNamespace,
        Layer::IpcNamespace,
        Layer::UtsNamespace,
    ];
    let mut absent = Vec::new();
    if !grant.network {
        layers.push(Layer::NetNamespace);
    }
    let cgroup = match cgroup::Cgroup::create(cgroup::Limits {
        processes: limits.processes.max(1),
        memory_bytes: limits.memory_mb.saturating_mul(1 << 20),
        cpus: limits.cpus,
    }) {
        Ok(c) => {
            layers.extend(c.layers.iter().copied());
            if !c.layers.contains(&Layer::CgroupCpu) {
                absent.push((Layer::CgroupCpu, "no cpu controller here".into()));
            }
            Some(c)
        }
        Err(why) => {
            for l in [Layer::Cgroup, Layer::CgroupMemory, Layer::CgroupCpu] {
                absent.push((l, why.clone()));
            }
            None
        }
    };
    let shared_memory = cgroup
        .as_ref()
        .is_some_and(|c| c.layers.contains(&Layer::CgroupMemory));
    let filters = seccomp::filters(seccomp::Needs {
        network: grant.network,
        shared_memory,
    })?;
    layers.push(Layer::Seccomp);
    let helper = Helper::locate();
    match &helper {
        Some(_) => {
            layers.push(Layer::ClosedFds);
            let (have, missing) = crate::landlock::available(grant.network);
            layers.extend(have);
            absent.extend(missing);
        }
        None => {
            let why = format!(
                "the inner-walls helper `{}` is not installed beside this program",
                crate::enter::HELPER
            );
            for l in [
                Layer::ClosedFds,
                Layer::LandlockFs,
                Layer::LandlockNet,
                Layer::LandlockScope,
            ] {
                if !(l == Layer::LandlockNet && grant.network) {
                    absent.push((l, why.clone()));
                }
            }
        }
    }
    let built = bwrap::arguments(
        &bwrap::BoxSpec {
            grant,
            program,
            argv,
            limits,
            filters: &filters,
            helper: helper.as_ref(),
            landlock: layers.contains(&Layer::LandlockFs),
        },
        root,
    )
    .map_err(|e| format!("cannot prepare the box: {e}"))?;
    let outer = run_as.unwrap_or_else(|| {
        // SAFETY: getuid has no preconditions.
        unsafe { libc::getuid() }
    });
    Ok(Prepared {
        program: bwrap,
        args: built.args,
        keep: built.keep,
        stage: built.stage,
        rlimits: rlimits(limits, limits.processes.max(1) + processes_of(outer)),
        cgroup,
        run_as,
        layers,
        absent,
    })
}

/// Enters the outer walls. Runs in the child between fork and exec of bubblewrap: system
/// calls only, on values prepared by the parent.
///
/// # Safety
/// Call only from a `pre_exec` closure; it changes the calling process irrevocably.
pub unsafe fn enter(p: &Prepared) -> io::Result<()> {
    let fail = || Err(io::Error::last_os_error());
    // SAFETY: plain system calls on values prepared by the parent.
    unsafe {
        // The cgroup first, while this process may still write there.
        if let Some(c) = &p.cgroup {
            c.join()?;
        }
        if libc::setsid() < 0 {
            return fail();
        }
        if let Some(st) = &p.stage {
            stage(st)?;
        }
        for &(resource, soft, hard) in &p.rlimits {
            let lim = libc::rlimit {
                rlim_cur: soft as libc::rlim_t,
                rlim_max: hard as libc::rlim_t,
            };
            if libc::setrlimit(resource, &lim) != 0 {
                return fail();
            }
        }
        // No descriptor reaches the box but stdio and what bubblewrap is handed.
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) != 0 {
            return fail();
        }
        for fd in &p.keep {
            if libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) != 0 {
                return fail();
            }
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return fail();
        }
        if let Some(uid) = p.run_as
            && (libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(uid, uid, uid) != 0
                || libc::setresuid(uid, uid, uid) != 0)
        {
            return fail();
        }
    }
    Ok(())
}

/// Mounts the stage in a mount namespace of the child's own (root, between fork and exec:
/// system calls on prepared strings only).
///
/// # Safety
/// Call only from [`enter`].
unsafe fn stage(st: &bwrap::Stage) -> io::Result<()> {
    let fail = || Err(io::Error::last_os_error());
    let none = std::ptr::null::<libc::c_char>();
    // SAFETY: plain system calls on NUL-terminated strings prepared by the parent.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return fail();
        }
        let root = c"/";
        if libc::mount(
            none,
            root.as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return fail();
        }
        let tmpfs = c"tmpfs";
        if libc::mount(
            tmpfs.as_ptr(),
            st.dir.as_ptr(),
            tmpfs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            st.options.as_ptr().cast(),
        ) != 0
        {
            return fail();
        }
        for (source, target, file) in &st.items {
            let made = if *file {
                let fd = libc::open(
                    target.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                );
                fd >= 0 && libc::close(fd) == 0
            } else {
                libc::mkdir(target.as_ptr(), 0o755) == 0
            };
            if !made
                || libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    none,
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) != 0
            {
                return fail();
            }
        }
    }
    Ok(())
}

/// The installation a program belongs to: the directory above its `bin` (`/usr` for
/// /usr/bin/grep, `~/.pyenv` for a pyenv shim), or its own directory when that would be `/`
/// or the home directory itself (/bin/true, ~/bin/tool): never a grant of the whole
/// filesystem or of a user's whole home.
pub fn install_prefix(program: &Path) -> Option<PathBuf> {
    let dir = program.parent()?;
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let too_wide = |p: &Path| p.parent().is_none() || home.as_deref() == Some(p);
    match dir.parent() {
        Some(up) if !too_wide(up) => Some(up.to_path_buf()),
        _ if !too_wide(dir) => Some(dir.to_path_buf()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_programs_installation_is_never_the_whole_filesystem() {
        let prefix = |p: &str| install_prefix(Path::new(p));
        assert_eq!(prefix("/usr/bin/grep"), Some(PathBuf::from("/usr")));
        assert_eq!(
            prefix("/opt/tool/bin/run"),
            Some(PathBuf::from("/opt/tool"))
        );
        assert_eq!(prefix("/bin/true"), Some(PathBuf::from("/bin")));
        assert_eq!(prefix("/opt/run"), Some(PathBuf::from("/opt")));
        assert_eq!(prefix("/run"), None);
        if let Some(home) = std::env::var_os("HOME").map(PathBuf::from)
            && home.parent().is_some()
        {
            let tool = home.join("bin/tool");
            assert_eq!(install_prefix(&tool), Some(home.join("bin")));
        }
    }

    #[test]
    fn policies_name_exactly_these_layers() {
        let names: Vec<&str> = Layer::ALL.iter().map(|l| l.as_str()).collect();
        assert_eq!(names, joule_planner::spec::SANDBOX_LAYERS);
        for l in Layer::ALL {
            let json = serde_json::to_string(&l).unwrap();
            assert_eq!(json, format!("\"{}\"", l.as_str()));
        }
    }
}
