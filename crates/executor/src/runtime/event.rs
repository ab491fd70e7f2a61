//! What happens in a run, as data. The scheduler emits [`Event`]s; sinks (the SQLite store,
//! the JSONL trace, the progress display) each take what they need. One vocabulary for all of
//! them means the trace, the store and the report cannot disagree.

use serde::{Deserialize, Serialize};

pub use joule_call::ConfigRef;

use crate::meter::Method;

/// Measured figures of an attempt or a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub latency_s: f64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Of `tokens_in`, those served from the engine's prefix cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tokens_cached: u64,
    pub energy_j: f64,
    /// How `energy_j` was obtained; `None` when nothing was metered (a value step).
    pub energy_method: Option<Method>,
    pub cost_usd: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_s: Option<f64>,
    #[serde(default)]
    pub load_s: f64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Figures {
    /// Adds another attempt's or element's figures. Latency is not summed: a step's latency is
    /// its wall time, which the caller knows.
    pub fn absorb(&mut self, other: &Figures) {
        self.tokens_in += other.tokens_in;
        self.tokens_out += other.tokens_out;
        self.tokens_cached += other.tokens_cached;
        self.energy_j += other.energy_j;
        self.cost_usd += other.cost_usd;
        self.load_s += other.load_s;
        self.energy_method = weakest(self.energy_method, other.energy_method);
        if self.ttft_s.is_none() {
            self.ttft_s = other.ttft_s;
        }
    }
}

/// The less trustworthy of two methods: a sum is only as good as its weakest part.
pub fn weakest(a: Option<Method>, b: Option<Method>) -> Option<Method> {
    let rank = |m: Method| match m {
        Method::Nvml | Method::Rapl => 2,
        Method::Clock => 1,
        Method::Estimate => 0,
    };
    match (a, b) {
        (Some(x), Some(y)) => Some(if rank(x) <= rank(y) { x } else { y }),
        (x, None) => x,
        (None, y) => y,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The status a stored run's text names, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one step of a run ended (or that it never started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Succeeded,
    Skipped,
    Failed,
    Cancelled,
    NotRun,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::NotRun => "not_run",
        }
    }
}

impl std::fmt::Display for StepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        workflow: String,
        /// Whether this is a resumed run (finished steps are not run again).
        resumed: bool,
        /// The plan being run, as `joule plan --json` prints it.
        plan: serde_json::Value,
        /// The effective policy every call of the run is checked against (the workflow's,
        /// narrowed by the operator's).
        #[serde(default)]
        policy: serde_json::Value,
    },
    /// An attempt of a call begins; `call` is exactly what was sent (prompt, arguments).
    AttemptStarted {
        step: String,
        index: Option<usize>,
        attempt: u32,
        config: ConfigRef,
        call: serde_json::Value,
    },
    AttemptEnded {
        step: String,
        index: Option<usize>,
        attempt: u32,
        config: ConfigRef,
        ok: bool,
        /// The answer as the backend gave it (before `output` checks), when there was one.
        answer: Option<joule_call::Answer>,
        error: Option<String>,
        /// Whether the failure may go away on another try.
        #[serde(default)]
        transient: bool,
        /// Answered from an earlier run's identical call (`cache: true`): nothing ran.
        #[serde(default)]
        cached: bool,
        figures: Figures,
    },
    /// Tokens generated so far by a running model call, for progress displays. Not stored and
    /// not traced: it says nothing the attempt's end does not.
    Progress {
        step: String,
        index: Option<usize>,
        tokens: u64,
    },
    /// A call the workflow's effective policy does not allow was refused before it was made
    /// (a forged or stale plan, a fallback the policy has since narrowed away).
    PolicyRefused {
        step: String,
        index: Option<usize>,
        config: ConfigRef,
        reason: String,
    },
    /// A tool call an agent's model asked for: its arguments, the attempt that ran it (none
    /// when refused: nothing ran), and a hash of its full output, so the audit log proves
    /// what the model was shown without keeping it twice (the attempt's answer holds it).
    AgentToolCall {
        step: String,
        index: Option<usize>,
        turn: u32,
        id: String,
        tool: String,
        arguments: serde_json::Value,
        attempt: Option<u32>,
        result_sha256: Option<String>,
        error: Option<String>,
        refused: Option<String>,
    },
    /// The attempts on one config were used up; the next-best one the plan allows is tried.
    Fallback {
        step: String,
        index: Option<usize>,
        from: ConfigRef,
        to: ConfigRef,
        reason: String,
    },
    /// One element of a `for_each` step finished.
    ElementEnded {
        step: String,
        index: usize,
        output: serde_json::Value,
        figures: Figures,
    },
    StepSkipped {
        step: String,
        reason: String,
    },
    StepEnded {
        step: String,
        ok: bool,
        output: serde_json::Value,
        error: Option<String>,
        config: ConfigRef,
        figures: Figures,
        attempts: u32,
        /// When it started and ended, seconds from the run's start.
        started_s: f64,
        ended_s: f64,
        /// Whether its output came from an earlier, interrupted run.
        resumed: bool,
    },
    /// The run fell behind its SLO and the steps not yet started were planned again.
    Replanned {
        elapsed_s: f64,
        projected_s: f64,
        slo_s: f64,
        changes: Vec<(String, ConfigRef, ConfigRef)>,
        note: String,
    },
    RunEnded {
        status: RunStatus,
        outputs: serde_json::Value,
        error: Option<String>,
    },
}

impl Event {
    /// The event's name, as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::RunStarted { .. } => "run_started",
            Event::AttemptStarted { .. } => "attempt_started",
            Event::AttemptEnded { .. } => "attempt_ended",
            Event::Progress { .. } => "progress",
            Event::PolicyRefused { .. } => "policy_refused",
            Event::AgentToolCall { .. } => "agent_tool_call",
            Event::Fallback { .. } => "fallback",
            Event::ElementEnded { .. } => "element_ended",
            Event::StepSkipped { .. } => "step_skipped",
            Event::StepEnded { .. } => "step_ended",
            Event::Replanned { .. } => "replanned",
            Event::RunEnded { .. } => "run_ended",
        }
    }
}

/// An event in its run, numbered and timed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub run_id: String,
    pub seq: u64,
    /// Seconds since the run (or the resumed part of it) started.
    pub at_s: f64,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct SinkError {
    pub what: String,
    pub message: String,
}

/// Something that keeps or shows events. Called on the scheduler's thread, in order.
pub trait Sink: Send {
    fn record(&mut self, record: &Record) -> Result<(), SinkError>;
    /// Makes everything recorded so far durable. The scheduler calls it before it waits for
    /// running steps and when a model or tool step ends, so a kill loses no finished call.
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}
