//! Motey's blueprint format, accepted unchanged: `service_name`, and per image the
//! reference as `name`, `engine: docker` and `parameters` holding docker-py `run` options.

use std::collections::BTreeMap;

use serde_json::Value;

use super::native::scalar_text;
use super::params::{parse_device, parse_volume, port_number};
use super::{unique_ids, ImageDraft};
use crate::domain::{ImageBlueprint, PortMapping, Privileges, RestartPolicy, VolumeMount};
use crate::validation::FieldError;
use motey_val::Protocol;

/// The images of a schema-valid Motey blueprint, or every located problem.
pub(crate) fn images(document: &Value) -> Result<Vec<ImageDraft>, Vec<FieldError>> {
    let images = document["images"].as_array().cloned().unwrap_or_default();
    // Motey's `name` is the image reference; `parameters.name` names the container.
    let candidates: Vec<(Option<String>, String)> = images
        .iter()
        .map(|image| (None, image["name"].as_str().unwrap_or_default().to_owned()))
        .collect();
    let ids = unique_ids(&candidates)?;
    let mut errors = Vec::new();
    let mut drafts = Vec::new();
    for (index, (image, id)) in images.iter().zip(ids).enumerate() {
        let params = &image["parameters"];
        let at = |field: &str| format!("images[{index}].parameters.{field}");
        let ports = ports(params, &at("ports"), &mut errors);
        let volumes = volumes(params, &at("volumes"), &mut errors);
        let mut devices = Vec::new();
        for (n, device) in params["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let text = scalar_text(device);
            match parse_device(&text) {
                Some(device) => devices.push(device),
                None => errors.push(FieldError::new(
                    format!("{}[{n}]", at("devices")),
                    format!("{text:?} is not a device (/dev/x[:/dev/y[:rwm]])"),
                )),
            }
        }
        let command = match &params["command"] {
            Value::String(line) => shlex::split(line),
            Value::Array(words) => Some(words.iter().map(scalar_text).collect()),
            _ => None,
        };
        let env: BTreeMap<String, String> = match &params["environment"] {
            Value::Object(map) => map
                .iter()
                .map(|(key, value)| (key.clone(), scalar_text(value)))
                .collect(),
            Value::Array(items) => items
                .iter()
                .map(scalar_text)
                .map(|item| match item.split_once('=') {
                    Some((key, value)) => (key.to_owned(), value.to_owned()),
                    None => (item, String::new()),
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        let restart = match params["restart_policy"]["Name"].as_str() {
            Some("always") => RestartPolicy::Always,
            Some("on-failure") => RestartPolicy::OnFailure,
            Some("unless-stopped") => RestartPolicy::UnlessStopped,
            _ => RestartPolicy::No,
        };
        let cap_add: Vec<String> = params["cap_add"]
            .as_array()
            .into_iter()
            .flatten()
            .map(scalar_text)
            .collect();
        // A mode the agent does not apply (another container's namespace, say) is refused
        // rather than ignored.
        let pid_mode = params["pid_mode"].as_str();
        if let Some(mode) = pid_mode.filter(|mode| !["", "private", "host"].contains(mode)) {
            errors.push(FieldError::new(
                at("pid_mode"),
                format!("{mode:?} is not supported (private or host)"),
            ));
        }
        let network_mode = params["network_mode"].as_str();
        if let Some(mode) =
            network_mode.filter(|mode| !["bridge", "host", "default"].contains(mode))
        {
            errors.push(FieldError::new(
                at("network_mode"),
                format!("{mode:?} is not supported (bridge or host)"),
            ));
        }
        let devices_len = devices.len();
        drafts.push(ImageDraft {
            image: ImageBlueprint {
                id,
                image: image["name"].as_str().unwrap_or_default().to_owned(),
                container_name: params["name"].as_str().map(str::to_owned),
                command,
                env,
                ports,
                volumes,
                devices,
                restart,
                capabilities: image["capabilities"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(scalar_text)
                    .collect(),
                privileges: Privileges {
                    privileged: params["privileged"].as_bool().unwrap_or(false),
                    host_network: network_mode == Some("host"),
                    host_pid: pid_mode == Some("host"),
                    cap_add,
                },
            },
            privileged_field: at("privileged"),
            network_field: at("network_mode"),
            pid_field: at("pid_mode"),
            cap_add_field: at("cap_add"),
            volume_fields: volume_fields(params, &at("volumes")),
            device_fields: (0..devices_len)
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

/// docker-py's `ports`: `{"80/tcp": 8080}`, `{"80/tcp": null}` (any host port),
/// `{"80/tcp": ["127.0.0.1", 8080]}` (bound to an address) or `{"80/tcp": [8080, 8081]}`.
fn ports(params: &Value, field: &str, errors: &mut Vec<FieldError>) -> Vec<PortMapping> {
    let mut mappings = Vec::new();
    for (container, host) in params["ports"].as_object().into_iter().flatten() {
        let at = format!("{field}.{container}");
        let (port, protocol) = match container.split_once('/') {
            None => (container.as_str(), Some(Protocol::Tcp)),
            Some((port, "tcp")) => (port, Some(Protocol::Tcp)),
            Some((port, "udp")) => (port, Some(Protocol::Udp)),
            Some((port, _)) => (port, None),
        };
        let (Some(container_port), Some(protocol)) = (port_number(port), protocol) else {
            errors.push(FieldError::new(
                at,
                format!("{container:?} is not a container port such as 80/tcp"),
            ));
            continue;
        };
        let mapping = |host_ip: Option<String>, host_port: Option<u16>| PortMapping {
            container_port,
            host_port,
            host_ip,
            protocol,
        };
        let host_port = |value: &Value, at: &str, errors: &mut Vec<FieldError>| {
            let text = scalar_text(value);
            let port = port_number(&text);
            if port.is_none() {
                errors.push(FieldError::new(
                    at,
                    format!("{text:?} is not a port number"),
                ));
            }
            port
        };
        match host {
            Value::Null => mappings.push(mapping(None, None)),
            Value::Array(items)
                if items.len() == 2
                    && items[0]
                        .as_str()
                        .is_some_and(|ip| ip.parse::<std::net::IpAddr>().is_ok()) =>
            {
                let port = host_port(&items[1], &format!("{at}[1]"), errors);
                mappings.push(mapping(items[0].as_str().map(str::to_owned), port));
            }
            Value::Array(items) => {
                for (n, item) in items.iter().enumerate() {
                    if let Some(port) = host_port(item, &format!("{at}[{n}]"), errors) {
                        mappings.push(mapping(None, Some(port)));
                    }
                }
            }
            value => {
                if let Some(port) = host_port(value, &at, errors) {
                    mappings.push(mapping(None, Some(port)));
                }
            }
        }
    }
    mappings
}

/// docker-py's `volumes`: `{"/srv": {"bind": "/data", "mode": "ro"}}` or `["/srv:/data:ro"]`.
fn volumes(params: &Value, field: &str, errors: &mut Vec<FieldError>) -> Vec<VolumeMount> {
    match &params["volumes"] {
        Value::Object(map) => map
            .iter()
            .filter_map(|(source, bind)| {
                let text = format!(
                    "{source}:{}:{}",
                    bind["bind"].as_str().unwrap_or_default(),
                    bind["mode"].as_str().unwrap_or("rw")
                );
                let volume = parse_volume(&text);
                if volume.is_none() {
                    errors.push(FieldError::new(
                        format!("{field}.{source}"),
                        format!("{text:?} is not a volume (source with an absolute bind path)"),
                    ));
                }
                volume
            })
            .collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .filter_map(|(n, item)| {
                let text = scalar_text(item);
                let volume = parse_volume(&text);
                if volume.is_none() {
                    errors.push(FieldError::new(
                        format!("{field}[{n}]"),
                        format!("{text:?} is not a volume (source:/target[:ro])"),
                    ));
                }
                volume
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn volume_fields(params: &Value, field: &str) -> Vec<String> {
    match &params["volumes"] {
        Value::Object(map) => map
            .keys()
            .map(|source| format!("{field}.{source}"))
            .collect(),
        Value::Array(items) => (0..items.len()).map(|n| format!("{field}[{n}]")).collect(),
        _ => Vec::new(),
    }
}
