//! One hub query at a time for the routes anyone may call at will (`/health`,
//! `/metrics`, `/v1/models`): callers that arrive while a query is in flight
//! share its answer, so a flood of calls costs the hub task one query per
//! round trip, not one per call.

use std::sync::Mutex;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

/// The query in flight, if any.
pub(super) struct Coalesced<T: Clone> {
    in_flight: Mutex<Option<Shared<BoxFuture<'static, Option<T>>>>>,
}

impl<T: Clone + Send + Sync + 'static> Coalesced<T> {
    /// Nothing in flight.
    pub(super) fn new() -> Self {
        Self {
            in_flight: Mutex::new(None),
        }
    }

    /// The answer of the query in flight, or of a new one that `start` begins.
    pub(super) async fn get(
        &self,
        start: impl FnOnce() -> BoxFuture<'static, Option<T>>,
    ) -> Option<T> {
        let query = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            match in_flight.as_ref() {
                Some(query) if query.peek().is_none() => query.clone(),
                _ => {
                    let query = start().shared();
                    *in_flight = Some(query.clone());
                    query
                }
            }
        };
        query.await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn callers_during_a_query_share_it_and_later_ones_start_another() {
        let coalesced = Arc::new(Coalesced::<usize>::new());
        let started = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = released.shared();
        let ask = |coalesced: Arc<Coalesced<usize>>| {
            let (started, released) = (Arc::clone(&started), released.clone());
            tokio::spawn(async move {
                coalesced
                    .get(|| {
                        let n = started.fetch_add(1, Ordering::SeqCst) + 1;
                        async move {
                            let _ = released.await;
                            Some(n)
                        }
                        .boxed()
                    })
                    .await
            })
        };
        let waiting: Vec<_> = (0..100).map(|_| ask(Arc::clone(&coalesced))).collect();
        // Let every caller reach the query (the scheduler runs a few dozen
        // tasks per turn), then let it answer.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        for answer in waiting {
            assert_eq!(answer.await.unwrap(), Some(1));
        }
        assert_eq!(
            started.load(Ordering::SeqCst),
            1,
            "one query for 100 callers"
        );
        assert_eq!(
            ask(coalesced).await.unwrap(),
            Some(2),
            "a later caller asks again"
        );
    }
}
