//! The seccomp filter: an allow-list. A tool may make the system calls ordinary programs
//! (interpreters, compilers, shell tools) make on files, memory, time, signals and their own
//! processes, and nothing else: no mounts, no namespaces, no tracing, no kernel log, no clock,
//! no host name, no modules, no BPF, no io_uring, no keyrings, no scheduling of other
//! processes, no raising of limits. What is not on the list fails with `EPERM`.
//!
//! bubblewrap installs the filters just before it executes the command, so they hold for the
//! inner-walls helper and everything after it. A second, tiny filter makes `clone3` fail with
//! `ENOSYS`: its flags live in memory a filter cannot read, and `ENOSYS` makes the C library
//! fall back to `clone`, whose flags the allow-list checks (no new namespaces).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// `ioctl(TIOCLINUX)`: the virtual console's commands (paste, selection).
const TIOCLINUX: u64 = 0x541C;

/// What a filter is built for.
#[derive(Debug, Clone, Copy)]
pub struct Needs {
    /// The tool has the network: internet sockets are allowed.
    pub network: bool,
    /// A memory cgroup bounds shared memory: `memfd_create` and SysV shared memory are
    /// allowed. Without one, all shared memory must come from the size-limited tmpfs mounts.
    pub shared_memory: bool,
}

/// Calls with no argument worth checking.
#[rustfmt::skip]
const ALWAYS: &[i64] = &[
    // files and directories (the mounts and Landlock decide which)
    libc::SYS_read, libc::SYS_write, libc::SYS_readv, libc::SYS_writev, libc::SYS_pread64,
    libc::SYS_pwrite64, libc::SYS_preadv, libc::SYS_pwritev, libc::SYS_preadv2,
    libc::SYS_pwritev2, libc::SYS_openat, libc::SYS_openat2, libc::SYS_close,
    libc::SYS_close_range, libc::SYS_lseek, libc::SYS_fstat, libc::SYS_newfstatat,
    libc::SYS_statx, libc::SYS_statfs, libc::SYS_fstatfs, libc::SYS_faccessat,
    libc::SYS_faccessat2, libc::SYS_getdents64, libc::SYS_getcwd, libc::SYS_chdir,
    libc::SYS_fchdir, libc::SYS_mkdirat, libc::SYS_unlinkat, libc::SYS_renameat,
    libc::SYS_renameat2, libc::SYS_linkat, libc::SYS_symlinkat, libc::SYS_readlinkat,
    libc::SYS_fchmod, libc::SYS_fchmodat, libc::SYS_utimensat, libc::SYS_truncate,
    libc::SYS_ftruncate, libc::SYS_fallocate, libc::SYS_fsync, libc::SYS_fdatasync,
    libc::SYS_sync_file_range, libc::SYS_fadvise64, libc::SYS_readahead, libc::SYS_flock,
    libc::SYS_fcntl, libc::SYS_dup, libc::SYS_dup3, libc::SYS_pipe2, libc::SYS_sendfile,
    libc::SYS_splice, libc::SYS_tee, libc::SYS_copy_file_range, libc::SYS_umask,
    libc::SYS_getxattr, libc::SYS_lgetxattr, libc::SYS_fgetxattr, libc::SYS_listxattr,
    libc::SYS_llistxattr, libc::SYS_flistxattr, libc::SYS_inotify_init1,
    libc::SYS_inotify_add_watch, libc::SYS_inotify_rm_watch,
    // memory
    libc::SYS_mmap, libc::SYS_munmap, libc::SYS_mprotect, libc::SYS_mremap, libc::SYS_brk,
    libc::SYS_madvise, libc::SYS_msync, libc::SYS_mincore,
    // waiting and events
    libc::SYS_ppoll, libc::SYS_pselect6, libc::SYS_epoll_create1, libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait, libc::SYS_epoll_pwait2, libc::SYS_eventfd2,
    libc::SYS_timerfd_create, libc::SYS_timerfd_settime, libc::SYS_timerfd_gettime,
    libc::SYS_signalfd4, libc::SYS_futex, libc::SYS_futex_waitv, libc::SYS_set_robust_list,
    libc::SYS_get_robust_list, libc::SYS_nanosleep, libc::SYS_clock_nanosleep,
    libc::SYS_sched_yield, libc::SYS_getitimer, libc::SYS_setitimer, libc::SYS_timer_create,
    libc::SYS_timer_settime, libc::SYS_timer_gettime, libc::SYS_timer_getoverrun,
    libc::SYS_timer_delete, libc::SYS_sync, libc::SYS_syncfs,
    // time and identity (reading only)
    libc::SYS_clock_gettime, libc::SYS_clock_getres, libc::SYS_gettimeofday, libc::SYS_times,
    libc::SYS_uname, libc::SYS_sysinfo, libc::SYS_getrandom, libc::SYS_getpid, libc::SYS_getppid,
    libc::SYS_gettid, libc::SYS_getuid, libc::SYS_geteuid, libc::SYS_getgid, libc::SYS_getegid,
    libc::SYS_getresuid, libc::SYS_getresgid, libc::SYS_getgroups, libc::SYS_getpgid,
    libc::SYS_getsid, libc::SYS_getpriority, libc::SYS_getrusage, libc::SYS_getrlimit,
    libc::SYS_capget, libc::SYS_sched_getaffinity, libc::SYS_sched_getparam,
    libc::SYS_sched_getscheduler, libc::SYS_sched_get_priority_max, libc::SYS_ioprio_get,
    libc::SYS_get_mempolicy,
    libc::SYS_sched_get_priority_min, libc::SYS_getcpu, libc::SYS_rseq, libc::SYS_membarrier,
    // its own processes (the PID namespace holds nothing else)
    libc::SYS_execve, libc::SYS_execveat, libc::SYS_exit, libc::SYS_exit_group,
    libc::SYS_wait4, libc::SYS_waitid, libc::SYS_kill, libc::SYS_tkill, libc::SYS_tgkill,
    libc::SYS_rt_sigaction, libc::SYS_rt_sigprocmask, libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigpending, libc::SYS_rt_sigtimedwait, libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_sigsuspend, libc::SYS_sigaltstack, libc::SYS_setpgid, libc::SYS_setsid,
    libc::SYS_set_tid_address, libc::SYS_pidfd_open, libc::SYS_pidfd_send_signal,
    libc::SYS_setrlimit, libc::SYS_prctl, libc::SYS_personality, libc::SYS_seccomp,
    libc::SYS_clone3,
    // Unix sockets (the network namespace has no other peer)
    libc::SYS_socketpair, libc::SYS_connect, libc::SYS_bind, libc::SYS_listen,
    libc::SYS_accept, libc::SYS_accept4, libc::SYS_sendto, libc::SYS_recvfrom,
    libc::SYS_sendmsg, libc::SYS_recvmsg, libc::SYS_sendmmsg, libc::SYS_recvmmsg,
    libc::SYS_shutdown, libc::SYS_getsockname, libc::SYS_getpeername, libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    // the inner walls: the helper builds its Landlock ruleset after this filter is in place
    libc::SYS_landlock_create_ruleset, libc::SYS_landlock_add_rule,
    libc::SYS_landlock_restrict_self,
];

