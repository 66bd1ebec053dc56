//! Our blueprint format: `name` and `images`, each image with short notations for ports,
//! volumes and devices (see the module documentation of [`super`]).

use std::collections::BTreeMap;

use serde_json::Value;

use super::params::{parse_device, parse_port, parse_volume};
use super::{unique_ids, ImageDraft};
use crate::domain::{ImageBlueprint, Privileges, RestartPolicy};
use crate::validation::FieldError;

/// The images of a schema-valid native blueprint, or every located problem.
pub(crate) fn images(document: &Value) -> Result<Vec<ImageDraft>, Vec<FieldError>> {
    let images = document["images"].as_array().cloned().unwrap_or_default();
    let candidates: Vec<(Option<String>, String)> = images
        .iter()
        .map(|image| {
            (
                image["name"].as_str().map(str::to_owned),
                image["image"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let ids = unique_ids(&candidates)?;
    let mut errors = Vec::new();
    let mut drafts = Vec::new();
    for (index, (image, id)) in images.iter().zip(ids).enumerate() {
        let at = |field: &str| format!("images[{index}].{field}");
        let mut list = |field: &str, what: &str, parse: &dyn Fn(&str) -> bool| {
            for (n, item) in image[field].as_array().into_iter().flatten().enumerate() {
                let text = scalar_text(item);
                if !parse(&text) {
                    errors.push(FieldError::new(
                        format!("{}[{n}]", at(field)),
                        format!("{text:?} is not {what}"),
                    ));
                }
            }
        };
        list("ports", "a port mapping", &|t| parse_port(t).is_some());
        list("volumes", "a volume (source:/target[:ro])", &|t| {
            parse_volume(t).is_some()
        });
        list("devices", "a device (/dev/x[:/dev/y])", &|t| {
            parse_device(t).is_some()
        });
        let strings = |field: &str| -> Vec<String> {
            image[field]
                .as_array()
                .into_iter()
                .flatten()
                .map(scalar_text)
                .collect()
        };
        let command = match &image["command"] {
            Value::String(line) => match shlex::split(line) {
                Some(words) => Some(words),
                None => {
                    errors.push(FieldError::new(at("command"), "has an unterminated quote"));
                    None
                }
            },
            Value::Array(_) => Some(strings("command")),
            _ => None,
        };
        let env: BTreeMap<String, String> = image["env"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(key, value)| (key.clone(), scalar_text(value)))
            .collect();
        let restart = match image["restart"].as_str() {
            Some(policy) => serde_json::from_value::<RestartPolicy>(Value::String(policy.into()))
                .unwrap_or_default(),
            None => RestartPolicy::No,
        };
        let blueprint = ImageBlueprint {
            id,
            image: image["image"].as_str().unwrap_or_default().to_owned(),
            container_name: image["container_name"].as_str().map(str::to_owned),
            command,
            env,
            ports: strings("ports")
                .iter()
                .filter_map(|p| parse_port(p))
                .collect(),
            volumes: strings("volumes")
                .iter()
                .filter_map(|v| parse_volume(v))
                .collect(),
            devices: strings("devices")
                .iter()
                .filter_map(|d| parse_device(d))
                .collect(),
            restart,
            capabilities: strings("capabilities"),
            privileges: Privileges {
                privileged: image["privileged"].as_bool().unwrap_or(false),
                host_network: image["network_mode"].as_str() == Some("host"),
                host_pid: image["pid_mode"].as_str() == Some("host"),
                cap_add: strings("cap_add"),
            },
        };
        drafts.push(ImageDraft {
            image: blueprint,
            privileged_field: at("privileged"),
            network_field: at("network_mode"),
            pid_field: at("pid_mode"),
            cap_add_field: at("cap_add"),
            volume_fields: (0..strings("volumes").len())
                .map(|n| format!("{}[{n}]", at("volumes")))
                .collect(),
            device_fields: (0..strings("devices").len())
                .map(|n| format!("{}[{n}]", at("devices")))
                .collect(),
        });
    }
    if errors.is_empty() {
        Ok(drafts)
    } else {
        Err(errors)
    }
}

/// A YAML scalar as the text a user wrote: `8080` and `"8080"` both give `8080`.
pub(crate) fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
