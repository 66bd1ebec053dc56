use std::path::PathBuf;

use super::*;
use crate::domain::{DeviceMapping, Privileges, VolumeMount};

fn image() -> ImageBlueprint {
    ImageBlueprint {
        id: "reader".into(),
        image: "motey/meter-reader".into(),
        container_name: None,
        command: None,
        env: Default::default(),
        ports: Vec::new(),
        volumes: Vec::new(),
        devices: Vec::new(),
        restart: Default::default(),
        capabilities: Vec::new(),
        privileges: Privileges::default(),
    }
}

fn volume(source: &str) -> VolumeMount {
    VolumeMount {
        source: source.into(),
        target: "/mnt".into(),
        read_only: false,
    }
}

fn device(path: &str, permissions: Option<&str>) -> DeviceMapping {
    DeviceMapping {
        host_path: path.into(),
        container_path: "/dev/probe".into(),
        permissions: permissions.map(str::to_owned),
    }
}

fn options(image: &ImageBlueprint, security: &Security) -> Vec<HostOption> {
    refusals("meter-reader", image, security)
        .into_iter()
        .map(|refusal| refusal.option)
        .collect()
}

#[test]
fn a_plain_image_passes_the_default_policy() {
    assert_eq!(
        check("meter-reader", &[image()], &Security::default()),
        Ok(())
    );
}

#[test]
fn host_privileges_are_refused_by_default_and_allowed_one_by_one() {
    let mut asking = image();
    asking.privileges = Privileges {
        privileged: true,
        host_network: true,
        host_pid: true,
        cap_add: vec!["net_admin".into()],
    };
    assert_eq!(
        options(&asking, &Security::default()),
        [
            HostOption::Privileged,
            HostOption::NetworkMode,
            HostOption::PidMode,
            HostOption::CapAdd
        ]
    );
    let allowing = Security {
        allow_privileged: true,
        allow_host_network: true,
        allow_host_pid: true,
        allowed_cap_add: vec!["NET_ADMIN".into()],
        ..Security::default()
    };
    assert!(options(&asking, &allowing).is_empty());
}

#[test]
fn a_bind_source_must_exist_below_an_allowed_directory_without_links() {
    let allowed = tempfile::tempdir().unwrap();
    let root = allowed.path().canonicalize().unwrap();
    std::fs::create_dir(root.join("pki")).unwrap();
    std::os::unix::fs::symlink("/", root.join("escape")).unwrap();
    std::fs::create_dir(root.join("real")).unwrap();
    std::os::unix::fs::symlink(root.join("real"), root.join("alias")).unwrap();
    let security = Security {
        bind_paths: vec![root.clone()],
        ..Security::default()
    };
    let bind = |source: PathBuf| {
        let mut asking = image();
        asking.volumes = vec![volume(source.to_str().unwrap())];
        refusals("meter-reader", &asking, &security)
    };
    assert!(bind(root.join("pki")).is_empty());
    assert!(bind(root.clone()).is_empty());
    for (source, why) in [
        (root.join("escape"), "symbolic link"),
        (root.join("escape/etc"), "symbolic link"),
        (root.join("alias"), "symbolic link"),
        (root.join("missing"), "does not exist"),
        (root.join("pki/../escape"), "without . or .."),
        (PathBuf::from("/etc"), "bind_paths"),
        (
            PathBuf::from(format!("{}-other", root.display())),
            "bind_paths",
        ),
    ] {
        let found = bind(source.clone());
        assert_eq!(found.len(), 1, "{source:?}");
        assert_eq!(found[0].option, HostOption::Volume(0));
        assert!(
            found[0].reason.contains(why),
            "{source:?}: {}",
            found[0].reason
        );
    }
}

#[test]
fn a_service_mounts_only_volumes_named_after_it() {
    let mount = |name: &str| {
        let mut asking = image();
        asking.volumes = vec![volume(name)];
        options(&asking, &Security::default())
    };
    assert!(mount("meter-reader").is_empty());
    assert!(mount("meter-reader-data").is_empty());
    for foreign in [
        "data-api-pki",
        "data-api-db",
        "meter-readerx",
        "meter",
        "other",
    ] {
        assert_eq!(mount(foreign), [HostOption::Volume(0)], "{foreign}");
    }
}

#[test]
fn devices_come_from_the_allow_list_with_at_most_its_permissions() {
    let security = Security {
        allowed_devices: vec![
            AllowedDevice::parse("/dev/ttyUSB0").unwrap(),
            AllowedDevice::parse("/dev/ttyACM0:rw").unwrap(),
        ],
        ..Security::default()
    };
    let give = |device: DeviceMapping| {
        let mut asking = image();
        asking.devices = vec![device];
        options(&asking, &security)
    };
    assert!(give(device("/dev/ttyUSB0", None)).is_empty());
    assert!(give(device("/dev/ttyACM0", Some("r"))).is_empty());
    assert_eq!(give(device("/dev/ttyACM0", None)), [HostOption::Device(0)]);
    assert_eq!(
        give(device("/dev/vda", Some("rwm"))),
        [HostOption::Device(0)]
    );
    let mut asking = image();
    asking.devices = vec![device("/dev/ttyUSB0", None)];
    assert_eq!(
        options(&asking, &Security::default()),
        [HostOption::Device(0)]
    );
}

#[test]
fn allowed_devices_are_read_strictly() {
    assert_eq!(
        AllowedDevice::parse("/dev/ttyUSB0:rw"),
        Some(AllowedDevice {
            path: "/dev/ttyUSB0".into(),
            permissions: "rw".into()
        })
    );
    for bad in [
        "ttyUSB0",
        "/etc/passwd",
        "/dev/../etc/x",
        "/dev/x:",
        "/dev/x:rwx",
    ] {
        assert_eq!(AllowedDevice::parse(bad), None, "{bad}");
    }
}

#[test]
fn a_refusal_names_the_image_and_the_option() {
    let mut asking = image();
    asking.privileges.privileged = true;
    let error = check("meter-reader", &[asking], &Security::default()).unwrap_err();
    assert_eq!(error.0.len(), 1);
    assert!(
        error
            .to_string()
            .contains("image reader: privileged: privileged containers"),
        "{error}"
    );
}
