//! The tool sandbox: each tool process is an untrusted workload, so it runs inside every
//! isolation layer this kernel offers without root or setuid helpers, and its record says
//! which layers were in force.
//!
//! Layers, outermost first: its own session and process group (killed whole on timeout or
//! cancellation), an empty environment, a fresh working directory, resource limits (CPU
//! seconds, address space, file size, processes), a new network namespace (no interface but a
//! loopback that is down), a Landlock ruleset (read-only access to the system paths the tool
//! needs, read-write only under its working directory, no TCP bind or connect, no signals or
//! abstract sockets outside the sandbox), and a seccomp filter (no sockets but Unix ones, no
//! ptrace, io_uring, BPF, keyrings, mounts or module loading). A layer the kernel lacks is
//! recorded as absent rather than failing the tool, unless a policy requires it.
//!
//! Everything that allocates (the Landlock ruleset and its path descriptors, the compiled BPF
//! program) is prepared in the parent; between fork and exec the child only makes system
//! calls, which is all a multithreaded parent's child may safely do.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use joule_call::Layer;

/// What one tool process may reach beyond its working directory.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// Extra paths it may read (and execute from).
    pub read: Vec<PathBuf>,
    /// Whether it may use the network: no namespace, no Landlock network rules, and sockets
    /// of every family.
    pub network: bool,
}

/// System paths every program needs to start: the dynamic loader, shared libraries, the usual
/// binaries, and a few device files. `/etc` is not among them: only the loader's cache is.
const SYSTEM_READ: [&str; 11] = [
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/sbin",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/dev/null",
    "/dev/zero",
    "/dev/urandom",
];

/// The layers of one tool process, prepared in the parent.
pub struct Prepared {
    cgroup: Option<cgroup::Cgroup>,
    landlock: Option<OwnedFd>,
    seccomp: Option<seccompiler::BpfProgram>,
    unshare_flags: libc::c_int,
    /// Layers that will be in force (the ones the child sets up itself included).
    pub layers: Vec<Layer>,
    /// Layers this kernel or this configuration cannot provide, and why.
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
    /// Kills every process of the sandbox's cgroup (a process that left the tool's process
    /// group included). Without the cgroup layer, killing the process group is all there is.
    pub fn kill_all(&self) {
        if let Some(c) = &self.cgroup {
            c.kill_all();
        }
    }
}

/// Prepares the layers for `program` running in `workdir` with `grant`, allowing at most
/// `processes` processes at once.
pub fn prepare(grant: &Grant, workdir: &Path, program: &Path, processes: u64) -> Prepared {
    let mut p = Prepared {
        cgroup: None,
        landlock: None,
        seccomp: None,
        unshare_flags: 0,
        layers: vec![
            Layer::ProcessGroup,
            Layer::EmptyEnv,
            Layer::Workdir,
            Layer::Rlimits,
        ],
        absent: Vec::new(),
    };
    match cgroup::Cgroup::create(processes) {
        Ok(c) => {
            p.cgroup = Some(c);
            p.layers.push(Layer::Cgroup);
        }
        Err(why) => p.absent.push((Layer::Cgroup, why)),
    }
    if !grant.network {
        match namespaces() {
            Ok(flags) => {
                p.unshare_flags = *flags;
                p.layers.push(Layer::NetNamespace);
            }
            Err(why) => p.absent.push((Layer::NetNamespace, why.clone())),
        }
    }
    match landlock::ruleset(grant, workdir, program) {
        Ok((fd, layers)) => {
            p.landlock = Some(fd);
            p.layers.extend(layers.iter().copied());
            for l in [Layer::LandlockFs, Layer::LandlockNet, Layer::LandlockScope] {
                let waived = l == Layer::LandlockNet && grant.network;
                if !layers.contains(&l) && !waived {
                    p.absent
                        .push((l, format!("Landlock ABI {} lacks it", landlock::abi())));
                }
            }
        }
        Err(why) => {
            for l in [Layer::LandlockFs, Layer::LandlockNet, Layer::LandlockScope] {
                p.absent.push((l, why.clone()));
            }
        }
    }
    match filter(grant.network) {
        Ok(bpf) => {
            p.seccomp = Some(bpf);
            p.layers.push(Layer::Seccomp);
        }
        Err(why) => p.absent.push((Layer::Seccomp, why)),
    }
    p
}

