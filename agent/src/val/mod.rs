//! Wiring of the virtualization engine plugin chosen by the configuration (`[VAL] plugin`).

use std::sync::Arc;

use motey_val::{ValError, VirtualizationEngine};

use crate::config;

/// Names of the plugins this build knows.
pub const PLUGINS: &[&str] = &["docker"];

/// Connects the configured plugin. The engine need not be up yet: the orchestrator keeps
/// retrying, so an agent may start before its engine.
pub fn connect(settings: &config::Val) -> Result<Arc<dyn VirtualizationEngine>, ValError> {
    match settings.plugin.as_str() {
        "docker" => Ok(Arc::new(motey_val_docker::DockerEngine::connect(
            settings.endpoint.as_deref(),
        )?)),
        other => Err(ValError::Refused {
            operation: "select plugin".into(),
            reason: format!("unknown plugin {other}"),
        }),
    }
}
