//! Translation of an engine-neutral [`ContainerSpec`] into Docker's create-container body.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, DeviceMapping, HostConfig, Mount, MountType, PortBinding, PortMap,
    RestartPolicy as DockerRestartPolicy, RestartPolicyNameEnum,
};
use motey_val::{ContainerSpec, PortMapping, Protocol, RestartPolicy, VolumeMount};

/// The body Docker's `POST /containers/create` expects for `spec`.
pub(crate) fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let port_bindings = port_bindings(&spec.ports);
    let exposed_ports: Vec<String> = port_bindings.keys().cloned().collect();
    let privileges = &spec.privileges;
    let host_config = HostConfig {
        port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
        mounts: (!spec.volumes.is_empty()).then(|| spec.volumes.iter().map(mount).collect()),
        devices: (!spec.devices.is_empty()).then(|| {
            spec.devices
                .iter()
                .map(|device| DeviceMapping {
                    path_on_host: Some(device.host_path.clone()),
                    path_in_container: Some(device.container_path.clone()),
                    cgroup_permissions: Some(device.permissions().to_owned()),
                })
                .collect()
        }),
        restart_policy: Some(restart_policy(spec.restart)),
        privileged: privileges.privileged.then_some(true),
        network_mode: privileges.host_network.then(|| "host".into()),
        pid_mode: privileges.host_pid.then(|| "host".into()),
        cap_add: (!privileges.cap_add.is_empty()).then(|| privileges.cap_add.clone()),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.command.clone(),
        env: (!spec.env.is_empty()).then(|| {
            spec.env
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect()
        }),
        exposed_ports: (!exposed_ports.is_empty()).then_some(exposed_ports),
        labels: Some(
            spec.labels
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        ),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// Docker's key for a container port, e.g. `80/tcp`.
pub(crate) fn port_key(container_port: u16, protocol: Protocol) -> String {
    let protocol = match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    format!("{container_port}/{protocol}")
}

/// Groups the mappings by container port: one container port may be published on several
/// host ports or addresses.
fn port_bindings(ports: &[PortMapping]) -> PortMap {
    let mut map: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for port in ports {
        map.entry(port_key(port.container_port, port.protocol))
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: port.host_ip.clone(),
                // No host port lets Docker pick a free one.
                host_port: port.host_port.map(|p| p.to_string()),
            });
    }
    map
}

/// An absolute source is a host path (bind mount); anything else names a Docker volume.
fn mount(volume: &VolumeMount) -> Mount {
    let typ = if volume.source.starts_with('/') {
        MountType::BIND
    } else {
        MountType::VOLUME
    };
    Mount {
        source: Some(volume.source.clone()),
        target: Some(volume.target.clone()),
        typ: Some(typ),
        read_only: Some(volume.read_only),
        ..Default::default()
    }
}

