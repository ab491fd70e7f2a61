//! The escape suite: attacks as an attacker who controls a tool's code would try them, each a
//! real tool process (python3) in the box, each judged by its effect outside the box (a
//! canary process's priority, limits and life, a file's mode and times, a listener that heard
//! nothing, the host's name and clock, joule still alive with its own limits) or, where a read
//! leaves no trace, by what came out of the box. It runs as joule's own user (root in CI) and,
//! re-executed as `nobody`, as an unprivileged user; every attack must be stopped in both.
//! `--nocapture` prints the table.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use joule_call::Cancel;
use joule_planner::catalog::Tool;
use joule_sandbox::Layer;
use joule_sandbox::tool::{self, ToolError, ToolOutput};

/// A tool that runs `code` with python3, its arguments `a0`, `a1`... in order, then a `dir`
/// path argument, granted to it read-only as a workflow's `path` arguments would be.
fn python(code: &str, n_args: usize, limits: serde_json::Value) -> Tool {
    let mut args: Vec<(String, serde_json::Value)> = (0..n_args)
        .map(|i| (format!("a{i}"), serde_json::json!({ "type": "string" })))
        .collect();
    args.push((
        "dir".into(),
        serde_json::json!({ "type": "path", "required": false }),
    ));
    crate::python_tool("attack", code, &args, limits)
}

fn limits() -> serde_json::Value {
    serde_json::json!({ "cpu_s": 10, "memory_mb": 256, "processes": 16, "file_mb": 16,
        "disk_mb": 32, "output_bytes": 65536, "output_lines": 1000, "timeout_s": 20 })
}

/// What exists outside the box for the attacks to aim at.
struct Outside {
    /// joule's stand-in: this process.
    me: i32,
    dir: tempfile::TempDir,
    /// A directory the tools are granted (read-only), with a file in it.
    granted: PathBuf,
    target: PathBuf,
    secret: PathBuf,
    canary: std::process::Child,
    tcp: std::net::TcpListener,
    stream: std::os::unix::net::UnixListener,
    dgram: std::os::unix::net::UnixDatagram,
    abstract_name: String,
    abstract_listener: std::os::unix::net::UnixListener,
    /// A file this process holds open without close-on-exec (as a careless parent would).
    leaked: std::fs::File,
    leaked_path: PathBuf,
}

const SECRET: &str = "TOPSECRET-4815162342";

