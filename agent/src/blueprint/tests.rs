use std::path::PathBuf;

use super::*;
use crate::domain::RestartPolicy;
use motey_val::Protocol;

const MOTEY_EXAMPLE: &str = "\
service_name: first_service
node_type: master
images:
- name: alpine
  engine: docker
  parameters:
    ports:
      80/tcp: 8080
      7070/udp: 9001
    name: alpine_from_motey
  capabilities:
    - alpine
";

fn parse_default(yaml: &str) -> Result<Blueprint, BlueprintError> {
    parse(yaml, &Security::default())
}

fn fields(error: &BlueprintError) -> Vec<String> {
    error.fields().iter().map(ToString::to_string).collect()
}

#[test]
fn motey_example_is_accepted_unchanged() {
    let blueprint = parse_default(MOTEY_EXAMPLE).unwrap();
    assert_eq!(blueprint.service_name, "first_service");
    let image = &blueprint.images[0];
    assert_eq!(image.image, "alpine");
    assert_eq!(image.id, "alpine");
    assert_eq!(image.container_name.as_deref(), Some("alpine_from_motey"));
    assert_eq!(image.capabilities, vec!["alpine"]);
    let ports: Vec<_> = image
        .ports
        .iter()
        .map(|p| (p.container_port, p.host_port, p.protocol))
        .collect();
    assert!(ports.contains(&(80, Some(8080), Protocol::Tcp)));
    assert!(ports.contains(&(7070, Some(9001), Protocol::Udp)));
}

#[test]
fn native_blueprint_with_every_option() {
    let yaml = r#"
name: metering
images:
  - name: reader
    image: motey/meter-reader:latest
    command: run --interval "15 min"
    env: { READ_INTERVAL: 900, VERBOSE: true }
    ports: ["8080:80", 9000, "127.0.0.1:5000:5000/udp"]
    volumes: ["metering-reader-data:/data"]
    devices: ["/dev/ttyUSB0"]
    restart: on-failure
    capabilities: [optical-probe]
  - image: motey/data-api:latest
"#;
    let probe = Security {
        allowed_devices: vec![crate::policy::AllowedDevice::parse("/dev/ttyUSB0").unwrap()],
        ..Security::default()
    };
    let blueprint = parse(yaml, &probe).unwrap();
    assert_eq!(blueprint.service_name, "metering");
    let reader = &blueprint.images[0];
    assert_eq!(
        reader.command.as_deref(),
        Some(&["run".to_string(), "--interval".into(), "15 min".into()][..])
    );
    assert_eq!(reader.env["READ_INTERVAL"], "900");
    assert_eq!(reader.env["VERBOSE"], "true");
    assert_eq!(reader.ports.len(), 3);
    assert_eq!(reader.ports[1].host_port, None);
    assert_eq!(reader.volumes[0].source, "metering-reader-data");
    assert_eq!(reader.devices[0].container_path, "/dev/ttyUSB0");
    assert_eq!(reader.restart, RestartPolicy::OnFailure);
    assert_eq!(blueprint.images[1].id, "data-api");
}

