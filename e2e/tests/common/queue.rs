//! A relay whose only worker slot is busy and whose queue holds one request.

use std::time::Duration;

use modelrelay_relay::RunningServer;
use modelrelay_testkit::{Backend, Http, Reply};
use tokio::task::JoinHandle;

/// Sends `body` to `url` twice: the first runs on the worker's one slot (seen
/// by `backend`), the second waits in the queue (seen in `/health`). Returns
/// both answers to come, running first.
pub async fn run_one_and_queue_one(
    http: &Http,
    relay: &RunningServer,
    backend: &Backend,
    url: &str,
    body: &str,
) -> (JoinHandle<Reply>, JoinHandle<Reply>) {
    let send = || {
        let (http, url, body) = (http.clone(), url.to_owned(), body.to_owned());
        tokio::spawn(async move { http.post(&url, &body).await })
    };
    let running = send();
    assert!(
        backend
            .sim
            .wait_for(Duration::from_secs(5), |e| !e.is_empty())
            .await
    );
    let waiting = send();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while http.get(&format!("{}/health", relay.url())).await.json()["queue_depth"] != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second request never queued"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (running, waiting)
}
