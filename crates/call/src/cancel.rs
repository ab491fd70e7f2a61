//! Cancelling a run: Ctrl-C, a failed step stopping its siblings, a timed-out attempt.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// A cancellation flag that tasks can both poll (inside blocking inference) and await.
/// A child is cancelled with its parent, not the other way round.
#[derive(Clone, Default)]
pub struct Cancel {
    own: Arc<Flag>,
    parent: Option<Arc<Flag>>,
}

#[derive(Default)]
struct Flag {
    set: AtomicBool,
    notify: Notify,
}

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn child(&self) -> Self {
        Self {
            own: Arc::new(Flag::default()),
            parent: Some(self.own.clone()),
        }
    }

    pub fn cancel(&self) {
        self.own.set.store(true, Ordering::SeqCst);
        self.own.notify.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.own.set.load(Ordering::SeqCst)
            || self
                .parent
                .as_ref()
                .is_some_and(|p| p.set.load(Ordering::SeqCst))
    }

    /// Resolves once cancelled.
    pub async fn cancelled(&self) {
        loop {
            let own = self.own.notify.notified();
            let parent = self.parent.as_ref().map(|p| p.notify.notified());
            if self.is_cancelled() {
                return;
            }
            match parent {
                Some(p) => {
                    tokio::select! {
                        _ = own => {}
                        _ = p => {}
                    }
                }
                None => own.await,
            }
        }
    }
}
