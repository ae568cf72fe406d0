//! A background task that writes to the key database and, when the relay
//! stops, gets one last bounded chance to write.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How long a last write at exit may take.
const EXIT_WRITE_WAIT: Duration = Duration::from_secs(5);

/// The running task, told to finish through its `done` token.
pub(crate) struct ExitWriter {
    done: CancellationToken,
    task: JoinHandle<()>,
}

impl ExitWriter {
    /// Spawns `run`, which does its last write and returns once its token is cancelled.
    pub(crate) fn spawn<F>(run: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let done = CancellationToken::new();
        let task = tokio::spawn(run(done.clone()));
        Self { done, task }
    }

    /// Tells the task to finish and waits at most [`EXIT_WRITE_WAIT`]; past
    /// that, logs `lost` (what the late write costs) and leaves it.
    pub(crate) async fn finish(self, lost: &'static str) {
        self.done.cancel();
        if tokio::time::timeout(EXIT_WRITE_WAIT, self.task)
            .await
            .is_err()
        {
            warn!(lost, "a last database write did not end in time at exit");
        }
    }
}
