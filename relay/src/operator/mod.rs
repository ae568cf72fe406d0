//! What operators use: login and sessions, the JSON admin API, the HTML pages, and `/metrics`.

mod admin_api;
mod exposition;
mod history;
mod login;
mod metrics;
mod pages;
mod pinned;
mod session;
mod usage_api;

use std::sync::Arc;

use axum::Router;
use axum::routing::{delete, get, post};

use crate::app::AppState;

pub(crate) use history::sample_every_bucket;
pub(crate) use metrics::{Metrics, WorkerStates, outcome_label};
pub use session::CSRF_HEADER;
pub(crate) use session::SessionKey;

/// Largest admin request body (a key name, a login form).
const MAX_ADMIN_BODY: usize = 16 * 1024;

/// The operator's routes: `/metrics`, `/admin/*` (with requests pinned to one
/// worker), `/dashboard*` and `/setup`.
pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/metrics", get(metrics::scrape))
        .route("/admin/workers", get(admin_api::workers))
        .route("/admin/workers/{id}/drain", post(admin_api::drain_worker))
        .route("/admin/stats", get(admin_api::stats))
        .route("/admin/history", get(admin_api::history))
        .route("/admin/relays", get(admin_api::relays))
        .route(
            "/admin/keys",
            get(admin_api::list_keys).post(admin_api::create_key),
        )
        .route("/admin/keys/{id}", delete(admin_api::revoke_key))
        .route("/admin/usage", get(usage_api::usage))
        .route("/dashboard", get(pages::dashboard))
        .route(
            "/dashboard/login",
            get(login::login_page).post(login::login),
        )
        .route("/dashboard/logout", post(login::logout))
        .route("/setup", get(pages::setup))
        .merge(pinned::routes())
}