/// The old x86-64 spellings of the same calls, which static binaries and old programs use.
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
const LEGACY: &[i64] = &[
    libc::SYS_open, libc::SYS_stat, libc::SYS_lstat, libc::SYS_access, libc::SYS_mkdir,
    libc::SYS_rmdir, libc::SYS_unlink, libc::SYS_rename, libc::SYS_link, libc::SYS_symlink,
    libc::SYS_readlink, libc::SYS_chmod, libc::SYS_creat, libc::SYS_getdents, libc::SYS_dup2,
    libc::SYS_pipe, libc::SYS_poll, libc::SYS_select, libc::SYS_epoll_create,
    libc::SYS_epoll_wait, libc::SYS_eventfd, libc::SYS_signalfd, libc::SYS_inotify_init,
    libc::SYS_utimes, libc::SYS_futimesat, libc::SYS_utime, libc::SYS_time, libc::SYS_alarm,
    libc::SYS_pause, libc::SYS_fork, libc::SYS_vfork, libc::SYS_getpgrp, libc::SYS_arch_prctl,
];
#[cfg(not(target_arch = "x86_64"))]
const LEGACY: &[i64] = &[];

/// The filters, in the order they are installed.
pub fn filters(needs: Needs) -> Result<Vec<BpfProgram>, String> {
    let arch = std::env::consts::ARCH.try_into().map_err(|_| {
        format!(
            "seccomp filters are not built for {}",
            std::env::consts::ARCH
        )
    })?;
    let err = |e: seccompiler::BackendError| e.to_string();
    let cond = |arg: u8, op: SeccompCmpOp, value: u64| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(err)
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALWAYS
        .iter()
        .chain(LEGACY)
        .map(|&n| (n, Vec::new()))
        .collect();
    // `clone` without any flag that makes a namespace.
    let namespaces = (libc::CLONE_NEWNS
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWCGROUP) as u64;
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![cond(0, SeccompCmpOp::MaskedEq(namespaces), 0)?]).map_err(err)?],
    );
    // Sockets: Unix ones always, internet ones only with the network.
    let mut domains = vec![libc::AF_UNIX];
    if needs.network {
        domains.extend([libc::AF_INET, libc::AF_INET6]);
    }
    rules.insert(
        libc::SYS_socket,
        domains
            .iter()
            .map(|&d| {
                SeccompRule::new(vec![
                    SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, d as u64)
                        .map_err(err)?,
                ])
                .map_err(err)
            })
            .collect::<Result<_, _>>()?,
    );
    // FIFOs, but no device nodes.
    let fifo = |arg: u8| -> Result<SeccompRule, String> {
        SeccompRule::new(vec![cond(
            arg,
            SeccompCmpOp::MaskedEq(libc::S_IFMT as u64),
            libc::S_IFIFO as u64,
        )?])
        .map_err(err)
    };
    rules.insert(libc::SYS_mknodat, vec![fifo(2)?]);
    #[cfg(target_arch = "x86_64")]
    rules.insert(libc::SYS_mknod, vec![fifo(1)?]);
    // Terminal control, but not typing into a terminal (TIOCSTI) or the console's own
    // commands (TIOCLINUX).
    // `Ioctl` is a `c_ulong` on glibc and a `c_int` on musl.
    #[allow(clippy::unnecessary_cast)]
    let tiocsti = libc::TIOCSTI as u64;
    rules.insert(
        libc::SYS_ioctl,
        vec![
            SeccompRule::new(vec![
                SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, tiocsti)
                    .map_err(err)?,
                SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, TIOCLINUX)
                    .map_err(err)?,
            ])
            .map_err(err)?,
        ],
    );
    // Limits of itself only (`prlimit(0, ...)`); raising a hard limit needs a capability it
    // does not have.
    rules.insert(
        libc::SYS_prlimit64,
        vec![SeccompRule::new(vec![cond(0, SeccompCmpOp::Eq, 0)?]).map_err(err)?],
    );
    if needs.shared_memory {
        for n in [
            libc::SYS_memfd_create,
            libc::SYS_shmget,
            libc::SYS_shmat,
            libc::SYS_shmdt,
            libc::SYS_shmctl,
        ] {
            rules.insert(n, Vec::new());
        }
    }
    let main: BpfProgram = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )
    .map_err(err)?
    .try_into()
    .map_err(err)?;
    let clone3: BpfProgram = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(err)?
    .try_into()
    .map_err(err)?;
    Ok(vec![main, clone3])
}

/// A filter as the bytes of its `struct sock_filter` array, which bubblewrap reads from a
/// descriptor.
pub fn bytes(program: &BpfProgram) -> Vec<u8> {
    let mut out = Vec::with_capacity(program.len() * 8);
    for f in program {
        out.extend_from_slice(&f.code.to_ne_bytes());
        out.push(f.jt);
        out.push(f.jf);
        out.extend_from_slice(&f.k.to_ne_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_with_and_without_the_network_and_shared_memory() {
        for network in [false, true] {
            for shared_memory in [false, true] {
                let f = filters(Needs {
                    network,
                    shared_memory,
                })
                .unwrap();
                assert_eq!(f.len(), 2);
                assert_eq!(bytes(&f[0]).len(), f[0].len() * 8);
            }
        }
    }
}