impl Outside {
    fn new() -> Self {
        use std::os::fd::AsRawFd;
        use std::os::linux::net::SocketAddrExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let granted = dir.path().join("granted");
        std::fs::create_dir(&granted).unwrap();
        let target = granted.join("data.txt");
        std::fs::write(&target, "data").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        let secret = dir.path().join("secret.txt");
        std::fs::write(&secret, SECRET).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let canary = std::process::Command::new("sleep")
            .arg("600")
            .env("CANARY_SECRET", SECRET)
            .spawn()
            .unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        tcp.set_nonblocking(true).unwrap();
        let stream =
            std::os::unix::net::UnixListener::bind(dir.path().join("stream.sock")).unwrap();
        stream.set_nonblocking(true).unwrap();
        let dgram = std::os::unix::net::UnixDatagram::bind(dir.path().join("dgram.sock")).unwrap();
        dgram.set_nonblocking(true).unwrap();
        for s in ["stream.sock", "dgram.sock"] {
            let _ = std::fs::set_permissions(
                dir.path().join(s),
                std::fs::Permissions::from_mode(0o777),
            );
        }
        let abstract_name = format!("joule-escape-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name).unwrap();
        let abstract_listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        abstract_listener.set_nonblocking(true).unwrap();
        let leaked_path = dir.path().join("leaked.txt");
        let leaked = std::fs::File::create(&leaked_path).unwrap();
        // SAFETY: clears close-on-exec on a descriptor this test owns.
        unsafe { libc::fcntl(leaked.as_raw_fd(), libc::F_SETFD, 0) };
        Self {
            me: std::process::id() as i32,
            dir,
            granted,
            target,
            secret,
            canary,
            tcp,
            stream,
            dgram,
            abstract_name,
            abstract_listener,
            leaked,
            leaked_path,
        }
    }

    fn canary(&self) -> i32 {
        self.canary.id() as i32
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.canary.kill();
        let _ = self.canary.wait();
    }
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A process's nice value, CPU affinity, scheduling policy and limits, as seen from outside.
fn process_state(pid: i32) -> String {
    // SAFETY: plain queries of another process.
    let (nice, policy) = unsafe {
        (
            libc::getpriority(libc::PRIO_PROCESS, pid as libc::id_t),
            libc::sched_getscheduler(pid),
        )
    };
    let status = read(format!("/proc/{pid}/status"));
    let affinity = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list"))
        .unwrap_or("")
        .to_string();
    let state = status
        .lines()
        .find(|l| l.starts_with("State"))
        .unwrap_or("")
        .to_string();
    // SAFETY: ioprio_get of another process reads no memory of ours.
    let ioprio = unsafe { libc::syscall(libc::SYS_ioprio_get, 1, pid) };
    format!(
        "nice {nice} policy {policy} ioprio {ioprio} {affinity} {state} limits {}",
        read(format!("/proc/{pid}/limits"))
    )
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    let zombie = read(format!("/proc/{pid}/stat"))
        .rsplit(')')
        .next()
        .is_some_and(|s| s.trim_start().starts_with('Z'));
    exists && !zombie
}

fn hostname() -> String {
    read("/proc/sys/kernel/hostname")
}

fn clock_tick() -> i64 {
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: modes 0 only reads the kernel's clock state into `t`.
    unsafe { libc::adjtimex(&mut t) };
    t.tick
}

/// The read-only flags of every mount this process sees.
fn mount_flags() -> Vec<String> {
    read("/proc/self/mountinfo")
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {}", f.get(4).unwrap_or(&""), f.get(5).unwrap_or(&""))
        })
        .collect()
}

/// Processes (not zombies) whose command line contains `marker`.
fn with_marker(marker: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            String::from_utf8_lossy(
                &std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
            )
            .contains(marker)
                && alive(pid)
        })
        .collect()
}

async fn run(t: &Tool, args: &[&str], grant: Option<&Path>) -> Result<ToolOutput, ToolError> {
    let mut named: BTreeMap<String, String> = args
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("a{i}"), v.to_string()))
        .collect();
    let workspace = grant.and_then(Path::parent).unwrap_or(Path::new("/"));
    if let Some(g) = grant {
        named.insert(
            "dir".into(),
            g.file_name().unwrap().to_string_lossy().into(),
        );
    }
    let argv = tool::argv(t, &named, workspace)?;
    tool::run(
        t,
        &argv,
        &tool::Constraints::default(),
        None,
        &Cancel::new(),
    )
    .await
}

fn said(r: &Result<ToolOutput, ToolError>) -> String {
    match r {
        Ok(o) => format!("{}{}", o.stdout, o.stderr),
        Err(e) => e.to_string(),
    }
}

/// What came out of the box, on one line for the table.
fn short(r: &Result<ToolOutput, ToolError>) -> String {
    let text = said(r);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Traceback") && !l.starts_with("File "))
        .collect();
    let joined = lines.join("; ").replace('|', "/");
    if joined.chars().count() > 200 {
        format!("{}…", joined.chars().take(200).collect::<String>())
    } else {
        joined
    }
}

struct Row {
    class: &'static str,
    attack: &'static str,
    stopped: bool,
    result: String,
}