fn restart_policy(policy: RestartPolicy) -> DockerRestartPolicy {
    let name = match policy {
        RestartPolicy::No => RestartPolicyNameEnum::NO,
        RestartPolicy::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
        RestartPolicy::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
        RestartPolicy::Always => RestartPolicyNameEnum::ALWAYS,
    };
    DockerRestartPolicy {
        name: Some(name),
        maximum_retry_count: None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use motey_val::{DeviceMapping as Device, Privileges};

    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "svc-web".into(),
            image: "motey/testbox:latest".into(),
            command: None,
            env: BTreeMap::new(),
            ports: Vec::new(),
            volumes: Vec::new(),
            devices: Vec::new(),
            restart: RestartPolicy::No,
            labels: BTreeMap::new(),
            privileges: Privileges::default(),
        }
    }

    #[test]
    fn minimal_spec_asks_for_nothing_extra() {
        let body = create_body(&spec());
        assert_eq!(body.image.as_deref(), Some("motey/testbox:latest"));
        assert_eq!(body.cmd, None);
        assert_eq!(body.env, None);
        assert_eq!(body.exposed_ports, None);
        let host = body.host_config.unwrap();
        assert_eq!(host.port_bindings, None);
        assert_eq!(host.mounts, None);
        assert_eq!(host.privileged, None);
        assert_eq!(host.network_mode, None);
        assert_eq!(
            host.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::NO)
        );
    }

    #[test]
    fn command_env_and_labels_are_passed_through() {
        let mut spec = spec();
        spec.command = Some(vec!["--verbose".into()]);
        spec.env.insert("A".into(), "1".into());
        spec.env.insert("B".into(), "x=y".into());
        spec.labels
            .insert("io.motey.service-id".into(), "s1".into());
        let body = create_body(&spec);
        assert_eq!(body.cmd, Some(vec!["--verbose".to_string()]));
        assert_eq!(body.env, Some(vec!["A=1".to_string(), "B=x=y".to_string()]));
        assert_eq!(body.labels.unwrap()["io.motey.service-id"], "s1");
    }

    #[test]
    fn ports_group_by_container_port_and_protocol() {
        let mut spec = spec();
        spec.ports = vec![
            PortMapping {
                container_port: 80,
                host_port: Some(8080),
                host_ip: None,
                protocol: Protocol::Tcp,
            },
            PortMapping {
                container_port: 80,
                host_port: Some(8081),
                host_ip: Some("127.0.0.1".into()),
                protocol: Protocol::Tcp,
            },
            PortMapping {
                container_port: 7070,
                host_port: None,
                host_ip: None,
                protocol: Protocol::Udp,
            },
        ];
        let body = create_body(&spec);
        let mut exposed = body.exposed_ports.unwrap();
        exposed.sort();
        assert_eq!(exposed, vec!["7070/udp".to_string(), "80/tcp".to_string()]);
        let bindings = body.host_config.unwrap().port_bindings.unwrap();
        let tcp = bindings["80/tcp"].as_ref().unwrap();
        assert_eq!(tcp.len(), 2);
        assert_eq!(tcp[0].host_port.as_deref(), Some("8080"));
        assert_eq!(tcp[1].host_ip.as_deref(), Some("127.0.0.1"));
        let udp = bindings["7070/udp"].as_ref().unwrap();
        assert_eq!(udp[0].host_port, None);
    }

    #[test]
    fn host_paths_bind_and_names_use_volumes() {
        let mut spec = spec();
        spec.volumes = vec![
            VolumeMount {
                source: "/srv/meter".into(),
                target: "/data".into(),
                read_only: true,
            },
            VolumeMount {
                source: "meter-cache".into(),
                target: "/cache".into(),
                read_only: false,
            },
        ];
        let mounts = create_body(&spec).host_config.unwrap().mounts.unwrap();
        assert_eq!(mounts[0].typ, Some(MountType::BIND));
        assert_eq!(mounts[0].read_only, Some(true));
        assert_eq!(mounts[1].typ, Some(MountType::VOLUME));
        assert_eq!(mounts[1].source.as_deref(), Some("meter-cache"));
    }

    #[test]
    fn devices_restart_and_privileges_map_to_host_config() {
        let mut spec = spec();
        spec.devices = vec![
            Device {
                host_path: "/dev/ttyUSB0".into(),
                container_path: "/dev/probe".into(),
                permissions: None,
            },
            Device {
                host_path: "/dev/ttyACM0".into(),
                container_path: "/dev/ttyACM0".into(),
                permissions: Some("r".into()),
            },
        ];
        spec.restart = RestartPolicy::OnFailure;
        spec.privileges = Privileges {
            privileged: true,
            host_network: true,
            host_pid: true,
            cap_add: vec!["NET_ADMIN".into()],
        };
        let host = create_body(&spec).host_config.unwrap();
        let devices = host.devices.unwrap();
        assert_eq!(devices[0].path_on_host.as_deref(), Some("/dev/ttyUSB0"));
        assert_eq!(devices[0].path_in_container.as_deref(), Some("/dev/probe"));
        assert_eq!(devices[0].cgroup_permissions.as_deref(), Some("rwm"));
        assert_eq!(devices[1].cgroup_permissions.as_deref(), Some("r"));
        assert_eq!(
            host.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::ON_FAILURE)
        );
        assert_eq!(host.privileged, Some(true));
        assert_eq!(host.network_mode.as_deref(), Some("host"));
        assert_eq!(host.pid_mode.as_deref(), Some("host"));
        assert_eq!(host.cap_add, Some(vec!["NET_ADMIN".to_string()]));
    }
}
