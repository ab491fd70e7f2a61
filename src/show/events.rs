//! The live display of a run on stderr: a spinner per running call on a terminal, a line per
//! finished step (and per retry, fallback, refusal and re-plan) otherwise.

use std::io::IsTerminal;

use joule_executor::runtime::{Event, Record, Sink, SinkError};

/// The display itself: a sink of the run's events.
pub struct Display {
    enabled: bool,
    multi: Option<indicatif::MultiProgress>,
    bars: std::collections::HashMap<(String, Option<usize>), indicatif::ProgressBar>,
}

impl Display {
    pub fn new(enabled: bool) -> Self {
        let multi =
            (enabled && std::io::stderr().is_terminal()).then(indicatif::MultiProgress::new);
        Self {
            enabled,
            multi,
            bars: Default::default(),
        }
    }

    pub fn finish(&mut self) {
        for (_, bar) in self.bars.drain() {
            bar.finish_and_clear();
        }
    }

    fn line(&self, text: String) {
        let text = joule_planner::text::escape_controls(&text).into_owned();
        match &self.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }
}

impl Sink for Display {
    fn record(&mut self, r: &Record) -> Result<(), SinkError> {
        if !self.enabled {
            return Ok(());
        }
        match &r.event {
            Event::AttemptStarted {
                step,
                index,
                attempt,
                config,
                ..
            } => {
                if let Some(m) = &self.multi {
                    let bar = m.add(indicatif::ProgressBar::new_spinner());
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{spinner} {msg} {elapsed} {prefix}",
                        )
                        .expect("a valid template"),
                    );
                    bar.enable_steady_tick(std::time::Duration::from_millis(120));
                    bar.set_message(format!(
                        "{step}{} on {}{}{}",
                        index.map(|i| format!("[{i}]")).unwrap_or_default(),
                        config
                            .model
                            .as_deref()
                            .map(|m| format!("{m}@"))
                            .unwrap_or_default(),
                        config.device,
                        if *attempt > 1 {
                            format!(" (attempt {attempt})")
                        } else {
                            String::new()
                        }
                    ));
                    if let Some(old) = self.bars.insert((step.clone(), *index), bar) {
                        old.finish_and_clear();
                    }
                }
            }
            Event::Progress {
                step,
                index,
                tokens,
            } => {
                if let Some(bar) = self.bars.get(&(step.clone(), *index)) {
                    bar.set_prefix(format!("{tokens} tokens"));
                }
            }
            Event::AttemptEnded {
                step,
                index,
                attempt,
                ok,
                error,
                cached,
                ..
            } => {
                if let Some(bar) = self.bars.remove(&(step.clone(), *index)) {
                    bar.finish_and_clear();
                }
                if *cached {
                    self.line(format!(
                        "  {step}{}: answered from an earlier identical call (cache: true)",
                        index.map(|i| format!("[{i}]")).unwrap_or_default()
                    ));
                }
                if !ok {
                    self.line(format!(
                        "  {step}{} attempt {attempt} failed: {}",
                        index.map(|i| format!("[{i}]")).unwrap_or_default(),
                        error.as_deref().unwrap_or("?")
                    ));
                }
            }
            Event::PolicyRefused {
                step,
                config,
                reason,
                ..
            } => self.line(format!("  {step}: refused {config}: {reason}")),
            Event::AgentToolCall {
                step,
                index,
                turn,
                tool,
                arguments,
                error,
                refused,
                ..
            } => {
                let outcome = match (refused, error) {
                    (Some(why), _) => format!("refused: {why}"),
                    (None, Some(e)) => format!("failed: {e}"),
                    (None, None) => "done".into(),
                };
                self.line(format!(
                    "  {step}{} turn {turn}: {tool} {arguments} {outcome}",
                    index.map(|i| format!("[{i}]")).unwrap_or_default()
                ));
            }
            Event::Fallback {
                step, to, reason, ..
            } => self.line(format!("  {step}: falling back to {to} ({reason})")),
            Event::Replanned { note, changes, .. } => {
                self.line(format!("  re-planned: {note}"));
                for (s, from, to) in changes {
                    self.line(format!("    {s}: {from} -> {to}"));
                }
            }
            Event::StepSkipped { step, reason } => {
                self.line(format!("  - {step} skipped: {reason}"))
            }
            Event::StepEnded {
                step,
                ok: true,
                figures,
                resumed,
                ..
            } => self.line(format!(
                "  ✓ {step} {}",
                if *resumed {
                    "(finished in an earlier run)".to_string()
                } else {
                    format!("{:.2} s", figures.latency_s)
                }
            )),
            Event::StepEnded {
                step,
                error,
                ok: false,
                ..
            } => self.line(format!(
                "  ✗ {step}: {}",
                error.as_deref().unwrap_or("failed")
            )),
            _ => {}
        }
        Ok(())
    }
}