/// Enters the prepared layers. Runs in the child between fork and exec: system calls only.
///
/// # Safety
/// Call only from a `pre_exec` closure; it changes the calling process irrevocably.
pub unsafe fn enter(p: &Prepared) -> io::Result<()> {
    // SAFETY: plain system calls on values prepared by the parent.
    unsafe {
        if let Some(c) = &p.cgroup {
            c.join()?;
        }
        if libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        if p.unshare_flags != 0 && libc::unshare(p.unshare_flags) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(fd) = &p.landlock
            && libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    if let Some(bpf) = &p.seccomp {
        seccompiler::apply_filter(bpf).map_err(io::Error::other)?;
    }
    Ok(())
}

/// The namespaces a tool process can enter here: a network namespace, inside a user
/// namespace unless joule runs as root. Probed once with a forked child that only unshares.
fn namespaces() -> &'static Result<libc::c_int, String> {
    static PROBE: OnceLock<Result<libc::c_int, String>> = OnceLock::new();
    PROBE.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let flags = if root {
            libc::CLONE_NEWNET
        } else {
            libc::CLONE_NEWUSER | libc::CLONE_NEWNET
        };
        // SAFETY: the child only calls unshare and _exit, both async-signal-safe.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => Err(format!(
                "cannot probe namespaces: {}",
                io::Error::last_os_error()
            )),
            0 => unsafe { libc::_exit(if libc::unshare(flags) == 0 { 0 } else { 1 }) },
            pid => {
                let mut status = 0;
                // SAFETY: waits for the child just forked.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                    Ok(flags)
                } else {
                    Err("the kernel refuses new namespaces to this user".into())
                }
            }
        }
    })
}

/// Sockets other than Unix ones, and the system calls a tool has no business making.
fn filter(network: bool) -> Result<seccompiler::BpfProgram, String> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    };
    let arch = std::env::consts::ARCH.try_into().map_err(|_| {
        format!(
            "seccomp filters are not built for {}",
            std::env::consts::ARCH
        )
    })?;
    let mut rules: std::collections::BTreeMap<i64, Vec<SeccompRule>> = [
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_userfaultfd,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_setns,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
    ]
    .into_iter()
    .map(|n| (n, Vec::new()))
    .collect();
    if !network {
        let not_unix = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Ne,
            libc::AF_UNIX as u64,
        )
        .map_err(|e| e.to_string())?;
        rules.insert(
            libc::SYS_socket,
            vec![SeccompRule::new(vec![not_unix]).map_err(|e| e.to_string())?],
        );
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// Landlock through its three system calls (the ABI is small, and the ruleset has to be built
/// in the parent and only entered in the child).
mod landlock {
    use super::*;

    const CREATE_RULESET_VERSION: u32 = 1;
    const RULE_PATH_BENEATH: libc::c_int = 1;

    const EXECUTE: u64 = 1 << 0;
    const WRITE_FILE: u64 = 1 << 1;
    const READ_FILE: u64 = 1 << 2;
    const READ_DIR: u64 = 1 << 3;
    const TRUNCATE: u64 = 1 << 14;
    const IOCTL_DEV: u64 = 1 << 15;
    /// Rights that apply to a file (the rest only make sense beneath a directory).
    const FILE_RIGHTS: u64 = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV;

    const NET_BIND_TCP: u64 = 1 << 0;
    const NET_CONNECT_TCP: u64 = 1 << 1;
    const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
    const SCOPE_SIGNAL: u64 = 1 << 1;

    #[repr(C)]
    struct RulesetAttr {
        handled_access_fs: u64,
        handled_access_net: u64,
        scoped: u64,
    }

    #[repr(C, packed)]
    struct PathBeneathAttr {
        allowed_access: u64,
        parent_fd: i32,
    }

