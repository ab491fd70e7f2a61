//! A cgroup per tool call, for what rlimits cannot do: an exact cap on processes (which
//! `RLIMIT_NPROC` is not), a memory limit on the whole box that counts shared memory and
//! tmpfs pages (which `RLIMIT_AS` does not), a CPU quota, and a way to kill every process of
//! the call, one that left every session included. cgroup v1 hierarchies (one directory per
//! controller) and v2 (one directory, where this process's cgroup delegates the controllers)
//! both work; creating one needs the right to write there, which root has and others
//! usually do not.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use joule_call::Layer;

/// What a call's cgroup limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub processes: u64,
    pub memory_bytes: u64,
    /// CPUs' worth of time per period (1.0: one core).
    pub cpus: f64,
}

pub struct Cgroup {
    /// Every directory the call's processes join (one per v1 hierarchy, or one for v2).
    dirs: Vec<PathBuf>,
    /// Their `cgroup.procs`, NUL-terminated, for the child to open without allocating.
    procs: Vec<CString>,
    /// Where the processes are listed for killing.
    members: PathBuf,
    /// Where an out-of-memory kill is counted, and how: v1 `memory.oom_control` or v2
    /// `memory.events`, both with an `oom_kill N` line.
    oom: Option<PathBuf>,
    pub layers: Vec<Layer>,
}

/// The directories of this process's cgroups, by controller.
fn bases() -> Result<Vec<(String, PathBuf)>, String> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            // v2: the unified hierarchy, where delegated.
            let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
                .into_iter()
                .map(Path::new)
                .find(|r| r.join("cgroup.controllers").exists());
            if let Some(root) = root {
                let dir = root.join(rel);
                let delegated =
                    std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
                for c in delegated.split_whitespace() {
                    out.push((c.to_string(), dir.clone()));
                }
            }
            continue;
        }
        let mount = Path::new("/sys/fs/cgroup");
        let dir = [controllers.to_string()]
            .into_iter()
            .chain(controllers.split(',').map(str::to_string))
            .map(|m| mount.join(m))
            .find(|d| d.is_dir());
        if let Some(dir) = dir {
            for c in controllers.split(',') {
                out.push((c.to_string(), dir.join(rel)));
            }
        }
    }
    Ok(out)
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    std::fs::write(dir.join(file), value)
        .map_err(|e| format!("cannot set {}: {e}", dir.join(file).display()))
}

impl Cgroup {
    /// A new cgroup with `limits`; the pids and memory controllers are required (without
    /// them it is no cgroup layer), the CPU quota is set where the controller is there.
    pub fn create(limits: Limits) -> Result<Self, String> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("joule-tool-{}-{n}", std::process::id());
        let bases = bases()?;
        let base = |c: &str| bases.iter().find(|(k, _)| k == c).map(|(_, d)| d.clone());
        let pids = base("pids").ok_or("no pids cgroup controller is available to this process")?;
        let memory =
            base("memory").ok_or("no memory cgroup controller is available to this process")?;
        let cpu = base("cpu");
        let v2 = pids.join("cgroup.controllers").exists();
        let mut dirs: Vec<PathBuf> = Vec::new();
        for base in [Some(&pids), Some(&memory), cpu.as_ref()]
            .into_iter()
            .flatten()
        {
            let dir = base.join(&name);
            if !dirs.contains(&dir) {
                std::fs::create_dir(&dir)
                    .map_err(|e| format!("cannot create the cgroup {}: {e}", dir.display()))?;
                dirs.push(dir);
            }
        }
        let (pids_dir, memory_dir) = (pids.join(&name), memory.join(&name));
        let mut cgroup = Self {
            procs: dirs
                .iter()
                .map(|d| {
                    CString::new(d.join("cgroup.procs").as_os_str().as_encoded_bytes())
                        .map_err(|e| e.to_string())
                })
                .collect::<Result<_, _>>()?,
            members: pids_dir.join("cgroup.procs"),
            oom: None,
            layers: vec![Layer::Cgroup, Layer::CgroupMemory],
            dirs,
        };
        write(&pids_dir, "pids.max", &limits.processes.max(1).to_string())?;
        let bytes = limits.memory_bytes.max(16 << 20).to_string();
        if v2 {
            write(&memory_dir, "memory.max", &bytes)?;
            let _ = write(&memory_dir, "memory.swap.max", "0");
            cgroup.oom = Some(memory_dir.join("memory.events"));
        } else {
            write(&memory_dir, "memory.limit_in_bytes", &bytes)?;
            let _ = write(&memory_dir, "memory.memsw.limit_in_bytes", &bytes);
            cgroup.oom = Some(memory_dir.join("memory.oom_control"));
        }
        if let Some(cpu) = cpu {
            let dir = cpu.join(&name);
            let period = 100_000u64;
            let quota = (limits.cpus * period as f64) as u64;
            let set = if v2 {
                write(&dir, "cpu.max", &format!("{quota} {period}"))
            } else {
                write(&dir, "cpu.cfs_period_us", &period.to_string())
                    .and_then(|()| write(&dir, "cpu.cfs_quota_us", &quota.to_string()))
            };
            if set.is_ok() {
                cgroup.layers.push(Layer::CgroupCpu);
            }
        }
        Ok(cgroup)
    }

    /// Moves the calling process into the cgroup. Between fork and exec: syscalls only.
    pub fn join(&self) -> io::Result<()> {
        for procs in &self.procs {
            // SAFETY: a valid NUL-terminated path; open, write and close are async-signal-safe.
            unsafe {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
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
        }
        Ok(())
    }

    /// Whether the kernel killed a process of the call for its memory limit.
    pub fn oom_killed(&self) -> bool {
        let Some(path) = &self.oom else {
            return false;
        };
        std::fs::read_to_string(path).is_ok_and(|t| {
            t.lines().any(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            })
        })
    }

    /// Kills every process in the cgroup until it is empty (a process forking while it is
    /// killed can add one more, so this repeats).
    pub fn kill_all(&self) {
        for _ in 0..100 {
            let Ok(text) = std::fs::read_to_string(&self.members) else {
                return;
            };
            let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: signals a process of the call's own cgroup.
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
        for dir in &self.dirs {
            let mut removed = false;
            for _ in 0..200 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    removed = true;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            if !removed {
                tracing::warn!(cgroup = %dir.display(), "could not remove a tool's cgroup");
            }
        }
    }
}