/// Every attack; the rows say what happened. Runs as whoever this process is.
async fn suite() -> (Vec<Row>, Vec<Layer>) {
    let o = Outside::new();
    let g = Some(o.granted.as_path());
    let mut rows = Vec::new();
    let mut push = |class, attack, stopped: bool, r: &Result<ToolOutput, ToolError>| {
        rows.push(Row {
            class,
            attack,
            stopped,
            result: short(r),
        })
    };
    let probe = run(&python("print('ok')", 0, limits()), &[], None).await;
    let layers = probe.as_ref().map(|p| p.layers.clone()).unwrap_or_default();
    assert!(probe.is_ok(), "python3 runs in the box: {probe:?}");

    // --- Files ---
    let outside_file = o.dir.path().join("written.txt");
    let r = run(
        &python(
            "open(__import__('sys').argv[1], 'w').write('x')",
            1,
            limits(),
        ),
        &[outside_file.to_str().unwrap()],
        g,
    )
    .await;
    push(
        "files",
        "write a file outside its directory",
        !outside_file.exists(),
        &r,
    );
    let r = run(
        &python("print(open(__import__('sys').argv[1]).read())", 1, limits()),
        &[o.secret.to_str().unwrap()],
        g,
    )
    .await;
    push(
        "files",
        "read a file outside its grants",
        !said(&r).contains(SECRET),
        &r,
    );
    let r = run(
        &python(
            "import os, sys\nos.symlink(sys.argv[1], 'link')\nprint(open('link').read())",
            1,
            limits(),
        ),
        &[o.secret.to_str().unwrap()],
        g,
    )
    .await;
    push(
        "files",
        "follow a symlink out of its directory",
        !said(&r).contains(SECRET),
        &r,
    );
    let r = run(
        &python(
            "import os\nfor p in ('/proc/1/root/etc/shadow', '/proc/self/root/../../etc/hostname'):\n    try:\n        print(open(p).read())\n    except OSError as e:\n        print('refused', e)",
            0,
            limits(),
        ),
        &[],
        g,
    )
    .await;
    let host = hostname();
    push(
        "files",
        "climb out through /proc/*/root",
        !said(&r).contains(host.trim()),
        &r,
    );
    let before = std::fs::metadata(&o.target).unwrap();
    let r = run(
        &python(
            "import os, sys\np = sys.argv[1]\nfor name, f in [('chmod', lambda: os.chmod(p, 0o777)), ('chown', lambda: os.chown(p, 0, 0)), ('utime', lambda: os.utime(p, (0, 0))), ('setxattr', lambda: os.setxattr(p, 'user.joule', b'x')), ('truncate', lambda: os.truncate(p, 0)), ('rename', lambda: os.rename(p, p + '.moved'))]:\n    try:\n        f()\n        print(name, 'done')\n    except OSError as e:\n        print(name, 'refused', e.strerror)",
            1,
            limits(),
        ),
        &[o.target.to_str().unwrap()],
        g,
    )
    .await;
    let after = std::fs::metadata(&o.target).unwrap();
    let xattr = {
        let c = std::ffi::CString::new(o.target.to_str().unwrap()).unwrap();
        let name = std::ffi::CString::new("user.joule").unwrap();
        // SAFETY: a size query of an extended attribute; no buffer.
        unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) }
    };
    use std::os::unix::fs::MetadataExt;
    push(
        "files",
        "change a granted file's mode, owner, times, xattrs, size or name",
        before.mode() == after.mode()
            && before.uid() == after.uid()
            && before.mtime() == after.mtime()
            && after.len() == 4
            && xattr < 0
            && o.target.exists(),
        &r,
    );
    let r = run(
        &python(
            "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'leaked')\n        print('wrote fd', fd)\n    except OSError:\n        pass\nprint('done')",
            0,
            limits(),
        ),
        &[],
        g,
    )
    .await;
    let _ = &o.leaked;
    push(
        "channels",
        "write through a descriptor joule inherited",
        read(&o.leaked_path).is_empty(),
        &r,
    );

    // --- Other processes and joule ---
    let canary = o.canary();
    let canary_before = process_state(canary);
    let me_before = read("/proc/self/limits");
    let r = run(
        &python(
            "import ctypes, os, sys, resource\npid, me = int(sys.argv[1]), int(sys.argv[2])\nlibc = ctypes.CDLL(None, use_errno=True)\nfor name, f in [\n  ('renice', lambda: os.setpriority(os.PRIO_PROCESS, pid, 19)),\n  ('affinity', lambda: os.sched_setaffinity(pid, {0})),\n  ('scheduler', lambda: os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))),\n  ('ioprio', lambda: libc.syscall(251, 1, pid, (3 << 13)) == 0 or (_ for _ in ()).throw(OSError(ctypes.get_errno(), 'ioprio'))),\n  ('prlimit canary', lambda: resource.prlimit(pid, resource.RLIMIT_NOFILE, (16, 16))),\n  ('prlimit joule FSIZE', lambda: resource.prlimit(me, resource.RLIMIT_FSIZE, (1, 1))),\n  ('prlimit joule AS', lambda: resource.prlimit(me, resource.RLIMIT_AS, (1 << 20, 1 << 20))),\n  ('kill', lambda: os.kill(pid, 9)),\n  ('ptrace', lambda: libc.ptrace(16, pid, 0, 0) == 0 or (_ for _ in ()).throw(OSError(ctypes.get_errno(), 'ptrace'))),\n]:\n    try:\n        f()\n        print(name, 'done')\n    except (OSError, ProcessLookupError) as e:\n        print(name, 'refused', e)",
            2,
            limits(),
        ),
        &[&canary.to_string(), &o.me.to_string()],
        g,
    )
    .await;
    push(
        "processes",
        "renice, pin, reschedule, ioprio, limit, kill or trace a process outside",
        alive(canary) && process_state(canary) == canary_before,
        &r,
    );
    push(
        "processes",
        "set joule's own resource limits (RLIMIT_FSIZE, RLIMIT_AS)",
        read("/proc/self/limits") == me_before,
        &r,
    );
    let r = run(
        &python(
            "import sys\ntry:\n    print(open('/proc/%s/environ' % sys.argv[1], 'rb').read())\nexcept OSError as e:\n    print('refused', e)",
            1,
            limits(),
        ),
        &[&canary.to_string()],
        g,
    )
    .await;
    push(
        "processes",
        "read another process's environment",
        !said(&r).contains(SECRET),
        &r,
    );
    let marker = format!("joule-daemon-{}", std::process::id());
    let r = run(
        &python(
            "import os, sys\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        os.execv('/usr/bin/python3', ['python3', '-c', 'import time; time.sleep(300)', sys.argv[1]])\n    os._exit(0)\nprint('daemon started')",
            1,
            limits(),
        ),
        &[&marker],
        g,
    )
    .await;
    // The box's end takes its processes along; the kernel reaps them at its own pace.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !with_marker(&marker).is_empty() && Instant::now() < deadline {
        std::thread::yield_now();
    }
    push(
        "processes",
        "leave a daemon running after the step",
        with_marker(&marker).is_empty(),
        &r,
    );

    // --- The host ---
    let (host, tick, mounts) = (hostname(), clock_tick(), mount_flags());
    let domain = read("/proc/sys/kernel/domainname");
    let r = run(
        &python(
            "import ctypes, socket, time, os\nlibc = ctypes.CDLL(None, use_errno=True)\nt = ctypes.create_string_buffer(208)\nctypes.memmove(t, ctypes.byref(ctypes.c_uint(0x4000)), 4)\nctypes.memmove(ctypes.addressof(t) + 88, ctypes.byref(ctypes.c_long(9000)), 8)\nattr = ctypes.create_string_buffer(32); attr[0] = b'\\x01'\nfor name, f in [\n  ('hostname', lambda: socket.sethostname('pwned')),\n  ('domainname', lambda: libc.setdomainname(b'pwned', 5) == 0 or (_ for _ in ()).throw(OSError(ctypes.get_errno(), 'setdomainname'))),\n  ('realtime', lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))),\n  ('adjtimex', lambda: libc.adjtimex(t) >= 0 or (_ for _ in ()).throw(OSError(ctypes.get_errno(), 'adjtimex'))),\n  ('settime', lambda: time.clock_settime(time.CLOCK_REALTIME, 0)),\n  ('mount_setattr', lambda: libc.syscall(442, -100, b'/', 0x8000, attr, 32) == 0 or (_ for _ in ()).throw(OSError(ctypes.get_errno(), 'mount_setattr'))),\n  ('remount', lambda: libc.mount(b'none', b'/usr', None, 32 | 1, None) == 0 or (_ for _ in ()).throw(OSError(ctypes.get_errno(), 'mount'))),\n]:\n    try:\n        f()\n        print(name, 'done')\n    except OSError as e:\n        print(name, 'refused', e)",
            0,
            limits(),
        ),
        &[],
        g,
    )
    .await;
    push(
        "host",
        "change the host's name or domain name",
        hostname() == host && read("/proc/sys/kernel/domainname") == domain,
        &r,
    );
    push(
        "host",
        "run at real-time priority",
        said(&r).contains("realtime refused"),
        &r,
    );
    push(
        "host",
        "change the host's clock (adjtimex, clock_settime)",
        clock_tick() == tick,
        &r,
    );
    push(
        "host",
        "change a host mount (mount_setattr, remount)",
        mount_flags() == mounts,
        &r,
    );
    let r = run(
        &python(
            "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nbuf = ctypes.create_string_buffer(1 << 16)\nn = libc.syscall(103, 3, buf, 1 << 16)\nprint('syslog read', max(n, 0), 'bytes')\ntry:\n    print('kmsg', len(open('/dev/kmsg', 'rb').read(4096)), 'bytes')\nexcept OSError as e:\n    print('kmsg refused', e)",
            0,
            limits(),
        ),
        &[],
        g,
    )
    .await;
    let text = said(&r);
    push(
        "host",
        "read the kernel log",
        text.contains("syslog read 0 bytes") && !text.contains("kmsg 4096"),
        &r,
    );
    let kmarker = format!("joule-kmsg-{}", std::process::id());
    let r = run(
        &python(
            "import os, sys\ntry:\n    os.mknod('kmsg', 0o600 | 0o020000, os.makedev(1, 11))\n    open('kmsg', 'w').write(sys.argv[1])\n    print('wrote')\nexcept OSError as e:\n    print('refused', e)",
            1,
            limits(),
        ),
        &[&kmarker],
        g,
    )
    .await;
    let logged = std::process::Command::new("dmesg")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&kmarker))
        .unwrap_or(false);
    push(
        "host",
        "write the kernel log through a device node it made",
        !logged && !said(&r).contains("wrote"),
        &r,
    );
    let r = run(
        &python(
            "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nfor name, f in [\n  ('unshare user', lambda: libc.unshare(0x10000000) == 0 or (_ for _ in ()).throw(OSError(ctypes.get_errno(), 'unshare'))),\n  ('io_uring', lambda: libc.syscall(425, 8, ctypes.create_string_buffer(120)) >= 0 or (_ for _ in ()).throw(OSError(ctypes.get_errno(), 'io_uring'))),\n  ('bpf', lambda: libc.syscall(321, 0, None, 0) >= 0 or (_ for _ in ()).throw(OSError(ctypes.get_errno(), 'bpf'))),\n  ('perf', lambda: libc.syscall(298, ctypes.create_string_buffer(128), 0, -1, -1, 0) >= 0 or (_ for _ in ()).throw(OSError(ctypes.get_errno(), 'perf'))),\n  ('keyctl', lambda: libc.syscall(250, 0, 0) >= 0 or (_ for _ in ()).throw(OSError(ctypes.get_errno(), 'keyctl'))),\n  ('raise a limit', lambda: __import__('resource').setrlimit(__import__('resource').RLIMIT_CPU, (10**9, 10**9))),\n]:\n    try:\n        f()\n        print(name, 'done')\n    except (OSError, ValueError) as e:\n        print(name, 'refused', e)\nst = open('/proc/self/status').read()\nprint([l for l in st.splitlines() if l.startswith(('Uid', 'CapEff', 'NoNewPrivs'))])",
            0,
            limits(),
        ),
        &[],
        g,
    )
    .await;
    let text = said(&r);
    push(
        "privilege",
        "new user namespace, io_uring, BPF, perf, keyrings, raised limits, capabilities",
        !text.contains(" done")
            && text.contains("CapEff:\\t0000000000000000")
            && text.contains("65534"),
        &r,
    );

    // --- Channels ---
    let port = o.tcp.local_addr().unwrap().port().to_string();
    let r = run(
        &python(
            "import socket, sys\nfor name, f in [\n  ('tcp', lambda: socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2).send(b'hi')),\n  ('unix stream', lambda: socket.socket(socket.AF_UNIX).connect(sys.argv[2] + '/stream.sock')),\n  ('unix dgram', lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'hi', sys.argv[2] + '/dgram.sock')),\n  ('abstract', lambda: socket.socket(socket.AF_UNIX).connect('\\0' + sys.argv[3])),\n]:\n    try:\n        f()\n        print(name, 'done')\n    except OSError as e:\n        print(name, 'refused', e)",
            4,
            limits(),
        ),
        &[&port, o.dir.path().to_str().unwrap(), &o.abstract_name, ""],
        g,
    )
    .await;
    let tcp_heard = o.tcp.accept().is_ok();
    let stream_heard = o.stream.accept().is_ok();
    let dgram_heard = o.dgram.recv(&mut [0u8; 8]).is_ok();
    let abstract_heard = o.abstract_listener.accept().is_ok();
    push("channels", "TCP to a listener on 127.0.0.1", !tcp_heard, &r);
    push(
        "channels",
        "Unix stream and datagram sockets bound to paths outside",
        !stream_heard && !dgram_heard,
        &r,
    );
    push(
        "channels",
        "an abstract Unix socket outside",
        !abstract_heard,
        &r,
    );

    // --- Resources ---
    let r = run(
        &python(
"import os\nn = 0\nfds = []\ntry:\n    while n < 2 << 30:\n        fd = os.memfd_create('x%d' % len(fds)); fds.append(fd)\n        for _ in range(8):\n            os.write(fd, b'\\0' * (1 << 20)); n += 1 << 20\nexcept OSError as e:\n    print('stopped', e)\nprint('memfd', n >> 20, 'MB')",
            0,
            limits(),
        ),
        &[],
        g,
    )
    .await;
    let got = |r: &Result<ToolOutput, ToolError>, what: &str| -> u64 {
        said(r)
            .lines()
            .find_map(|l| {
                l.strip_prefix(what)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    push(
        "resources",
        "2 GB of memfds (8 MB each, under the file-size limit) past a 256 MB memory limit",
        got(&r, "memfd ") <= 256,
        &r,
    );
    let r = run(
        &python(
            "import os\nn = 0\ntry:\n    with open('/dev/shm/x', 'wb') as f:\n        while n < 2 << 30:\n            f.write(b'\\0' * (1 << 20)); f.flush(); n += 1 << 20\nexcept OSError as e:\n    print('stopped', e)\nprint('shm', n >> 20, 'MB')\nn = 0\ntry:\n    for i in range(2048):\n        with open('f%d' % i, 'wb') as f:\n            f.write(b'\\0' * (1 << 20)); n += 1 << 20\nexcept OSError as e:\n    print('stopped', e)\nprint('disk', n >> 20, 'MB')",
            0,
            limits(),
        ),
        &[],
        g,
    )
    .await;
    push(
        "resources",
        "2 GB to /dev/shm and to its working directory past a 32 MB disk limit",
        got(&r, "shm ") <= 32 && got(&r, "disk ") <= 32,
        &r,
    );
    let r = run(
        &python(
            "import os, time\nn = 0\nwhile n < 10000:\n    try:\n        if os.fork() == 0:\n            time.sleep(5)\n            os._exit(0)\n        n += 1\n    except OSError:\n        break\nprint('forked', n)",
            0,
            limits(),
        ),
        &[],
        g,
    )
    .await;
    push(
        "resources",
        "a fork bomb past 16 processes",
        got(&r, "forked ") < 16,
        &r,
    );
    let started = Instant::now();
    let r = run(
        &python(
            "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
            0,
            limits(),
        ),
        &[],
        g,
    )
    .await;
    push(
        "resources",
        "flood its output (bytes)",
        matches!(&r, Err(ToolError::TooMuchOutput { .. }))
            && started.elapsed() < Duration::from_secs(10),
        &r,
    );
    let r = run(&python("while True:\n    print('x')", 0, limits()), &[], g).await;
    push(
        "resources",
        "flood its output (lines, each a for_each item)",
        matches!(&r, Err(ToolError::TooMuchOutput { what, .. }) if what.contains("lines")),
        &r,
    );
    let r = run(
        &python(
            "import sys\nwhile True:\n    sys.stderr.write('x' * 65536)",
            0,
            limits(),
        ),
        &[],
        g,
    )
    .await;
    push(
        "resources",
        "flood its error output",
        matches!(&r, Err(ToolError::TooMuchOutput { what, .. }) if what.contains("error")),
        &r,
    );
    let mut cpu = limits();
    cpu["cpu_s"] = 1.into();
    let r = run(&python("while True: pass", 0, cpu), &[], g).await;
    push(
        "resources",
        "spin past its CPU-time limit",
        matches!(&r, Err(ToolError::Exit { status, .. }) if status.contains("signal")),
        &r,
    );
    assert!(
        alive(o.me) && alive(canary),
        "joule and the canary outlive the suite"
    );
    // Nothing of the calls is left behind: every call's cgroup is gone with it.
    let mine = format!("joule-tool-{}-", std::process::id());
    let leftovers: Vec<String> = [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup",
    ]
    .iter()
    .flat_map(|root| walkdir_names(Path::new(root), &mine))
    .collect();
    rows.push(Row {
        class: "processes",
        attack: "leave its cgroup behind",
        stopped: leftovers.is_empty(),
        result: format!("{} left: {leftovers:?}", leftovers.len()),
    });
    (rows, layers)
}

/// Which walls stop an attack (the first named is the one that stops it first).
fn walls(attack: &str) -> &'static str {
    match attack {
        a if a.starts_with("write a file outside") => "mount_namespace, landlock_fs",
        a if a.starts_with("read a file outside") => "mount_namespace, landlock_fs",
        a if a.starts_with("follow a symlink") => "mount_namespace, landlock_fs",
        a if a.starts_with("climb out") => "pid_namespace, mount_namespace",
        a if a.starts_with("change a granted file") => "read-only bind, seccomp (chown, setxattr)",
        a if a.starts_with("write through a descriptor") => "closed_fds",
        a if a.starts_with("renice") => "pid_namespace, seccomp",
        a if a.starts_with("set joule's own") => "pid_namespace, seccomp (prlimit of others)",
        a if a.starts_with("read another process") => "pid_namespace",
        a if a.starts_with("leave a daemon") => "pid_namespace (its init takes all), cgroup",
        a if a.starts_with("leave its cgroup") => "cgroup (removed with the call)",
        a if a.starts_with("change the host's name") => "uts_namespace, seccomp",
        a if a.starts_with("run at real-time") => "seccomp (sched_setscheduler)",
        a if a.starts_with("change the host's clock") => "seccomp, user_namespace (no capability)",
        a if a.starts_with("change a host mount") => "seccomp, user_namespace",
        a if a.starts_with("read the kernel log") => "seccomp (syslog), minimal /dev",
        a if a.starts_with("write the kernel log") => "seccomp (mknod of devices)",
        a if a.starts_with("new user namespace") => "user_namespace (--disable-userns), seccomp",
        a if a.starts_with("TCP") => "net_namespace, seccomp, landlock_net",
        a if a.starts_with("Unix stream") => "mount_namespace",
        a if a.starts_with("an abstract") => "net_namespace, landlock_scope",
        a if a.contains("memfd") => "rlimits (file size), cgroup_memory; seccomp without it",
        a if a.contains("disk limit") => "workdir (size-limited tmpfs)",
        a if a.contains("fork bomb") => "cgroup (pids.max), rlimits (RLIMIT_NPROC)",
        a if a.starts_with("flood") => "joule's output limits (the tool is stopped)",
        a if a.contains("CPU-time") => "rlimits (RLIMIT_CPU), cgroup_cpu",
        _ => "",
    }
}

/// Directories under `root` (two levels down at most) whose name starts with `prefix`.
fn walkdir_names(root: &Path, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            if e.file_name().to_string_lossy().starts_with(prefix) {
                out.push(p.display().to_string());
            } else if depth < 2 {
                stack.push((p, depth + 1));
            }
        }
    }
    out
}