    /// The kernel's Landlock ABI version; 0 when it has none.
    pub fn abi() -> i64 {
        static ABI: OnceLock<i64> = OnceLock::new();
        *ABI.get_or_init(|| {
            // SAFETY: the version query reads no memory.
            let v = unsafe {
                libc::syscall(
                    libc::SYS_landlock_create_ruleset,
                    std::ptr::null::<RulesetAttr>(),
                    0usize,
                    CREATE_RULESET_VERSION,
                )
            };
            v.max(0)
        })
    }

    /// Every filesystem right the ABI knows (v1: 13; v2 adds refer, v3 truncate, v5 ioctl).
    fn fs_rights(abi: i64) -> u64 {
        let mut r = (1 << 13) - 1;
        if abi >= 2 {
            r |= 1 << 13;
        }
        if abi >= 3 {
            r |= TRUNCATE;
        }
        if abi >= 5 {
            r |= IOCTL_DEV;
        }
        r
    }

    /// The ruleset fd and the Landlock layers it provides.
    pub fn ruleset(
        grant: &Grant,
        workdir: &Path,
        program: &Path,
    ) -> Result<(OwnedFd, Vec<Layer>), String> {
        let abi = abi();
        if abi < 1 {
            return Err("the kernel has no Landlock".into());
        }
        let handled = fs_rights(abi);
        let mut layers = vec![Layer::LandlockFs];
        let mut attr = RulesetAttr {
            handled_access_fs: handled,
            handled_access_net: 0,
            scoped: 0,
        };
        // The struct grew with the ABI; the kernel wants the size it knows.
        let mut size = 8;
        if abi >= 4 {
            size = 16;
            if !grant.network {
                attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP;
                layers.push(Layer::LandlockNet);
            }
        }
        if abi >= 6 {
            size = 24;
            attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL;
            layers.push(Layer::LandlockScope);
        }
        // SAFETY: attr outlives the call and `size` does not exceed it.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &attr as *const RulesetAttr,
                size as usize,
                0u32,
            )
        };
        if fd < 0 {
            return Err(format!(
                "cannot create a Landlock ruleset: {}",
                io::Error::last_os_error()
            ));
        }
        // SAFETY: the kernel just returned this descriptor to us.
        let ruleset = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let read = READ_FILE | READ_DIR | EXECUTE;
        let mut paths: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
        // Where the program lives (`/usr` for /usr/bin/grep, the interpreter's prefix for a
        // version manager's shim).
        if let Ok(real) = program.canonicalize() {
            paths.extend(install_prefix(&real));
        }
        paths.extend(install_prefix(program));
        paths.extend(grant.read.iter().cloned());
        for path in &paths {
            allow(&ruleset, path, read & handled)?;
        }
        allow(&ruleset, workdir, handled)?;
        allow(
            &ruleset,
            Path::new("/dev/null"),
            (READ_FILE | WRITE_FILE) & handled,
        )?;
        Ok((ruleset, layers))
    }

    /// The installation a program belongs to: the directory above its `bin` (`/usr` for
    /// /usr/bin/grep, `~/.pyenv` for a pyenv shim), or its own directory when that would be
    /// `/` or the home directory itself (/bin/true, ~/bin/tool): never a grant of the whole
    /// filesystem or of a user's whole home.
    pub(super) fn install_prefix(program: &Path) -> Option<PathBuf> {
        let dir = program.parent()?;
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let too_wide = |p: &Path| p.parent().is_none() || home.as_deref() == Some(p);
        match dir.parent() {
            Some(up) if !too_wide(up) => Some(up.to_path_buf()),
            _ if !too_wide(dir) => Some(dir.to_path_buf()),
            _ => None,
        }
    }

    /// Adds a rule for `path` (skipped when it does not exist here).
    fn allow(ruleset: &OwnedFd, path: &Path, access: u64) -> Result<(), String> {
        let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
            return Ok(());
        };
        // SAFETY: c is a valid NUL-terminated path.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if fd < 0 {
            return Ok(());
        }
        // SAFETY: the kernel just returned this descriptor to us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let access = if path.is_dir() {
            access
        } else {
            access & FILE_RIGHTS
        };
        let rule = PathBeneathAttr {
            allowed_access: access,
            parent_fd: fd.as_raw_fd(),
        };
        // SAFETY: rule outlives the call; the descriptors are open.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset.as_raw_fd(),
                RULE_PATH_BENEATH,
                &rule as *const PathBeneathAttr,
                0u32,
            )
        };
        if rc != 0 {
            return Err(format!(
                "Landlock rule for {}: {}",
                path.display(),
                io::Error::last_os_error()
            ));
        }
        Ok(())
    }
}

