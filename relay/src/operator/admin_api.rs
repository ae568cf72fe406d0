//! The JSON admin API: workers, stats, draining a worker, API keys, the relays
//! sharing the database (usage per key is in `usage_api`).

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use modelrelay_core::WorkerId;
use modelrelay_core::wire::WireVersion;
use serde_json::json;
use tracing::{info, warn};

use crate::app::AppState;
use crate::codes;
use crate::error::{ApiError, ApiFlavor};
use crate::keys::{ApiKeyId, ApiKeyRecord, KeyStoreError, RelayRow, rfc3339};
use crate::relays::{Live, RelayState};

use super::MAX_ADMIN_BODY;
use super::session::Admin;

fn key_json(record: &ApiKeyRecord) -> serde_json::Value {
    json!({
        "id": record.id,
        "name": record.name,
        "prefix": record.prefix,
        "created_at": rfc3339(record.created_at),
        "last_used_at": record.last_used_at.map(rfc3339),
    })
}

fn wire_name(wire: WireVersion) -> &'static str {
    match wire {
        WireVersion::V1 => "v1",
        WireVersion::V2 => "v2",
    }
}

/// An error answer in the admin API's (OpenAI) error shape.
pub(super) fn admin_error(
    status: StatusCode,
    code: &'static str,
    message: impl Into<String>,
) -> Response {
    ApiError::new(status, code, message).into_response(ApiFlavor::OpenAi)
}

/// A 503 in the admin API's error shape.
fn unavailable(code: &'static str, message: &'static str) -> Response {
    admin_error(StatusCode::SERVICE_UNAVAILABLE, code, message)
}

/// The 503 once the hub has stopped, in the admin API's error shape.
fn hub_stopped() -> Response {
    ApiError::shutting_down().into_response(ApiFlavor::OpenAi)
}

/// A 503 for a key database that failed, logged.
pub(super) fn store_failed(error: &KeyStoreError) -> Response {
    warn!(%error, "the key store failed");
    unavailable(
        codes::KEY_STORE_UNAVAILABLE,
        "The API-key database is not available.",
    )
}

/// A 503 for a server without a key database.
pub(super) fn no_key_store() -> Response {
    unavailable(
        codes::KEY_STORE_UNAVAILABLE,
        "This server has no API-key database.",
    )
}

/// `GET /admin/workers`.
pub(crate) async fn workers(State(app): State<Arc<AppState>>, _admin: Admin) -> Response {
    let Some(workers) = app.hub.workers().await else {
        return hub_stopped();
    };
    let workers: Vec<_> = workers
        .iter()
        .map(|w| {
            json!({
                "id": w.id.get(),
                "name": w.name,
                "provider": w.provider,
                "models": w.models.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
                "in_flight": w.in_flight,
                "load": w.load,
                "capacity": w.capacity,
                "registered": w.registered,
                "draining": w.draining,
                "connected_since": rfc3339(w.connected_since),
                "connected_secs": w.connected_for.as_secs(),
                "transport": w.transport.name(),
                "protocol": wire_name(w.wire),
            })
        })
        .collect();
    axum::Json(json!({ "workers": workers })).into_response()
}

/// `GET /admin/stats`.
pub(crate) async fn stats(State(app): State<Arc<AppState>>, _admin: Admin) -> Response {
    let Some(snapshot) = app.hub.snapshot().await else {
        return hub_stopped();
    };
    let stats = &snapshot.stats;
    axum::Json(json!({
        "requests": {
            "completed": stats.completed,
            "failed": stats.failed,
            "cancelled": stats.cancelled,
        },
        "queue_depth": { app.config.provider.as_str(): snapshot.queue_depth },
        "in_flight": snapshot.open_requests,
        "workers": {
            "connected": snapshot.worker_states.active + snapshot.worker_states.draining + snapshot.worker_states.registering,
            "active": snapshot.worker_states.active,
            "draining": snapshot.worker_states.draining,
            "registering": snapshot.worker_states.registering,
        },
        "dispatched": stats.dispatched,
        "requeues": stats.requeues,
        "late_frames": stats.late_frames,
        "protocol_violations": stats.protocol_violations,
        "shutting_down": snapshot.shutting_down,
        "uptime_secs": app.started.elapsed().as_secs(),
    }))
    .into_response()
}

/// `GET /admin/history`: the last hour in 10-second buckets, oldest first.
pub(crate) async fn history(State(app): State<Arc<AppState>>, _admin: Admin) -> Response {
    axum::Json(json!({
        "bucket_secs": super::history::BUCKET.as_secs(),
        "buckets": app.metrics.history.view(),
    }))
    .into_response()
}

