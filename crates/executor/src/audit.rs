//! The audit log: every event of a run, as the store keeps it, chained by hash so that a
//! changed, removed or reordered row is detectable. Each event's hash covers the previous
//! event's hash, the run part it belongs to, its kind and its exact stored body; the run row
//! keeps the head of the chain, so cutting events off the end is detectable too.
//!
//! What the chain proves is consistency: someone able to rewrite the whole store can rewrite
//! the chain with it. `joule audit RUN` prints the head, which an operator can keep elsewhere
//! (a ticket, a log shipper) to anchor it.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The hash a run's chain starts from.
pub fn genesis(run_id: &str) -> String {
    hex::encode(Sha256::digest(
        format!("joule audit v1 {run_id}").as_bytes(),
    ))
}

/// The hash of one event, chained to the previous one.
pub fn link(prev: &str, part: i64, kind: &str, body: &str) -> String {
    let mut h = Sha256::new();
    for field in [
        prev.as_bytes(),
        part.to_string().as_bytes(),
        kind.as_bytes(),
        body.as_bytes(),
    ] {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field);
    }
    hex::encode(h.finalize())
}

/// One stored event row, as the chain sees it.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: i64,
    pub part: i64,
    pub kind: String,
    pub body: String,
    pub hash: Option<String>,
}

/// Why a run's audit chain does not verify.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
pub enum Broken {
    #[error("event {seq} ({kind}) was recorded before joule kept an audit chain")]
    Unchained { seq: i64, kind: String },
    #[error(
        "event {seq} ({kind}) does not match its hash: it, or an event before it, was changed or removed"
    )]
    Mismatch { seq: i64, kind: String },
    #[error(
        "the chain ends at event {seq}, not where the run's head says: events were removed from the end"
    )]
    Head { seq: i64 },
}

/// Checks every row against the chain and the run's head; returns the number of events.
pub fn verify(run_id: &str, rows: &[Row], head: Option<&str>) -> Result<usize, Broken> {
    let mut prev = genesis(run_id);
    let mut last = 0;
    for r in rows {
        let seq = serde_json::from_str::<Value>(&r.body)
            .ok()
            .and_then(|v| v["seq"].as_i64())
            .unwrap_or(r.id);
        last = seq;
        let Some(stored) = &r.hash else {
            return Err(Broken::Unchained {
                seq,
                kind: r.kind.clone(),
            });
        };
        let expected = link(&prev, r.part, &r.kind, &r.body);
        if *stored != expected {
            return Err(Broken::Mismatch {
                seq,
                kind: r.kind.clone(),
            });
        }
        prev = expected;
    }
    if head.is_some_and(|h| h != prev) || (head.is_none() && !rows.is_empty()) {
        return Err(Broken::Head { seq: last });
    }
    Ok(rows.len())
}

/// A line of `joule audit`: what happened, with hashes in place of prompts and answers.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub seq: i64,
    pub at_s: f64,
    pub kind: String,
    pub detail: Value,
    pub hash: Option<String>,
}

fn digest(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

/// Summarises an event for the audit: model calls by config, tokens and the hash of prompt and
/// answer (the texts stay in the store, out of the audit's reader's view); tool calls by tool,
/// arguments, outcome and sandbox layers; plan changes and fallbacks as they were.
pub fn entry(row: &Row) -> Entry {
    let v: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
    let at = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    let detail = match row.kind.as_str() {
        "attempt_started" => {
            let call = at("call");
            let mut d = serde_json::json!({ "step": at("step"), "index": at("index"), "attempt": at("attempt") });
            if call["kind"] == "llm" {
                d["model"] = call["model"].clone();
                d["device"] = call["device"].clone();
                d["prompt_sha256"] = digest(&format!(
                    "{}\u{1f}{}",
                    call["system"].as_str().unwrap_or(""),
                    call["prompt"].as_str().unwrap_or("")
                ))
                .into();
            } else if call["kind"] == "tool" {
                d["tool"] = call["tool"].clone();
                d["args"] = call["args"].clone();
            }
            d
        }
        "attempt_ended" => {
            let answer = at("answer");
            let mut d = serde_json::json!({
                "step": at("step"), "index": at("index"), "attempt": at("attempt"),
                "config": at("config"), "ok": at("ok"), "error": at("error"),
            });
            if answer.is_object() {
                d["tokens_in"] = answer["tokens_in"].clone();
                d["tokens_out"] = answer["tokens_out"].clone();
                d["output_sha256"] = digest(answer["text"].as_str().unwrap_or("")).into();
                for k in ["sandbox", "command", "exit_code"] {
                    if let Some(x) = answer.get(k) {
                        d[k] = x.clone();
                    }
                }
            }
            d
        }
        "run_started" => {
            serde_json::json!({
                "workflow": v["plan"]["workflow"], "method": v["plan"]["method"], "policy": v["policy"],
            })
        }
        _ => {
            let mut d = v.clone();
            if let Some(o) = d.as_object_mut() {
                for k in ["run_id", "seq", "at_s", "event", "output", "outputs"] {
                    o.remove(k);
                }
            }
            d
        }
    };
    Entry {
        seq: v["seq"].as_i64().unwrap_or(row.id),
        at_s: v["at_s"].as_f64().unwrap_or(0.0),
        kind: row.kind.clone(),
        detail,
        hash: row.hash.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(run: &str, bodies: &[&str]) -> (Vec<Row>, String) {
        let mut prev = genesis(run);
        let rows = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| {
                prev = link(&prev, 1, "k", b);
                Row {
                    id: i as i64 + 1,
                    part: 1,
                    kind: "k".into(),
                    body: b.to_string(),
                    hash: Some(prev.clone()),
                }
            })
            .collect();
        (rows, prev)
    }

    #[test]
    fn a_changed_removed_or_cut_event_breaks_the_chain() {
        let bodies = [r#"{"seq":1}"#, r#"{"seq":2}"#, r#"{"seq":3}"#];
        let (rows, head) = chain("r", &bodies);
        assert_eq!(verify("r", &rows, Some(&head)), Ok(3));
        // The same events under another run id do not verify.
        assert!(verify("other", &rows, Some(&head)).is_err());

        let mut changed = rows.clone();
        changed[1].body = r#"{"seq":2,"x":1}"#.into();
        assert!(matches!(
            verify("r", &changed, Some(&head)),
            Err(Broken::Mismatch { seq: 2, .. })
        ));

        let mut removed = rows.clone();
        removed.remove(1);
        assert!(matches!(
            verify("r", &removed, Some(&head)),
            Err(Broken::Mismatch { seq: 3, .. })
        ));

        let cut = &rows[..2];
        assert_eq!(verify("r", cut, Some(&head)), Err(Broken::Head { seq: 2 }));
    }

    #[test]
    fn a_model_call_is_audited_by_hash_not_text() {
        let row = Row {
            id: 1,
            part: 1,
            kind: "attempt_started".into(),
            body: r#"{"seq":4,"at_s":1.0,"step":"s","index":null,"attempt":1,"call":{"kind":"llm","model":"m","device":"cpu","system":null,"prompt":"my secret prompt"}}"#.into(),
            hash: None,
        };
        let e = entry(&row);
        assert_eq!(e.seq, 4);
        assert_eq!(e.detail["model"], "m");
        assert!(!serde_json::to_string(&e).unwrap().contains("secret"));
        assert_eq!(e.detail["prompt_sha256"].as_str().unwrap().len(), 16);
    }
}
