//! `/v1/nodestatus` (CPU, memory, disk, uptime of this node) and `/health`.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use sysinfo::{Disks, System};

use super::error::ApiError;
use super::ApiState;
use crate::store::QuarantinedRecord;

#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub node_name: String,
    pub version: &'static str,
    /// Busy share of all cores since the previous request, 0–100.
    pub cpu_percent: f32,
    pub cpu_count: usize,
    pub load_average: [f64; 3],
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    /// Of the file system holding the agent's data directory.
    pub disk_total_bytes: u64,
    pub disk_available_bytes: u64,
    pub uptime_secs: u64,
    pub engine: String,
    pub engine_version: Option<String>,
    /// Lifecycle phase of this node, why it is there and since when.
    pub phase: crate::lifecycle::NodePhase,
    pub phase_reason: Option<String>,
    pub phase_since: chrono::DateTime<chrono::Utc>,
    /// Stored records that could not be decoded and were set aside, so that the
    /// orchestrator goes on with the others.
    pub quarantined_count: usize,
    pub quarantined_records: Vec<QuarantinedRecord>,
}

pub async fn node_status(State(state): State<ApiState>) -> Result<Json<NodeStatus>, ApiError> {
    let (cpu_percent, cpu_count, memory_total_bytes, memory_used_bytes) = {
        let mut guard = state
            .system
            .lock()
            .map_err(|_| ApiError::internal("system statistics unavailable"))?;
        let Some(system) = guard.as_mut() else {
            return Err(ApiError::internal(
                "system statistics unavailable on this platform",
            ));
        };
        system.refresh_cpu_usage();
        system.refresh_memory();
        (
            system.global_cpu_usage(),
            system.cpus().len(),
            system.total_memory(),
            system.used_memory(),
        )
    };
    let (disk_total_bytes, disk_available_bytes) = data_disk();
    let load = System::load_average().ok();
    let engine = state.orchestrator.engine();
    let phase = state.orchestrator.lifecycle().current();
    let quarantined_records = state.store.quarantined()?;
    Ok(Json(NodeStatus {
        node_id: state.this_node.id.to_string(),
        node_name: state.this_node.name.clone(),
        version: env!("CARGO_PKG_VERSION"),
        cpu_percent,
        cpu_count,
        load_average: load.map(|l| [l.one, l.five, l.fifteen]).unwrap_or_default(),
        memory_total_bytes,
        memory_used_bytes,
        disk_total_bytes,
        disk_available_bytes,
        uptime_secs: System::uptime().unwrap_or_default(),
        engine: engine.name().to_owned(),
        engine_version: engine.ping().await.ok(),
        phase: phase.phase,
        phase_reason: phase.reason,
        phase_since: phase.since,
        quarantined_count: quarantined_records.len(),
        quarantined_records,
    }))
}

/// The disk whose mount point is the longest prefix of the working directory.
fn data_disk() -> (u64, u64) {
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    let Ok(disks) = Disks::new_with_refreshed_list() else {
        return (0, 0);
    };
    disks
        .iter()
        .filter(|disk| cwd.starts_with(disk.mount_point()))
        .max_by_key(|disk| disk.mount_point().as_os_str().len())
        .map(|disk| (disk.total_space(), disk.available_space()))
        .unwrap_or((0, 0))
}

#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub node_id: String,
    pub version: &'static str,
}

/// Liveness for load balancers and scripts; needs no token.
pub async fn health(State(state): State<ApiState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        node_id: state.this_node.id.to_string(),
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// `GET /v1/heartbeat`: 204 while the agent serves and its store answers.
pub async fn heartbeat(State(state): State<ApiState>) -> Result<axum::http::StatusCode, ApiError> {
    state.store.services.list()?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// The OpenAPI 3.1 description of this API.
pub async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("../../openapi.json"),
    )
}
