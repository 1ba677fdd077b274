//! Stopping a run from outside it. The library never installs signal
//! handlers or exits the process: the CLI turns Ctrl-C and SIGTERM into
//! [`Cancel::cancel`], and an embedding program (a scheduler, the Python
//! bindings) does the same from its own events.

use std::sync::Arc;

use tokio::sync::watch;

/// A handle that stops a run cleanly: no chunk starts after it is
/// cancelled, and the chunks in flight roll back or finish committing; the
/// run then returns with `interrupted` set, and the next run resumes.
/// Clones share one flag.
#[derive(Debug, Clone)]
pub struct Cancel(Arc<watch::Sender<bool>>);

impl Default for Cancel {
    fn default() -> Cancel {
        Cancel(Arc::new(watch::channel(false).0))
    }
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    pub fn cancel(&self) {
        self.0.send_replace(true);
    }

    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }

    /// What the run's tasks wait on.
    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_clone_cancels_what_the_original_watches() {
        let cancel = Cancel::new();
        let mut rx = cancel.subscribe();
        assert!(!cancel.is_cancelled());
        let other = cancel.clone();
        let waiter = tokio::spawn(async move { rx.wait_for(|c| *c).await.is_ok() });
        other.cancel();
        assert!(waiter.await.expect("join"));
        assert!(cancel.is_cancelled());
    }
}
