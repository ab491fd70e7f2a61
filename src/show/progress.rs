//! Progress on stderr for long work, drawn only when stderr is a terminal so logs and tests
//! stay clean: one bar builder for every command, and the watchers the libraries report to.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use joule_lab::bench::driver::Watch;
use joule_models::store::Progress;

/// A bar with `template` (indicatif's), hidden unless stderr is a terminal.
pub fn bar(template: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::hidden();
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(ProgressDrawTarget::stderr());
    }
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_length(total);
    bar
}

/// Prints a line above the bar when it is drawn, on stderr otherwise.
pub fn line(bar: &ProgressBar, text: &str) {
    let text = joule_planner::text::escape_controls(text);
    if bar.is_hidden() {
        eprintln!("{text}");
    } else {
        bar.println(text);
    }
}

/// Bytes downloaded or hashed.
pub struct Bytes(ProgressBar);

impl Bytes {
    pub fn new() -> Self {
        Self(bar(
            "{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            0,
        ))
    }
}

impl Progress for Bytes {
    fn start(&self, label: &str, total: u64) {
        self.0.reset();
        self.0.set_length(total);
        self.0.set_message(label.to_string());
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// Items of a long job (eval items, benchmark requests), with an ETA.
pub fn items(total: u64) -> ProgressBar {
    bar(
        "{msg:40} [{bar:30}] {pos}/{len} elapsed {elapsed} eta {eta}",
        total,
    )
}

/// A benchmark's watcher: a line per finished request, the bar below.
pub struct Requests(pub ProgressBar);

impl Watch for Requests {
    fn line(&mut self, text: &str) {
        line(&self.0, text);
    }
    fn progress(&mut self, done: u64, total: u64, label: &str) {
        self.0.set_length(total);
        self.0.set_position(done);
        self.0.set_message(label.to_string());
        if done == total {
            self.0.finish_and_clear();
        }
    }
}
