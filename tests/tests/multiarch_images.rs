//! The workload images of both architectures published under one tag
//! (`scripts/publish-images.sh`) to a real registry: a Raspberry Pi (`linux/arm64`) and an
//! x86_64 node (`linux/amd64`) pulling the same reference each get the image whose
//! binaries their processor runs, as the ELF headers inside the images say.

use system_tests::cross::{elf_machine_of, Machine};
use system_tests::docker::{docker, ensure_platform_images, repo_root, VERSION};
use system_tests::registry::LocalRegistry;

const WORKLOADS: [&str; 2] = ["meter-reader", "data-api"];

/// Copies `path` out of `image` without running it (an arm64 image cannot run here).
fn file_of_image(image: &str, path: &str, into: &std::path::Path) {
    let container = docker(&["create", image]).expect("docker create");
    let copied = docker(&[
        "cp",
        &format!("{container}:{path}"),
        &into.to_string_lossy(),
    ]);
    docker(&["rm", &container]).expect("docker rm");
    copied.expect("docker cp");
}

#[test]
fn each_platform_pulls_its_own_image_from_one_tag() {
    ensure_platform_images(&WORKLOADS, "amd64");
    ensure_platform_images(&WORKLOADS, "arm64");
    let registry = LocalRegistry::start();
    let published = std::process::Command::new(repo_root().join("scripts/publish-images.sh"))
        .arg(&registry.address)
        .args(WORKLOADS)
        .current_dir(repo_root())
        .status()
        .expect("run scripts/publish-images.sh");
    assert!(published.success(), "scripts/publish-images.sh failed");

    let dir = tempfile::tempdir().unwrap();
    for workload in WORKLOADS {
        let reference = format!("{}/motey/{workload}:{VERSION}", registry.address);
        for (arch, machine) in [("arm64", Machine::Aarch64), ("amd64", Machine::X86_64)] {
            // Pulled afresh for each platform: the same tag, another image.
            let _ = docker(&["rmi", &reference]);
            docker(&[
                "pull",
                "-q",
                "--platform",
                &format!("linux/{arch}"),
                &reference,
            ])
            .unwrap_or_else(|e| panic!("docker pull {reference} for {arch}: {e}"));
            let architecture =
                docker(&["image", "inspect", "-f", "{{.Architecture}}", &reference]).unwrap();
            assert_eq!(architecture, arch, "{reference}");
            let binary = dir.path().join(format!("{workload}-{arch}"));
            file_of_image(&reference, &format!("/usr/local/bin/{workload}"), &binary);
            assert_eq!(
                elf_machine_of(&binary),
                Some(machine),
                "/usr/local/bin/{workload} in {reference} for linux/{arch}"
            );
        }
        let _ = docker(&["rmi", &reference]);
        for arch in ["amd64", "arm64"] {
            let _ = docker(&["rmi", &format!("{reference}-{arch}")]);
        }
    }
}