fn table(rows: &[Row], layers: &[Layer], who: &str) -> String {
    let mut t = format!(
        "\nescape suite as {who}\n\n| class | attack | stopped | by | what the tool got |\n| --- | --- | --- | --- | --- |\n"
    );
    for r in rows {
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.class,
            r.attack,
            if r.stopped { "yes" } else { "**NO**" },
            walls(r.attack),
            r.result
        ));
    }
    let names: Vec<&str> = layers.iter().map(|l| l.as_str()).collect();
    t.push_str(&format!("\nlayers in force: {}\n", names.join(", ")));
    t
}

fn check(rows: &[Row], layers: &[Layer], who: &str) {
    let t = table(rows, layers, who);
    std::io::stdout().write_all(t.as_bytes()).unwrap();
    let escaped: Vec<&str> = rows
        .iter()
        .filter(|r| !r.stopped)
        .map(|r| r.attack)
        .collect();
    assert!(escaped.is_empty(), "escaped as {who}: {escaped:?}\n{t}");
    assert!(rows.len() >= 25, "the suite covers every class");
    assert!(
        rows.iter().all(|r| !walls(r.attack).is_empty()),
        "every row names its walls"
    );
}

fn whoami() -> String {
    // SAFETY: geteuid has no preconditions.
    match unsafe { libc::geteuid() } {
        0 => "root".into(),
        uid => format!("uid {uid}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_is_stopped_as_joules_own_user() {
    let _turn = crate::one_box_at_a_time().await;
    let (rows, layers) = suite().await;
    for l in [
        Layer::UserNamespace,
        Layer::PidNamespace,
        Layer::MountNamespace,
        Layer::NetNamespace,
        Layer::ClosedFds,
        Layer::Seccomp,
    ] {
        assert!(layers.contains(&l), "{l:?} missing from {layers:?}");
    }
    check(&rows, &layers, &whoami());
}

/// Run only by [`every_attack_is_stopped_as_an_unprivileged_user`], as `nobody`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the unprivileged half of the escape suite; its sibling test runs it as nobody"]
async fn escape_suite_as_nobody() {
    let (rows, layers) = suite().await;
    check(&rows, &layers, &whoami());
}

/// As root, this test binary runs itself again as `nobody` (from a copy anyone may execute,
/// with the inner-walls helper beside it); as another user it already is one.
#[test]
fn every_attack_is_stopped_as_an_unprivileged_user() {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (rows, layers) = runtime.block_on(suite());
        check(&rows, &layers, &whoami());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let me = dir.path().join("escape-suite");
    std::fs::copy(std::env::current_exe().unwrap(), &me).unwrap();
    let helper = joule_sandbox::enter::Helper::locate().expect("the inner-walls helper is built");
    std::fs::copy(
        &helper.program,
        dir.path().join(joule_sandbox::enter::HELPER),
    )
    .unwrap();
    let run = || {
        std::process::Command::new(&me)
            .args([
                "--ignored",
                "--exact",
                "escape::escape_suite_as_nobody",
                "--nocapture",
            ])
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("TMPDIR", "/tmp")
            .uid(joule_sandbox::isolation::NOBODY)
            .gid(joule_sandbox::isolation::NOBODY)
            .output()
    };
    // Another test's child may hold the fresh copy open for writing between its fork and its
    // exec (ETXTBSY); that passes as soon as it execs.
    let mut out = run();
    for _ in 0..100 {
        match &out {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::yield_now();
                out = run();
            }
            _ => break,
        }
    }
    let out = out.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("escape suite as uid 65534"),
        "as nobody:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