/// `GET /admin/relays`: the relays sharing this one's database, this one
/// with its numbers as they are now (the others' are up to 10 s old).
pub(crate) async fn relays(State(app): State<Arc<AppState>>, _admin: Admin) -> Response {
    let now = SystemTime::now();
    let this = app.relay.row(Live::of(&app.hub).await, now);
    let mut rows = match &app.config.keys {
        None => Vec::new(),
        Some(keys) => match keys.relays().await {
            Ok(rows) => rows,
            Err(error) => return store_failed(&error),
        },
    };
    match rows.iter_mut().find(|row| row.id == this.id) {
        Some(row) => *row = this,
        None => {
            // Not written yet (or the write failed): listed all the same, in its place.
            let at = rows
                .partition_point(|row| (&row.name, row.started_at) < (&this.name, this.started_at));
            rows.insert(at, this);
        }
    }
    let listed: Vec<_> = rows
        .iter()
        .map(|row| relay_json(row, row.id == app.relay.id, now))
        .collect();
    axum::Json(json!({ "relays": listed })).into_response()
}

fn relay_json(row: &RelayRow, this: bool, now: SystemTime) -> serde_json::Value {
    json!({
        "id": row.id,
        "name": row.name,
        "version": row.version,
        "started_at": rfc3339(row.started_at),
        "last_seen": rfc3339(row.last_seen),
        "state": RelayState::of(row, now).name(),
        "workers": row.workers,
        "open_requests": row.open_requests,
        "queue_depth": row.queue_depth,
        "this": this,
    })
}

/// `POST /admin/workers/{id}/drain`.
pub(crate) async fn drain_worker(
    State(app): State<Arc<AppState>>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return admin_error(
            StatusCode::BAD_REQUEST,
            codes::INVALID_WORKER_ID,
            "A worker id is a number, as GET /admin/workers lists it.",
        );
    };
    let worker = WorkerId::new(id);
    match app.hub.drain_worker(worker, app.config.drain_timeout).await {
        None => hub_stopped(),
        Some(false) => admin_error(
            StatusCode::NOT_FOUND,
            codes::WORKER_NOT_FOUND,
            format!("No worker with id {id} is connected."),
        ),
        Some(true) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({"id": id, "draining": true})),
        )
            .into_response(),
    }
}

/// `GET /admin/keys`.
pub(crate) async fn list_keys(State(app): State<Arc<AppState>>, _admin: Admin) -> Response {
    let Some(keys) = &app.config.keys else {
        return no_key_store();
    };
    match keys.list().await {
        Ok(list) => axum::Json(json!({"keys": list.iter().map(key_json).collect::<Vec<_>>()}))
            .into_response(),
        Err(error) => store_failed(&error),
    }
}

/// `POST /admin/keys` with `{"name": "…"}`: the key, shown this once.
pub(crate) async fn create_key(
    State(app): State<Arc<AppState>>,
    _admin: Admin,
    request: Request,
) -> Response {
    let Some(keys) = &app.config.keys else {
        return no_key_store();
    };
    #[derive(serde::Deserialize)]
    struct NewKey {
        name: String,
    }
    let body = match axum::body::to_bytes(request.into_body(), MAX_ADMIN_BODY).await {
        Ok(body) => body,
        Err(_) => {
            return admin_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::REQUEST_TOO_LARGE,
                format!("The body must be at most {MAX_ADMIN_BODY} bytes."),
            );
        }
    };
    let new: NewKey = match serde_json::from_slice(&body) {
        Ok(new) => new,
        Err(error) => {
            return admin_error(
                StatusCode::BAD_REQUEST,
                codes::INVALID_JSON,
                format!("Expected {{\"name\": \"…\"}}: {error}"),
            );
        }
    };
    match keys.create(&new.name, SystemTime::now()).await {
        Ok(created) => {
            info!(key = %created.record.id, name = %created.record.name, prefix = %created.record.prefix, "API key created");
            let mut body = key_json(&created.record);
            body["key"] = json!(created.key);
            (StatusCode::CREATED, axum::Json(body)).into_response()
        }
        Err(KeyStoreError::InvalidName) => admin_error(
            StatusCode::BAD_REQUEST,
            codes::INVALID_KEY_NAME,
            KeyStoreError::InvalidName.to_string(),
        ),
        Err(error) => store_failed(&error),
    }
}

/// `DELETE /admin/keys/{id}`: revokes at once.
pub(crate) async fn revoke_key(
    State(app): State<Arc<AppState>>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Response {
    let Some(keys) = &app.config.keys else {
        return no_key_store();
    };
    let Some(id) = ApiKeyId::parse(&id) else {
        return admin_error(
            StatusCode::BAD_REQUEST,
            codes::INVALID_KEY_ID,
            "A key id is a number, or the UUID of a key a ModelRelay server made, as GET /admin/keys lists it.",
        );
    };
    match keys.revoke(id).await {
        Ok(true) => {
            info!(key = %id, "API key revoked");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => admin_error(
            StatusCode::NOT_FOUND,
            codes::KEY_NOT_FOUND,
            format!("No API key with id {id}."),
        ),
        Err(error) => store_failed(&error),
    }
}
