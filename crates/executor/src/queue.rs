//! The workflow service's durable state beside the runs, in the run store's own file:
//! registered workflows, each version kept by its content hash so that a run pins the text it
//! was submitted with, and submitted runs waiting for the worker. A submission is a row before
//! it is acknowledged, so a server killed after answering 202 still has it on restart; its id
//! is the id of the run it becomes.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::store::StoreError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS workflows (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    yaml TEXT NOT NULL,
    created_at TEXT NOT NULL,
    latest INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (tenant, name, version)
);
CREATE TABLE IF NOT EXISTS submissions (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    workflow TEXT NOT NULL,
    version TEXT NOT NULL,
    yaml TEXT NOT NULL,
    inputs TEXT NOT NULL,
    idempotency_key TEXT,
    state TEXT NOT NULL,
    error TEXT,
    created_at TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS submissions_idem
    ON submissions(tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS submissions_state ON submissions(state, created_at);
CREATE INDEX IF NOT EXISTS submissions_tenant ON submissions(tenant, created_at);
CREATE TABLE IF NOT EXISTS api_keys (
    hash TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tenant_spend (
    tenant TEXT NOT NULL,
    day TEXT NOT NULL,
    energy_j REAL NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, day)
);
";

/// A registered version of a workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    pub name: String,
    /// The sha256 of its text, first 16 hex digits.
    pub version: String,
    pub created_at: String,
    #[serde(skip)]
    pub yaml: String,
}

/// Where a submission is: waiting, taken by a worker (its run is in the store), refused
/// when the worker came to plan it, or cancelled before it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Started,
    Refused,
    Cancelled,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Started => "started",
            State::Refused => "refused",
            State::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "started" => State::Started,
            "refused" => State::Refused,
            "cancelled" => State::Cancelled,
            _ => State::Queued,
        }
    }
}

/// Which submissions a listing shows: one tenant's, optionally of one workflow and in one
/// state, newest first, from before a cursor (the last id of the previous page).
#[derive(Debug, Clone, Default)]
pub struct Filter<'a> {
    pub workflow: Option<&'a str>,
    pub state: Option<State>,
    pub before: Option<&'a str>,
    pub limit: usize,
}

/// The day (UTC, `YYYY-MM-DD`) a tenant's daily budgets count in.
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    civil(days)
}

/// A fresh submission id (its run's id), of the run store's form: the UTC time and a random
/// part (`20261206-214329-693c`); drawn without the database, under the queue's lock.
pub fn fresh_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let day = civil((secs / 86_400) as i64).replace('-', "");
    let t = secs % 86_400;
    let mix = (u64::from(now.subsec_nanos()) ^ (u64::from(std::process::id()) << 20))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!(
        "{day}-{:02}{:02}{:02}-{:04x}",
        t / 3600,
        t / 60 % 60,
        t % 60,
        (mix >> 48) as u16
    )
}

/// Days since 1970-01-01 as a calendar date (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The hash an API key is stored as: the key itself is shown once and never kept.
pub fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A submitted run.
#[derive(Debug, Clone, Serialize)]
pub struct Submission {
    pub id: String,
    pub tenant: String,
    pub workflow: String,
    pub version: String,
    #[serde(skip)]
    pub yaml: String,
    pub inputs: serde_json::Value,
    pub state: State,
    pub error: Option<String>,
    pub created_at: String,
}

/// What a submission asks for.
pub struct NewSubmission<'a> {
    pub tenant: &'a str,
    pub workflow: &'a str,
    pub version: &'a str,
    pub yaml: &'a str,
    pub inputs: &'a serde_json::Value,
    pub idempotency_key: Option<&'a str>,
}

pub struct Queue {
    conn: Connection,
}

/// The content hash a workflow version is named by.
pub fn version_of(yaml: &str) -> String {
    hex::encode(&Sha256::digest(yaml.as_bytes())[..8])
}