#[test]
fn bad_port_is_located() {
    let yaml = "name: s\nimages:\n  - image: a\n  - image: b\n    ports: [\"80:abc\"]\n";
    let error = parse_default(yaml).unwrap_err();
    assert_eq!(
        fields(&error),
        vec![r#"images[1].ports[0]: "80:abc" is not a port mapping"#]
    );
}

#[test]
fn schema_violations_are_located() {
    let error = parse_default("name: s\nimages:\n  - image: a\n    restrat: always\n").unwrap_err();
    assert_eq!(
        fields(&error),
        vec!["images[0].restrat: is not a known field"]
    );
    let error = parse_default("name: s\nimages:\n  - name: x\n").unwrap_err();
    assert_eq!(fields(&error), vec!["images[0].image: is required"]);
    let error = parse_default("images: []\n").unwrap_err();
    assert!(
        fields(&error).iter().any(|f| f.starts_with("name")),
        "{error}"
    );
    let error =
        parse_default("name: s\nimages:\n  - image: a\n    restart: sometimes\n").unwrap_err();
    assert!(
        fields(&error)[0].starts_with("images[0].restart"),
        "{error}"
    );
}

#[test]
fn duplicate_image_names_are_refused_and_derived_ids_are_unique() {
    let error =
        parse_default("name: s\nimages:\n  - {name: a, image: x}\n  - {name: a, image: y}\n")
            .unwrap_err();
    assert_eq!(
        fields(&error),
        vec![r#"images[1].name: "a" is already the name of images[0]"#]
    );
    let blueprint =
        parse_default("name: s\nimages:\n  - image: reg:5000/x/app:1\n  - image: app\n").unwrap();
    let ids: Vec<_> = blueprint.images.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, vec!["app", "app-2"]);
}

#[test]
fn not_yaml_or_not_a_mapping() {
    assert!(matches!(
        parse_default("name: [unclosed"),
        Err(BlueprintError::Syntax(_))
    ));
    assert!(matches!(
        parse_default("- just\n- a list\n"),
        Err(BlueprintError::Invalid(_))
    ));
}

#[test]
fn host_options_are_refused_naming_the_option() {
    let yaml = "\
service_name: s
images:
- name: alpine
  parameters:
    privileged: true
    network_mode: host
    cap_add: [NET_ADMIN]
    volumes: {/etc: {bind: /host-etc, mode: ro}}
";
    let error = parse_default(yaml).unwrap_err();
    assert!(matches!(error, BlueprintError::Refused(_)));
    let located: Vec<&str> = error.fields().iter().map(|f| f.field.as_str()).collect();
    assert_eq!(
        located,
        vec![
            "images[0].parameters.privileged",
            "images[0].parameters.network_mode",
            "images[0].parameters.cap_add",
            "images[0].parameters.volumes./etc",
        ]
    );
    let allowed = Security {
        allow_privileged: true,
        allow_host_network: true,
        allow_host_pid: false,
        allowed_cap_add: vec!["NET_ADMIN".into()],
        bind_paths: vec![PathBuf::from("/etc")],
        ..Security::default()
    };
    parse(yaml, &allowed).unwrap();
}

#[test]
fn bind_mounts_only_under_allowed_paths() {
    let allowed = tempfile::tempdir().unwrap();
    let root = allowed.path().canonicalize().unwrap();
    std::fs::create_dir(root.join("pki")).unwrap();
    std::os::unix::fs::symlink("/", root.join("escape")).unwrap();
    let security = Security {
        bind_paths: vec![root.clone()],
        ..Security::default()
    };
    let blueprint =
        |volume: &str| format!("name: s\nimages:\n  - image: a\n    volumes: [\"{volume}\"]\n");
    let root = root.display();
    parse(&blueprint(&format!("{root}/pki:/pki:ro")), &security).unwrap();
    parse(&blueprint("s-cache:/data"), &security).unwrap();
    for refused in [
        format!("{root}/../../etc:/x"),
        format!("{root}-other:/x"),
        format!("{root}/escape:/host"),
        "/:/host".to_owned(),
        "other-service-data:/data".to_owned(),
    ] {
        let error = parse(&blueprint(&refused), &security).unwrap_err();
        assert!(matches!(error, BlueprintError::Refused(_)), "{refused}");
        assert_eq!(error.fields()[0].field, "images[0].volumes[0]", "{refused}");
    }
}

#[test]
fn devices_only_from_the_allow_list_in_both_formats() {
    let security = Security {
        allowed_devices: vec![crate::policy::AllowedDevice::parse("/dev/ttyUSB0").unwrap()],
        ..Security::default()
    };
    let native =
        |device: &str| format!("name: s\nimages:\n  - image: a\n    devices: [\"{device}\"]\n");
    let motey = |device: &str| {
        format!(
            "service_name: s\nimages:\n  - name: a\n    parameters: {{devices: [\"{device}\"]}}\n"
        )
    };
    parse(&native("/dev/ttyUSB0"), &security).unwrap();
    parse(&motey("/dev/ttyUSB0:/dev/probe:rw"), &security).unwrap();
    for (yaml, field) in [
        (native("/dev/vda:/dev/vda:rwm"), "images[0].devices[0]"),
        (motey("/dev/vda"), "images[0].parameters.devices[0]"),
    ] {
        let error = parse(&yaml, &security).unwrap_err();
        assert!(matches!(error, BlueprintError::Refused(_)), "{yaml}");
        assert_eq!(error.fields()[0].field, field);
    }
}

/// Docker options that give power over the host and that the agent does not apply are
/// refused by the schemas, never ignored: a blueprint cannot believe it got them, nor
/// slip them past the check.
#[test]
fn host_power_options_the_agent_does_not_apply_are_refused_in_both_formats() {
    let options = [
        "security_opt: [seccomp=unconfined]",
        "sysctls: {net.ipv4.ip_forward: 1}",
        "userns_mode: host",
        "ipc_mode: host",
        "uts_mode: host",
        "volumes_from: [other]",
        "tmpfs: {/run: size=64g}",
        "runtime: runc",
        "cap_drop: [ALL]",
        "device_cgroup_rules: [\"c *:* rwm\"]",
    ];
    for option in options {
        let native = format!("name: s\nimages:\n  - image: a\n    {option}\n");
        let motey =
            format!("service_name: s\nimages:\n  - name: a\n    parameters: {{{option}}}\n");
        for yaml in [native, motey] {
            let error = parse_default(&yaml).unwrap_err();
            assert!(
                matches!(error, BlueprintError::Invalid(_)),
                "{yaml}: {error}"
            );
        }
    }
    for mode in ["container:other", "ipc"] {
        let yaml = format!(
            "service_name: s\nimages:\n  - name: a\n    parameters: {{pid_mode: \"{mode}\"}}\n"
        );
        let error = parse_default(&yaml).unwrap_err();
        assert_eq!(
            error.fields()[0].field,
            "images[0].parameters.pid_mode",
            "{mode}"
        );
    }
    for mode in ["container:other", "none"] {
        let yaml = format!(
            "service_name: s\nimages:\n  - name: a\n    parameters: {{network_mode: \"{mode}\"}}\n"
        );
        let error = parse_default(&yaml).unwrap_err();
        assert_eq!(
            error.fields()[0].field,
            "images[0].parameters.network_mode",
            "{mode}"
        );
    }
    let native = "name: s\nimages:\n  - image: a\n    pid_mode: container:other\n";
    assert!(matches!(
        parse_default(native).unwrap_err(),
        BlueprintError::Invalid(_)
    ));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever arrives over the API, parsing answers with a blueprint or an error.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let _ = parse_default(&text);
        }

        #[test]
        fn arbitrary_port_entries_never_panic(port in "[0-9a-z:./ ]{0,24}") {
            let yaml = format!("name: s\nimages:\n  - image: a\n    ports: [\"{port}\"]\n");
            let _ = parse_default(&yaml);
            let motey = format!("service_name: s\nimages:\n- name: a\n  parameters:\n    ports:\n      \"{port}\": \"{port}\"\n");
            let _ = parse_default(&motey);
        }
    }
}
