//! The run store: one SQLite file (WAL) holding every run, its plan, every attempt with what
//! was sent and what came back, every step's output, and every event.
//!
//! It is a [`Sink`]: the scheduler hands it events in order, it writes them inside one open
//! transaction, and [`Sink::flush`] commits. The scheduler flushes when a model or tool step
//! ends and before it waits, so a run killed with SIGKILL loses at most calls that had not
//! finished, and `joule resume` skips everything that had. Between flushes many `value` steps
//! share one commit, which keeps a 1,000-step run cheap.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use joule_call::{Answer, Cache, CallError, Site};

use joule_planner::plan::Plan;

use crate::recorded::Recording;
use crate::report::Report;
use crate::runtime::{ConfigRef, Event, Figures, Prior, Record, RunStatus, Sink, SinkError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("run store {path}: {message}")]
    Open { path: String, message: String },
    #[error("run store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("no run `{0}` in the store; `joule runs list` shows the runs it holds")]
    UnknownRun(String),
    #[error("run store: stored {what} is unreadable: {message}")]
    Corrupt { what: String, message: String },
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    file TEXT NOT NULL,
    source TEXT NOT NULL,
    inputs TEXT NOT NULL,
    plan TEXT NOT NULL,
    options TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    ended_at TEXT,
    parts INTEGER NOT NULL DEFAULT 1,
    error TEXT,
    outputs TEXT,
    report TEXT,
    audit_head TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id),
    part INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    at_s REAL NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    hash TEXT
);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, id);
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL REFERENCES runs(id),
    step TEXT NOT NULL,
    idx INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    model TEXT,
    device TEXT NOT NULL,
    ok INTEGER NOT NULL,
    call TEXT NOT NULL,
    answer TEXT,
    error TEXT,
    transient INTEGER NOT NULL DEFAULT 0,
    figures TEXT NOT NULL,
    PRIMARY KEY (run_id, step, idx, attempt)
);
CREATE INDEX IF NOT EXISTS attempts_call ON attempts(call) WHERE ok = 1;
CREATE TABLE IF NOT EXISTS elements (
    run_id TEXT NOT NULL REFERENCES runs(id),
    step TEXT NOT NULL,
    idx INTEGER NOT NULL,
    output TEXT NOT NULL,
    PRIMARY KEY (run_id, step, idx)
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs(id),
    step TEXT NOT NULL,
    ok INTEGER NOT NULL,
    output TEXT NOT NULL,
    model TEXT,
    device TEXT NOT NULL,
    figures TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    started_s REAL NOT NULL,
    ended_s REAL NOT NULL,
    error TEXT,
    PRIMARY KEY (run_id, step)
);
";

/// A run as stored: enough to resume or replay it without the original files.
#[derive(Debug, Clone, Serialize)]
pub struct StoredRun {
    pub id: String,
    pub workflow: String,
    pub file: String,
    /// The workflow text as it was when the run started.
    pub source: String,
    pub inputs: serde_json::Value,
    /// The plan the run started with (a resumed run keeps it).
    pub plan: Plan,
    /// What the caller chose (objective, SLO, catalog, devices), to rebuild the same run: the
    /// application's record, kept as it wrote it.
    pub options: serde_json::Value,
    pub status: RunStatus,
    pub created_at: String,
    pub ended_at: Option<String>,
    pub parts: i64,
    pub error: Option<String>,
    pub outputs: Option<serde_json::Value>,
    pub report: Option<Report>,
}

/// One line of `joule runs list`.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub id: String,
    pub workflow: String,
    pub status: RunStatus,
    pub created_at: String,
    pub ended_at: Option<String>,
    pub steps_done: i64,
    pub energy_j: f64,
    pub cost_usd: f64,
}

/// What a new run is.
pub struct NewRun<'a> {
    pub id: &'a str,
    pub workflow: &'a str,
    pub file: &'a str,
    pub source: &'a str,
    pub inputs: &'a serde_json::Value,
    pub plan: &'a Plan,
    pub options: &'a serde_json::Value,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    part: i64,
    in_tx: bool,
    /// Calls of attempts that have started but not ended, by (step, index, attempt).
    calls: HashMap<(String, i64, u32), String>,
    /// The run being written and the hash of its last event: the audit chain's head.
    head: Option<(String, String)>,
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        what: what.into(),
        message: e.to_string(),
    })
}

