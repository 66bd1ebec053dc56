//! Blueprints: YAML service descriptions in our format or in Motey's, validated by the
//! JSON schemas shipped in `agent/schemas/`, then checked against what the node allows.
//!
//! Our format:
//! ```yaml
//! name: metering
//! images:
//!   - name: reader
//!     image: motey/meter-reader:latest
//!     env: { READ_INTERVAL: "900" }
//!     ports: ["8080:80", "127.0.0.1:9000:9000/udp"]
//!     devices: ["/dev/ttyUSB0"]
//!     restart: on-failure
//!     capabilities: [optical-probe]
//! ```
//! Motey's format (`service_name`, `images[].name` as the reference, `engine`,
//! `parameters` with docker run options) is accepted unchanged.

mod motey;
mod native;
mod params;
mod security;
pub mod shape;
mod yaml;

use std::sync::OnceLock;

use serde_json::Value;

use crate::config::Security;
use crate::domain::Blueprint;
use crate::validation::{FieldError, Schema};

pub use params::{parse_device, parse_port, parse_volume};
pub use yaml::to_json;

/// The schema of our blueprint format.
pub const BLUEPRINT_SCHEMA: &str = include_str!("../../schemas/blueprint.schema.json");
/// The schema of Motey's blueprint format.
pub const MOTEY_BLUEPRINT_SCHEMA: &str = include_str!("../../schemas/motey-blueprint.schema.json");

/// Why a blueprint was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum BlueprintError {
    /// Not YAML at all.
    #[error("blueprint is not valid YAML: {0}")]
    Syntax(String),
    /// Nested too deep or too many aliases to be parsed at all.
    #[error(transparent)]
    Shape(#[from] shape::ShapeError),
    /// YAML, but not a valid blueprint; every problem is located.
    #[error("{}", join_errors(.0))]
    Invalid(Vec<FieldError>),
    /// Valid, but asks for something this node's configuration does not allow.
    #[error("{}", join_errors(.0))]
    Refused(Vec<FieldError>),
}

impl BlueprintError {
    /// The problems, located (empty for a syntax error).
    pub fn fields(&self) -> &[FieldError] {
        match self {
            BlueprintError::Syntax(_) | BlueprintError::Shape(_) => &[],
            BlueprintError::Invalid(errors) | BlueprintError::Refused(errors) => errors,
        }
    }
}

fn join_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The two formats a blueprint may come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Native,
    Motey,
}

/// Parses and validates a YAML blueprint in either format, refusing options `security`
/// does not allow.
pub fn parse(yaml: &str, security: &Security) -> Result<Blueprint, BlueprintError> {
    shape::check(yaml)?;
    let document: Value = yaml::to_json(yaml).map_err(BlueprintError::Syntax)?;
    if !document.is_object() {
        return Err(BlueprintError::Invalid(vec![FieldError::new(
            "",
            "a blueprint is a mapping with a name and images",
        )]));
    }
    let format = detect(&document);
    let errors = schema(format).validate(&document);
    if !errors.is_empty() {
        return Err(BlueprintError::Invalid(errors));
    }
    let drafts = match format {
        Format::Native => native::images(&document),
        Format::Motey => motey::images(&document),
    }
    .map_err(BlueprintError::Invalid)?;
    let service_name = match format {
        Format::Native => document["name"].as_str(),
        Format::Motey => document["service_name"].as_str(),
    }
    .unwrap_or_default()
    .to_owned();
    security::check(&service_name, &drafts, security).map_err(BlueprintError::Refused)?;
    Ok(Blueprint {
        service_name,
        images: drafts.into_iter().map(|draft| draft.image).collect(),
    })
}

/// Motey's blueprints carry `service_name`; ours carry `name`.
pub fn detect(document: &Value) -> Format {
    if document.get("service_name").is_some() {
        Format::Motey
    } else {
        Format::Native
    }
}

fn schema(format: Format) -> &'static Schema {
    static NATIVE: OnceLock<Schema> = OnceLock::new();
    static MOTEY: OnceLock<Schema> = OnceLock::new();
    match format {
        Format::Native => NATIVE.get_or_init(|| Schema::compile(BLUEPRINT_SCHEMA)),
        Format::Motey => MOTEY.get_or_init(|| Schema::compile(MOTEY_BLUEPRINT_SCHEMA)),
    }
}

/// An image parsed from either format, with the field paths of its host-level options
/// so that a refusal can name them as the user wrote them.
#[derive(Debug, Clone)]
pub(crate) struct ImageDraft {
    pub image: crate::domain::ImageBlueprint,
    /// Field path of each option that gives power over the host.
    pub privileged_field: String,
    pub network_field: String,
    pub pid_field: String,
    pub cap_add_field: String,
    /// Field path of each volume, in order.
    pub volume_fields: Vec<String>,
    /// Field path of each device, in order.
    pub device_fields: Vec<String>,
}

/// Gives every image an id unique within the service: its name, else the last path
/// segment of its reference, with `-2`, `-3`... for repeats.
pub(crate) fn unique_ids(
    candidates: &[(Option<String>, String)],
) -> Result<Vec<String>, Vec<FieldError>> {
    let mut ids: Vec<String> = Vec::new();
    let mut errors = Vec::new();
    for (index, (explicit, reference)) in candidates.iter().enumerate() {
        match explicit {
            Some(name) => {
                if let Some(first) = ids.iter().position(|id| id == name) {
                    errors.push(FieldError::new(
                        format!("images[{index}].name"),
                        format!("{name:?} is already the name of images[{first}]"),
                    ));
                }
                ids.push(name.clone());
            }
            None => {
                let base = derived_id(reference);
                let mut id = base.clone();
                let mut n = 2;
                while ids.contains(&id)
                    || candidates
                        .iter()
                        .any(|(other, _)| other.as_deref() == Some(id.as_str()))
                {
                    id = format!("{base}-{n}");
                    n += 1;
                }
                ids.push(id);
            }
        }
    }
    if errors.is_empty() {
        Ok(ids)
    } else {
        Err(errors)
    }
}

/// `registry:5000/motey/meter-reader:1.0@sha256:...` → `meter-reader`.
fn derived_id(reference: &str) -> String {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let name = last.split(':').next().unwrap_or(last);
    let id: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if id.is_empty() {
        "image".into()
    } else {
        id
    }
}

#[cfg(test)]
mod tests;