impl Queue {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // The store makes the file, its WAL mode and the runs' tables.
        drop(crate::store::Store::open(path)?);
        let conn = Connection::open(path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    /// Registers `yaml` as the latest version of `name` (the same text again is the same
    /// version, and becomes the latest again).
    pub fn put_workflow(
        &mut self,
        tenant: &str,
        name: &str,
        yaml: &str,
    ) -> Result<(Version, bool), StoreError> {
        let version = version_of(yaml);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let existed: bool = tx
            .prepare("SELECT 1 FROM workflows WHERE tenant = ?1 AND name = ?2 AND version = ?3")?
            .exists(params![tenant, name, version])?;
        tx.execute(
            "UPDATE workflows SET latest = 0 WHERE tenant = ?1 AND name = ?2",
            params![tenant, name],
        )?;
        if existed {
            tx.execute(
                "UPDATE workflows SET latest = 1 WHERE tenant = ?1 AND name = ?2 AND version = ?3",
                params![tenant, name, version],
            )?;
        } else {
            tx.execute(
                "INSERT INTO workflows (tenant, name, version, yaml, created_at, latest)
                 VALUES (?1, ?2, ?3, ?4, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'), 1)",
                params![tenant, name, version, yaml],
            )?;
        }
        tx.commit()?;
        let v = self
            .workflow(tenant, name)?
            .expect("the version just registered");
        Ok((v, !existed))
    }

    /// The latest version of a workflow.
    pub fn workflow(&self, tenant: &str, name: &str) -> Result<Option<Version>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT name, version, created_at, yaml FROM workflows
                 WHERE tenant = ?1 AND name = ?2 AND latest = 1",
                params![tenant, name],
                |r| {
                    Ok(Version {
                        name: r.get(0)?,
                        version: r.get(1)?,
                        created_at: r.get(2)?,
                        yaml: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Records a submission under a fresh id, or returns the one an earlier submission with
    /// the same idempotency key made (`false`: nothing new was queued).
    pub fn submit(
        &mut self,
        new: &NewSubmission,
        fresh_id: impl Fn() -> String,
    ) -> Result<(Submission, bool), StoreError> {
        if let Some(key) = new.idempotency_key
            && let Some(s) = self.submission_by_key(new.tenant, key)?
        {
            return Ok((s, false));
        }
        // Ids carry a 16-bit random part: on the rare clash, draw again.
        for _ in 0..16 {
            let id = fresh_id();
            let inserted = self.conn.execute(
                "INSERT OR IGNORE INTO submissions
                 (id, tenant, workflow, version, yaml, inputs, idempotency_key, state, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                params![
                    id,
                    new.tenant,
                    new.workflow,
                    new.version,
                    new.yaml,
                    new.inputs.to_string(),
                    new.idempotency_key
                ],
            )?;
            if inserted == 1 {
                return Ok((self.submission(&id)?.expect("the row just written"), true));
            }
        }
        Err(StoreError::Corrupt {
            what: "submission id".into(),
            message: "sixteen fresh ids were all taken".into(),
        })
    }

    pub fn submission(&self, id: &str) -> Result<Option<Submission>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, tenant, workflow, version, yaml, inputs, state, error, created_at
                 FROM submissions WHERE id = ?1",
                [id],
                |r| {
                    Ok(Submission {
                        id: r.get(0)?,
                        tenant: r.get(1)?,
                        workflow: r.get(2)?,
                        version: r.get(3)?,
                        yaml: r.get(4)?,
                        inputs: serde_json::from_str(&r.get::<_, String>(5)?)
                            .unwrap_or(serde_json::Value::Null),
                        state: State::parse(&r.get::<_, String>(6)?),
                        error: r.get(7)?,
                        created_at: r.get(8)?,
                    })
                },
            )
            .optional()?)
    }

    /// A page of one tenant's submissions, newest first.
    pub fn list(&self, tenant: &str, f: &Filter) -> Result<Vec<Submission>, StoreError> {
        let before = match f.before {
            Some(id) => self
                .conn
                .query_row(
                    "SELECT created_at FROM submissions WHERE id = ?1 AND tenant = ?2",
                    params![id, tenant],
                    |r| r.get::<_, String>(0),
                )
                .optional()?
                .map(|at| (at, id.to_string())),
            None => None,
        };
        let mut stmt = self.conn.prepare(
            "SELECT id FROM submissions WHERE tenant = ?1
               AND (?2 IS NULL OR workflow = ?2)
               AND (?3 IS NULL OR state = ?3)
               AND (?4 IS NULL OR created_at < ?4 OR (created_at = ?4 AND id < ?5))
             ORDER BY created_at DESC, id DESC LIMIT ?6",
        )?;
        let (at, id) = before.unzip();
        let ids = stmt
            .query_map(
                params![
                    tenant,
                    f.workflow,
                    f.state.map(State::as_str),
                    at,
                    id,
                    f.limit as i64
                ],
                |r| r.get::<_, String>(0),
            )?
            .collect::<Result<Vec<_>, _>>()?;
        ids.iter()
            .filter_map(|id| self.submission(id).transpose())
            .collect()
    }

    /// The submission a tenant made with an idempotency key.
    pub fn submission_by_key(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<Submission>, StoreError> {
        let id = self
            .conn
            .query_row(
                "SELECT id FROM submissions WHERE tenant = ?1 AND idempotency_key = ?2",
                params![tenant, key],
                |r| r.get::<_, String>(0),
            )
            .optional()?;
        match id {
            Some(id) => self.submission(&id),
            None => Ok(None),
        }
    }

    /// How many submissions each tenant has waiting.
    pub fn queued_by_tenant(&self) -> Result<HashMap<String, usize>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT tenant, COUNT(*) FROM submissions WHERE state = 'queued' GROUP BY tenant",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize))
            })?
            .collect::<Result<HashMap<_, _>, _>>()?;
        Ok(rows)
    }

    /// Each tenant's oldest waiting submission: the candidates a fair scheduler picks from.
    pub fn heads(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT tenant, id FROM submissions s WHERE state = 'queued' AND id = (
                 SELECT id FROM submissions t WHERE t.tenant = s.tenant AND t.state = 'queued'
                 ORDER BY created_at, id LIMIT 1)
             ORDER BY created_at, id",
        )?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Moves a queued submission to `state`; `false` when it was no longer queued (a worker
    /// took it first, or it was cancelled).
    pub fn take(&self, id: &str, state: State) -> Result<bool, StoreError> {
        Ok(self.conn.execute(
            "UPDATE submissions SET state = ?2 WHERE id = ?1 AND state = 'queued'",
            params![id, state.as_str()],
        )? == 1)
    }

    /// Keeps a new API key's hash for `tenant`.
    pub fn add_key(&self, tenant: &str, key: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO api_keys (hash, tenant, created_at)
             VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))",
            params![key_hash(key), tenant],
        )?;
        Ok(())
    }

    /// The tenant a key belongs to.
    pub fn tenant_of_key(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT tenant FROM api_keys WHERE hash = ?1",
                [key_hash(key)],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// What a tenant has spent on `day` (energy in J, cost in USD).
    pub fn spent(&self, tenant: &str, day: &str) -> Result<(f64, f64), StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT energy_j, cost_usd FROM tenant_spend WHERE tenant = ?1 AND day = ?2",
                params![tenant, day],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .unwrap_or((0.0, 0.0)))
    }

    /// Adds a call's measured figures to what a tenant has spent on `day`.
    pub fn add_spend(
        &self,
        tenant: &str,
        day: &str,
        energy_j: f64,
        cost_usd: f64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO tenant_spend (tenant, day, energy_j, cost_usd) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (tenant, day) DO UPDATE
             SET energy_j = energy_j + ?3, cost_usd = cost_usd + ?4",
            params![tenant, day, energy_j, cost_usd],
        )?;
        Ok(())
    }

    /// The submissions in `state`, oldest first.
    pub fn in_state(&self, state: State) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM submissions WHERE state = ?1 ORDER BY created_at, id")?;
        let ids = stmt
            .query_map([state.as_str()], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }

    /// Moves a submission on; `error` says why it was refused.
    pub fn set_state(&self, id: &str, state: State, error: Option<&str>) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE submissions SET state = ?2, error = ?3 WHERE id = ?1",
            params![id, state.as_str(), error],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_content_hashes_and_a_key_makes_a_submission_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(&dir.path().join("runs.db")).unwrap();
        let (one, new) = q.put_workflow("t", "w", "name: w\n").unwrap();
        assert!(new && one.version == version_of("name: w\n"));
        let (two, _) = q.put_workflow("t", "w", "name: w # 2\n").unwrap();
        assert_ne!(one.version, two.version);
        assert_eq!(q.workflow("t", "w").unwrap().unwrap().version, two.version);
        let (again, new) = q.put_workflow("t", "w", "name: w\n").unwrap();
        assert!(!new && again.version == one.version);
        assert!(q.workflow("other", "w").unwrap().is_none(), "tenants apart");

        let inputs = serde_json::json!({"a": 1});
        let sub = |key| NewSubmission {
            tenant: "t",
            workflow: "w",
            version: &one.version,
            yaml: "name: w\n",
            inputs: &inputs,
            idempotency_key: key,
        };
        let n = std::cell::Cell::new(0);
        let ids = || {
            n.set(n.get() + 1);
            // The second draw clashes with the first id; the third is new.
            ["id-1", "id-1", "id-2"][(n.get() - 1).min(2)].to_string()
        };
        let (a, new_a) = q.submit(&sub(Some("k")), ids).unwrap();
        let (b, new_b) = q.submit(&sub(Some("k")), ids).unwrap();
        assert!(new_a && !new_b && a.id == b.id);
        let (c, _) = q.submit(&sub(None), ids).unwrap();
        assert_eq!((a.id.as_str(), c.id.as_str()), ("id-1", "id-2"));
        assert_eq!(
            q.in_state(State::Queued).unwrap(),
            [a.id.clone(), c.id.clone()]
        );
        q.set_state(&a.id, State::Started, None).unwrap();
        assert_eq!(q.in_state(State::Queued).unwrap(), [c.id]);
        assert_eq!(q.submission(&a.id).unwrap().unwrap().inputs, inputs);
        assert!(
            !q.take(&a.id, State::Cancelled).unwrap(),
            "a started one stays"
        );
    }

    #[test]
    fn listing_pages_newest_first_and_heads_are_each_tenants_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(&dir.path().join("runs.db")).unwrap();
        let inputs = serde_json::json!({});
        let n = std::cell::Cell::new(0);
        for (tenant, workflow) in [("a", "w"), ("a", "v"), ("b", "w"), ("a", "w")] {
            let new = NewSubmission {
                tenant,
                workflow,
                version: "0",
                yaml: "",
                inputs: &inputs,
                idempotency_key: None,
            };
            q.submit(&new, || {
                n.set(n.get() + 1);
                format!("id-{}", n.get())
            })
            .unwrap();
        }
        let page = |f: &Filter| {
            q.list("a", f)
                .unwrap()
                .into_iter()
                .map(|s| s.id)
                .collect::<Vec<_>>()
        };
        let first = page(&Filter {
            limit: 2,
            ..Filter::default()
        });
        assert_eq!(first, ["id-4", "id-2"]);
        let next = page(&Filter {
            limit: 2,
            before: Some("id-2"),
            ..Filter::default()
        });
        assert_eq!(next, ["id-1"]);
        let w = page(&Filter {
            limit: 9,
            workflow: Some("w"),
            ..Filter::default()
        });
        assert_eq!(w, ["id-4", "id-1"]);
        assert_eq!(
            q.heads().unwrap(),
            [
                ("a".to_string(), "id-1".to_string()),
                ("b".into(), "id-3".into())
            ]
        );
        assert!(q.take("id-1", State::Cancelled).unwrap());
        assert_eq!(q.heads().unwrap()[0], ("a".into(), "id-2".into()));
        assert_eq!(q.queued_by_tenant().unwrap()["a"], 2);
        let c = page(&Filter {
            limit: 9,
            state: Some(State::Cancelled),
            ..Filter::default()
        });
        assert_eq!(c, ["id-1"]);
    }

    #[test]
    fn keys_are_kept_hashed_and_spend_adds_up_per_day() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("runs.db")).unwrap();
        q.add_key("t", "jk-secret").unwrap();
        assert_eq!(q.tenant_of_key("jk-secret").unwrap().as_deref(), Some("t"));
        assert_eq!(q.tenant_of_key("jk-other").unwrap(), None);
        let kept: String = q
            .conn
            .query_row("SELECT hash FROM api_keys", [], |r| r.get(0))
            .unwrap();
        assert!(!kept.contains("secret") && kept == key_hash("jk-secret"));
        q.add_spend("t", "2026-12-06", 2.5, 0.1).unwrap();
        q.add_spend("t", "2026-12-06", 1.0, 0.0).unwrap();
        assert_eq!(q.spent("t", "2026-12-06").unwrap(), (3.5, 0.1));
        assert_eq!(q.spent("t", "2026-12-07").unwrap(), (0.0, 0.0));
    }

    #[test]
    fn days_are_calendar_dates() {
        assert_eq!(civil(0), "1970-01-01");
        assert_eq!(civil(20_793), "2026-12-06");
        assert_eq!(civil(11_016), "2000-02-29");
        let id = fresh_id();
        assert_eq!((id.len(), &id[8..9], &id[15..16]), (20, "-", "-"), "{id}");
    }
}