/// A pids cgroup per tool process (cgroup v1's `pids` hierarchy, or v2 where this process's
/// cgroup delegates `pids`), created in the parent and joined by the child before exec.
mod cgroup {
    use super::*;

    pub struct Cgroup {
        dir: PathBuf,
        /// `cgroup.procs`, NUL-terminated, for the child to open without allocating.
        procs: CString,
    }

    /// Where this process's pids cgroup is.
    fn base() -> Result<PathBuf, String> {
        let text = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
            let (Some(controllers), Some(path)) = (controllers, path) else {
                continue;
            };
            let rel = path.trim_start_matches('/');
            if controllers.split(',').any(|c| c == "pids") {
                return Ok(Path::new("/sys/fs/cgroup/pids").join(rel));
            }
            if controllers.is_empty() {
                let dir = Path::new("/sys/fs/cgroup").join(rel);
                let delegated = std::fs::read_to_string(dir.join("cgroup.subtree_control"))
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids"));
                if delegated {
                    return Ok(dir);
                }
            }
        }
        Err("no pids cgroup controller is available to this process".into())
    }

    impl Cgroup {
        pub fn create(max: u64) -> Result<Self, String> {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = base()?.join(format!("joule-tool-{}-{n}", std::process::id()));
            std::fs::create_dir(&dir)
                .map_err(|e| format!("cannot create the cgroup {}: {e}", dir.display()))?;
            let cgroup = Self {
                procs: CString::new(dir.join("cgroup.procs").as_os_str().as_encoded_bytes())
                    .map_err(|e| e.to_string())?,
                dir,
            };
            std::fs::write(cgroup.dir.join("pids.max"), max.max(1).to_string())
                .map_err(|e| format!("cannot set pids.max: {e}"))?;
            Ok(cgroup)
        }

        /// Moves the calling process into the cgroup. Between fork and exec: syscalls only.
        pub fn join(&self) -> io::Result<()> {
            // SAFETY: a valid NUL-terminated path; open, write and close are async-signal-safe.
            unsafe {
                let fd = libc::open(self.procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                let err = io::Error::last_os_error();
                libc::close(fd);
                if !ok {
                    return Err(err);
                }
            }
            Ok(())
        }

        /// Kills every process in the cgroup until it is empty (a process forking while it is
        /// killed can add one more, so this repeats).
        pub fn kill_all(&self) {
            for _ in 0..100 {
                let Ok(text) = std::fs::read_to_string(self.dir.join("cgroup.procs")) else {
                    return;
                };
                let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
                if pids.is_empty() {
                    return;
                }
                for pid in pids {
                    // SAFETY: signals a process of the tool's own cgroup.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
    }

    impl Drop for Cgroup {
        fn drop(&mut self) {
            self.kill_all();
            // Killed processes leave the cgroup as they are reaped; give them a moment.
            for _ in 0..200 {
                if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            tracing::warn!(cgroup = %self.dir.display(), "could not remove a tool's cgroup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_programs_installation_is_never_the_whole_filesystem() {
        let prefix = |p: &str| landlock::install_prefix(Path::new(p));
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
            assert_eq!(landlock::install_prefix(&tool), Some(home.join("bin")));
        }
    }

    #[test]
    fn policies_name_exactly_these_layers() {
        let all = [
            Layer::ProcessGroup,
            Layer::EmptyEnv,
            Layer::Workdir,
            Layer::Rlimits,
            Layer::Cgroup,
            Layer::NetNamespace,
            Layer::LandlockFs,
            Layer::LandlockNet,
            Layer::LandlockScope,
            Layer::Seccomp,
        ];
        let names: Vec<&str> = all.iter().map(|l| l.as_str()).collect();
        assert_eq!(names, joule_planner::spec::SANDBOX_LAYERS);
        for l in all {
            let json = serde_json::to_string(&l).unwrap();
            assert_eq!(json, format!("\"{}\"", l.as_str()));
        }
    }
}
