//! What comes back from a call: the answer with the figures the meters and the report need,
//! or an error that says whether trying again may help.

use serde::{Deserialize, Serialize};

/// What a call produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub text: String,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Of `tokens_in`, those whose KV came from the engine's prefix cache (not prefilled).
    #[serde(default)]
    pub tokens_cached: u64,
    pub ttft_s: Option<f64>,
    /// Seconds this call spent loading its model (0 when resident).
    pub load_s: f64,
    /// CPU seconds of a tool's process, for its energy estimate.
    pub cpu_s: Option<f64>,
    /// The sandbox layers a tool's process ran under (the record of what was in force).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sandbox: Vec<Layer>,
    /// A tool's program and argv as started, and its exit status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The functions a model asked to call instead of (or besides) answering.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<crate::ToolUse>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    pub message: String,
    /// Whether the same call may succeed if tried again.
    pub transient: bool,
}

impl CallError {
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: false,
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: true,
        }
    }
}

/// One isolation layer a tool process ran under. The names are what run records, policies
/// (`sandbox: [landlock_fs, seccomp]`) and the audit log spell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// Own session and process group, killed whole at the end.
    ProcessGroup,
    /// No inherited environment variables (API keys stay with joule).
    EmptyEnv,
    /// A fresh, size-limited working directory (a tmpfs inside the box).
    Workdir,
    /// CPU seconds, address space, file size, open files, core dumps, processes.
    Rlimits,
    /// A user namespace of its own: an unprivileged uid with no capabilities, and no way to
    /// make further user namespaces.
    UserNamespace,
    /// A PID namespace of its own: it sees and signals only its own processes, and they all
    /// end with it.
    PidNamespace,
    /// A mount namespace of its own with a minimal root: the system read-only, a fresh
    /// `/proc`, a minimal `/dev`, nothing of the host's homes, `/var`, `/run` or `/sys`.
    MountNamespace,
    /// An IPC namespace of its own (System V IPC, POSIX message queues).
    IpcNamespace,
    /// A UTS namespace of its own (its host name is its own).
    UtsNamespace,
    /// A network namespace of its own: no route anywhere, not even to the host's loopback.
    NetNamespace,
    /// A cgroup of its own with an exact cap on processes, and every process in it killed at
    /// the end, even one that left every session.
    Cgroup,
    /// The cgroup's memory limit on the whole box, shared memory and tmpfs included.
    CgroupMemory,
    /// The cgroup's CPU quota.
    CgroupCpu,
    /// No inherited descriptor but standard input, output and error.
    ClosedFds,
    /// Landlock filesystem rules: read-only system paths, read-write working directories.
    LandlockFs,
    /// Landlock network rules: no TCP bind or connect.
    LandlockNet,
    /// Landlock scopes: no signals to, or abstract sockets of, processes outside.
    LandlockScope,
    /// The seccomp allow-list.
    Seccomp,
}

impl Layer {
    /// Every layer, outermost first.
    pub const ALL: [Layer; 18] = [
        Layer::ProcessGroup,
        Layer::EmptyEnv,
        Layer::Workdir,
        Layer::Rlimits,
        Layer::UserNamespace,
        Layer::PidNamespace,
        Layer::MountNamespace,
        Layer::IpcNamespace,
        Layer::UtsNamespace,
        Layer::NetNamespace,
        Layer::Cgroup,
        Layer::CgroupMemory,
        Layer::CgroupCpu,
        Layer::ClosedFds,
        Layer::LandlockFs,
        Layer::LandlockNet,
        Layer::LandlockScope,
        Layer::Seccomp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Layer::ProcessGroup => "process_group",
            Layer::EmptyEnv => "empty_env",
            Layer::Workdir => "workdir",
            Layer::Rlimits => "rlimits",
            Layer::UserNamespace => "user_namespace",
            Layer::PidNamespace => "pid_namespace",
            Layer::MountNamespace => "mount_namespace",
            Layer::IpcNamespace => "ipc_namespace",
            Layer::UtsNamespace => "uts_namespace",
            Layer::NetNamespace => "net_namespace",
            Layer::Cgroup => "cgroup",
            Layer::CgroupMemory => "cgroup_memory",
            Layer::CgroupCpu => "cgroup_cpu",
            Layer::ClosedFds => "closed_fds",
            Layer::LandlockFs => "landlock_fs",
            Layer::LandlockNet => "landlock_net",
            Layer::LandlockScope => "landlock_scope",
            Layer::Seccomp => "seccomp",
        }
    }
}
