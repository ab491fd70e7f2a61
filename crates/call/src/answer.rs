//! What comes back from a call: the answer with the figures the meters and the report need,
//! or an error that says whether trying again may help.

use serde::{Deserialize, Serialize};

/// What a call produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub text: String,
    pub tokens_in: u64,
    pub tokens_out: u64,
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
    /// A fresh temporary working directory.
    Workdir,
    /// CPU seconds, address space, file size, core dumps, processes.
    Rlimits,
    /// A pids cgroup of its own: an exact cap on processes (which `RLIMIT_NPROC` is not for
    /// root), and every process in it killed at the end, even one that left the process group.
    Cgroup,
    /// A network namespace of its own: no route anywhere, not even to the host's loopback.
    NetNamespace,
    /// Landlock filesystem rules: read-only system paths, read-write working directory.
    LandlockFs,
    /// Landlock network rules: no TCP bind or connect.
    LandlockNet,
    /// Landlock scopes: no signals to, or abstract sockets of, processes outside.
    LandlockScope,
    /// The seccomp filter.
    Seccomp,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::ProcessGroup => "process_group",
            Layer::EmptyEnv => "empty_env",
            Layer::Workdir => "workdir",
            Layer::Rlimits => "rlimits",
            Layer::Cgroup => "cgroup",
            Layer::NetNamespace => "net_namespace",
            Layer::LandlockFs => "landlock_fs",
            Layer::LandlockNet => "landlock_net",
            Layer::LandlockScope => "landlock_scope",
            Layer::Seccomp => "seccomp",
        }
    }
}
