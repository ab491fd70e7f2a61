//! The workflow service's durable state beside the runs, in the run store's own file:
//! registered workflows, each version kept by its content hash so that a run pins the text it
//! was submitted with, and submitted runs waiting for the worker. A submission is a row before
//! it is acknowledged, so a server killed after answering 202 still has it on restart; its id
//! is the id of the run it becomes.

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

/// Where a submission is: waiting, taken by a worker (its run is in the store), or refused
/// when the worker came to plan it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Started,
    Refused,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Started => "started",
            State::Refused => "refused",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "started" => State::Started,
            "refused" => State::Refused,
            _ => State::Queued,
        }
    }
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
        let tx = self.conn.transaction()?;
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
            && let Some(id) = self
                .conn
                .query_row(
                    "SELECT id FROM submissions WHERE tenant = ?1 AND idempotency_key = ?2",
                    params![new.tenant, key],
                    |r| r.get::<_, String>(0),
                )
                .optional()?
        {
            return Ok((self.submission(&id)?.expect("the row just read"), false));
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
    }
}
