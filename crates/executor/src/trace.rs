//! The JSONL trace (`--trace FILE`): every event of a run, one JSON object a line, written as
//! it happens, for tools that read traces rather than databases. Each line is a
//! [`Record`](crate::runtime::Record): `run_id`, `seq`, `at_s`, `event` and the event's fields.
//!
//! Model calls also run inside `tracing` spans named `gen_ai.chat` carrying the OpenTelemetry
//! GenAI attributes (`gen_ai.operation.name`, `gen_ai.request.model`,
//! `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`) plus `joule.energy_j` and
//! `joule.device` (see the runtime), so an OpenTelemetry subscriber sees the same calls.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::runtime::{Event, Record, Sink, SinkError};

pub struct Trace {
    out: BufWriter<File>,
    path: PathBuf,
}

impl Trace {
    /// Appends to `path`, so a resumed run continues its trace.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            out: BufWriter::new(file),
            path: path.to_path_buf(),
        })
    }

    fn error(&self, e: impl std::fmt::Display) -> SinkError {
        SinkError {
            what: format!("trace {}", self.path.display()),
            message: e.to_string(),
        }
    }
}

impl Sink for Trace {
    fn record(&mut self, record: &Record) -> Result<(), SinkError> {
        if matches!(record.event, Event::Progress { .. }) {
            return Ok(());
        }
        serde_json::to_writer(&mut self.out, record).map_err(|e| self.error(e))?;
        self.out.write_all(b"\n").map_err(|e| self.error(e))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| self.error(e))
    }
}
