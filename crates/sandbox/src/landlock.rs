//! Landlock, the second wall inside the box: even if a mount were wrong, the tool may read and
//! execute only the system paths, its program's installation and its granted paths, write only
//! its working directories, make no TCP connection, and signal or reach by abstract socket no
//! process outside its own domain. Built and entered by the inner-walls helper (`enter`), in
//! the tool's own process, just before it becomes the tool: Landlock forbids mounting, so it
//! cannot be in force while bubblewrap builds the box.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::OnceLock;

use joule_call::Layer;

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

/// The Landlock layers this kernel provides, for a tool with or without the network.
pub fn available(network: bool) -> (Vec<Layer>, Vec<(Layer, String)>) {
    let abi = abi();
    let mut have = Vec::new();
    let mut absent = Vec::new();
    let mut note = |layer: Layer, ok: bool, why: String| {
        if ok {
            have.push(layer);
        } else {
            absent.push((layer, why));
        }
    };
    note(
        Layer::LandlockFs,
        abi >= 1,
        "the kernel has no Landlock".into(),
    );
    if !network {
        note(
            Layer::LandlockNet,
            abi >= 4,
            format!("Landlock ABI {abi} has no network rules"),
        );
    }
    note(
        Layer::LandlockScope,
        abi >= 6,
        format!("Landlock ABI {abi} has no scopes"),
    );
    (have, absent)
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

/// Restricts the calling process (and everything it executes) to reading and executing
/// `read`, reading and writing `write`, and, with `no_tcp`, no TCP bind or connect.
pub fn restrict(read: &[&Path], write: &[&Path], no_tcp: bool) -> Result<(), String> {
    let abi = abi();
    if abi < 1 {
        return Err("the kernel has no Landlock".into());
    }
    let handled = fs_rights(abi);
    let mut attr = RulesetAttr {
        handled_access_fs: handled,
        handled_access_net: 0,
        scoped: 0,
    };
    // The struct grew with the ABI; the kernel wants the size it knows.
    let mut size = 8;
    if abi >= 4 {
        size = 16;
        if no_tcp {
            attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP;
        }
    }
    if abi >= 6 {
        size = 24;
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL;
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
    for path in read {
        allow(&ruleset, path, (READ_FILE | READ_DIR | EXECUTE) & handled)?;
    }
    for path in write {
        allow(&ruleset, path, handled)?;
    }
    // SAFETY: plain system calls; the ruleset descriptor is open.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(format!("no_new_privs: {}", io::Error::last_os_error()));
        }
        if libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0) != 0 {
            return Err(format!(
                "landlock_restrict_self: {}",
                io::Error::last_os_error()
            ));
        }
    }
    Ok(())
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