fn status(text: &str) -> Result<RunStatus, StoreError> {
    RunStatus::parse(text).ok_or_else(|| StoreError::Corrupt {
        what: "run status".into(),
        message: format!("`{text}` is not a run status"),
    })
}

/// A fresh run id from SQLite's clock (`20261124-081512-3fa2`).
fn run_id_on(conn: &Connection) -> Result<String, StoreError> {
    let stamp: String =
        conn.query_row("SELECT strftime('%Y%m%d-%H%M%S', 'now')", [], |r| r.get(0))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mix = (u64::from(nanos) ^ (u64::from(std::process::id()) << 20))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Ok(format!("{stamp}-{:04x}", (mix >> 48) as u16))
}

fn idx(index: Option<usize>) -> i64 {
    index.map_or(-1, |i| i as i64)
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let err = |message: String| StoreError::Open {
            path: path.display().to_string(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let conn = Connection::open(path).map_err(|e| err(e.to_string()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL lets `joule runs` read while a run writes; NORMAL syncs at checkpoints, which
        // is durable against a killed process (the case resume exists for).
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| err(format!("cannot use WAL: {e}")))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| err(format!("not a joule run store ({e})")))?;
        // Stores made before the audit chain gain its columns; their old events stay unchained.
        for (table, column) in [("events", "hash"), ("runs", "audit_head")] {
            let has: bool = conn
                .prepare(&format!(
                    "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
                ))?
                .exists([column])?;
            if !has {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} TEXT"))?;
            }
        }
        Ok(Self {
            conn,
            path: path.to_path_buf(),
            part: 1,
            in_tx: false,
            calls: HashMap::new(),
            head: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh run id: the UTC time and a random suffix (`20261124-081512-3fa2`).
    pub fn new_run_id(&self) -> Result<String, StoreError> {
        run_id_on(&self.conn)
    }

    pub fn create_run(&mut self, run: &NewRun) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO runs (id, workflow, file, source, inputs, plan, options, status, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'running', strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))",
            params![
                run.id,
                run.workflow,
                run.file,
                run.source,
                json(run.inputs),
                json(run.plan),
                json(run.options)
            ],
        )?;
        self.part = 1;
        Ok(())
    }

    /// Continues a stored run in a new part (after a kill or a failure).
    pub fn reopen_run(&mut self, id: &str) -> Result<(), StoreError> {
        let parts: i64 = self
            .conn
            .query_row("SELECT parts FROM runs WHERE id = ?1", [id], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::UnknownRun(id.to_string()))?;
        self.part = parts + 1;
        self.conn.execute(
            "UPDATE runs SET parts = ?2, status = 'running', ended_at = NULL, error = NULL WHERE id = ?1",
            params![id, self.part],
        )?;
        Ok(())
    }

    pub fn run(&self, id: &str) -> Result<StoredRun, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT id, workflow, file, source, inputs, plan, options, status, created_at,
                        ended_at, parts, error, outputs, report FROM runs WHERE id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, String>(7)?,
                        r.get::<_, String>(8)?,
                        r.get::<_, Option<String>>(9)?,
                        r.get::<_, i64>(10)?,
                        r.get::<_, Option<String>>(11)?,
                        r.get::<_, Option<String>>(12)?,
                        r.get::<_, Option<String>>(13)?,
                    ))
                },
            )
            .optional()?
            .ok_or_else(|| StoreError::UnknownRun(id.to_string()))?;
        Ok(StoredRun {
            id: row.0,
            workflow: row.1,
            file: row.2,
            source: row.3,
            inputs: parse("inputs", &row.4)?,
            plan: parse("plan", &row.5)?,
            options: parse("options", &row.6)?,
            status: status(&row.7)?,
            created_at: row.8,
            ended_at: row.9,
            parts: row.10,
            error: row.11,
            outputs: row.12.map(|o| parse("outputs", &o)).transpose()?,
            report: row.13.map(|o| parse("report", &o)).transpose()?,
        })
    }

    /// The most recent runs first.
    pub fn list(&self, limit: usize) -> Result<Vec<RunSummary>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT r.id, r.workflow, r.status, r.created_at, r.ended_at,
                    (SELECT count(*) FROM steps s WHERE s.run_id = r.id AND s.ok = 1),
                    (SELECT coalesce(sum(json_extract(s.figures, '$.energy_j')), 0) FROM steps s WHERE s.run_id = r.id),
                    (SELECT coalesce(sum(json_extract(s.figures, '$.cost_usd')), 0) FROM steps s WHERE s.run_id = r.id)
             FROM runs r ORDER BY r.created_at DESC, r.rowid DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok((
                RunSummary {
                    id: r.get(0)?,
                    workflow: r.get(1)?,
                    status: RunStatus::Running,
                    created_at: r.get(3)?,
                    ended_at: r.get(4)?,
                    steps_done: r.get(5)?,
                    energy_j: r.get(6)?,
                    cost_usd: r.get(7)?,
                },
                r.get::<_, String>(2)?,
            ))
        })?;
        rows.map(|row| {
            let (mut summary, text) = row?;
            summary.status = status(&text)?;
            Ok(summary)
        })
        .collect()
    }

    /// What an interrupted run already finished.
    pub fn prior(&self, id: &str) -> Result<Prior, StoreError> {
        let mut prior = Prior::default();
        let mut stmt = self.conn.prepare(
            "SELECT step, output, model, device, figures, attempts FROM steps WHERE run_id = ?1 AND ok = 1",
        )?;
        for row in stmt.query_map([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, u32>(5)?,
            ))
        })? {
            let (step, output, model, device, figures, attempts) = row?;
            let figures = serde_json::from_str(&figures).map_err(|e| StoreError::Corrupt {
                what: "step figures".into(),
                message: e.to_string(),
            })?;
            prior.figures.insert(
                step.clone(),
                (ConfigRef { model, device }, figures, attempts),
            );
            prior.steps.insert(step, parse("step output", &output)?);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT step, idx, output FROM elements WHERE run_id = ?1")?;
        for row in stmt.query_map([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })? {
            let (step, i, output) = row?;
            prior
                .elements
                .insert((step, i as usize), parse("element output", &output)?);
        }
        // What unfinished steps already got: an agent's loop resumes from these.
        prior.calls = self
            .recorded(id)?
            .into_iter()
            .filter(|(site, (_, answer))| answer.is_ok() && !prior.steps.contains_key(&site.step))
            .collect();
        let mut spent = self.spent(id)?;
        spent.retain(|site, _| prior.calls.contains_key(site));
        prior.spent = spent;
        Ok(prior)
    }

    /// What every attempt of a run cost, by call site.
    pub fn spent(&self, id: &str) -> Result<HashMap<Site, Figures>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT step, idx, attempt, figures FROM attempts WHERE run_id = ?1")?;
        let mut out = HashMap::new();
        for row in stmt.query_map([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, String>(3)?,
            ))
        })? {
            let (step, i, attempt, figures) = row?;
            let site = Site {
                step,
                index: (i >= 0).then_some(i as usize),
                attempt,
            };
            let figures = serde_json::from_value(parse("figures", &figures)?).map_err(|e| {
                StoreError::Corrupt {
                    what: "figures".into(),
                    message: e.to_string(),
                }
            })?;
            out.insert(site, figures);
        }
        Ok(out)
    }

    /// Every attempt of a run, for a replay: what was sent, and what came back.
    pub fn recorded(&self, id: &str) -> Result<Recording, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT step, idx, attempt, call, answer, error, transient FROM attempts WHERE run_id = ?1",
        )?;
        let mut out = HashMap::new();
        for row in stmt.query_map([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, bool>(6)?,
            ))
        })? {
            let (step, i, attempt, call, answer, error, transient) = row?;
            let site = Site {
                step,
                index: (i >= 0).then_some(i as usize),
                attempt,
            };
            let result = match (answer, error) {
                // An answer that failed its `output` check replays as that answer, and fails
                // the same check again.
                (Some(a), _) => Ok(serde_json::from_value(parse("answer", &a)?).map_err(|e| {
                    StoreError::Corrupt {
                        what: "answer".into(),
                        message: e.to_string(),
                    }
                })?),
                (None, e) => Err(CallError {
                    message: e.unwrap_or_else(|| "failed".into()),
                    transient,
                }),
            };
            out.insert(site, (parse("call", &call)?, result));
        }
        Ok(out)
    }

    /// The events of a run in order.
    pub fn events(&self, id: &str) -> Result<Vec<serde_json::Value>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT body FROM events WHERE run_id = ?1 ORDER BY id")?;
        let rows = stmt.query_map([id], |r| r.get::<_, String>(0))?;
        rows.map(|b| parse("event", &b?)).collect()
    }

    /// A run's events after the one numbered `after` (0: from the first), with their numbers:
    /// the numbers only grow, so a follower that saw number N resumes with `after = N`.
    pub fn events_after(
        &self,
        id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, serde_json::Value)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, body FROM events WHERE run_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let rows = stmt.query_map(rusqlite::params![id, after, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        rows.map(|row| {
            let (n, body) = row?;
            Ok((n, parse("event", &body)?))
        })
        .collect()
    }

    /// A run's events as the audit chain sees them, and the chain's head.
    pub fn audit(&self, id: &str) -> Result<(Vec<crate::audit::Row>, Option<String>), StoreError> {
        let head: Option<String> = self
            .conn
            .query_row("SELECT audit_head FROM runs WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| StoreError::UnknownRun(id.to_string()))?;
        let mut stmt = self.conn.prepare(
            "SELECT id, part, kind, body, hash FROM events WHERE run_id = ?1 ORDER BY id",
        )?;
        let rows = stmt
            .query_map([id], |r| {
                Ok(crate::audit::Row {
                    id: r.get(0)?,
                    part: r.get(1)?,
                    kind: r.get(2)?,
                    body: r.get(3)?,
                    hash: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok((rows, head))
    }

    /// A second, read-only connection that answers `cache: true` steps from this store while
    /// the run writes through the first (WAL lets both proceed).
    pub fn cache(&self) -> Result<StoreCache, StoreError> {
        let conn =
            Connection::open_with_flags(&self.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(|e| StoreError::Open {
                    path: self.path.display().to_string(),
                    message: e.to_string(),
                })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(StoreCache(std::sync::Mutex::new(conn)))
    }

    /// Attaches the finished report to a run.
    pub fn set_report(&mut self, id: &str, report: &Report) -> Result<(), StoreError> {
        self.commit()?;
        self.conn.execute(
            "UPDATE runs SET report = ?2 WHERE id = ?1",
            params![id, json(report)],
        )?;
        Ok(())
    }

    /// Ends a run that is still marked running without its own end (its process died after
    /// it was cancelled); `false` when it had ended or was never created.
    pub fn end_if_running(
        &mut self,
        id: &str,
        status: RunStatus,
        error: &str,
    ) -> Result<bool, StoreError> {
        Ok(self.conn.execute(
            "UPDATE runs SET status = ?2, error = ?3,
             ended_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now')
             WHERE id = ?1 AND status = 'running'",
            params![id, status.as_str(), error],
        )? == 1)
    }

    fn begin(&mut self) -> Result<(), rusqlite::Error> {
        if !self.in_tx {
            // IMMEDIATE: the write lock is taken (waiting out `busy_timeout`) at the start, so a
            // transaction that reads first cannot fail to upgrade while other runs write.
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.in_tx = true;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), rusqlite::Error> {
        if self.in_tx {
            if let Some((run, hash)) = &self.head {
                self.conn
                    .prepare_cached("UPDATE runs SET audit_head = ?2 WHERE id = ?1")?
                    .execute(params![run, hash])?;
            }
            self.conn.execute_batch("COMMIT")?;
            self.in_tx = false;
        }
        Ok(())
    }

    fn write(&mut self, r: &Record) -> Result<(), rusqlite::Error> {
        if matches!(r.event, Event::Progress { .. }) {
            return Ok(());
        }
        self.begin()?;
        let body = json(r);
        let prev = match &self.head {
            Some((run, hash)) if *run == r.run_id => hash.clone(),
            // A resumed run continues the chain it left; a new one starts it.
            _ => self
                .conn
                .query_row(
                    "SELECT hash FROM events WHERE run_id = ?1 ORDER BY id DESC LIMIT 1",
                    [&r.run_id],
                    |row| row.get::<_, Option<String>>(0),
                )
                .optional()?
                .flatten()
                .unwrap_or_else(|| crate::audit::genesis(&r.run_id)),
        };
        let hash = crate::audit::link(&prev, self.part, r.event.kind(), &body);
        self.conn
            .prepare_cached(
                "INSERT INTO events (run_id, part, seq, at_s, kind, body, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![r.run_id, self.part, r.seq as i64, r.at_s, r.event.kind(), body, hash])?;
        // The run's head is written once per commit (see `commit`): events between commits
        // stand or fall together.
        self.head = Some((r.run_id.clone(), hash));
        match &r.event {
            Event::AttemptStarted {
                step,
                index,
                attempt,
                call,
                ..
            } => {
                self.calls
                    .insert((step.clone(), idx(*index), *attempt), json(call));
            }
            Event::AttemptEnded {
                step,
                index,
                attempt,
                config,
                ok,
                answer,
                error,
                transient,
                figures,
                ..
            } => {
                let call = self
                    .calls
                    .remove(&(step.clone(), idx(*index), *attempt))
                    .unwrap_or_else(|| "null".into());
                self.conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO attempts
                         (run_id, step, idx, attempt, model, device, ok, call, answer, error, transient, figures)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                    )?
                    .execute(params![
                        r.run_id,
                        step,
                        idx(*index),
                        attempt,
                        config.model,
                        config.device,
                        ok,
                        call,
                        answer.as_ref().map(json),
                        error,
                        transient,
                        json(figures)
                    ])?;
            }
            Event::ElementEnded {
                step,
                index,
                output,
                ..
            } => {
                self.conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO elements (run_id, step, idx, output) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![r.run_id, step, *index as i64, json(output)])?;
            }
            Event::StepEnded {
                step,
                ok,
                output,
                error,
                config,
                figures,
                attempts,
                started_s,
                ended_s,
                resumed: false,
            } => {
                self.conn
                        .prepare_cached(
                            "INSERT OR REPLACE INTO steps
                             (run_id, step, ok, output, model, device, figures, attempts, started_s, ended_s, error)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                        )?
                        .execute(params![
                            r.run_id,
                            step,
                            ok,
                            json(output),
                            config.model,
                            config.device,
                            json(figures),
                            attempts,
                            started_s,
                            ended_s,
                            error
                        ])?;
            }
            Event::RunEnded {
                status,
                outputs,
                error,
            } => {
                self.conn.execute(
                    "UPDATE runs SET status = ?2, outputs = ?3, error = ?4,
                     ended_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') WHERE id = ?1",
                    params![
                        r.run_id,
                        status.as_str(),
                        (*status == RunStatus::Succeeded).then(|| json(outputs)),
                        error
                    ],
                )?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Earlier successful answers, by the exact call that produced them.
pub struct StoreCache(std::sync::Mutex<Connection>);

impl Cache for StoreCache {
    fn lookup(&self, call: &serde_json::Value) -> Option<Answer> {
        let conn = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let answer: String = conn
            .query_row(
                "SELECT answer FROM attempts WHERE ok = 1 AND call = ?1 ORDER BY rowid DESC LIMIT 1",
                [json(call)],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "run store cache lookup failed; calling instead");
                None
            })??;
        let mut answer: Answer = serde_json::from_str(&answer).ok()?;
        // What the original call measured is not spent again.
        answer.load_s = 0.0;
        answer.cpu_s = None;
        Some(answer)
    }
}

impl Sink for Store {
    fn record(&mut self, record: &Record) -> Result<(), SinkError> {
        self.write(record).map_err(|e| SinkError {
            what: format!("run store {}", self.path.display()),
            message: e.to_string(),
        })
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.commit().map_err(|e| SinkError {
            what: format!("run store {}", self.path.display()),
            message: e.to_string(),
        })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.commit();
    }
}
