//! Parsing of the short notations for ports, volumes and devices.

use crate::domain::{DeviceMapping, PortMapping, VolumeMount};
use motey_val::Protocol;

/// `"8080:80"`, `"127.0.0.1:8080:80/udp"`, `"80"` (engine picks the host port) or `80`.
pub fn parse_port(text: &str) -> Option<PortMapping> {
    let (ports, protocol) = match text.rsplit_once('/') {
        Some((ports, "tcp")) => (ports, Protocol::Tcp),
        Some((ports, "udp")) => (ports, Protocol::Udp),
        Some(_) => return None,
        None => (text, Protocol::Tcp),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (host_ip, host_port, container_port) = match parts.as_slice() {
        [container] => (None, None, *container),
        [host, container] => (None, Some(*host), *container),
        [ip, host, container] => {
            ip.parse::<std::net::IpAddr>().ok()?;
            (Some(ip.to_string()), Some(*host), *container)
        }
        _ => return None,
    };
    Some(PortMapping {
        container_port: port_number(container_port)?,
        host_port: match host_port {
            None | Some("") => None,
            Some(port) => Some(port_number(port)?),
        },
        host_ip,
        protocol,
    })
}

/// A port number 1–65535 in plain decimal digits, as the schemas' patterns have it: no
/// sign, no leading zero, no surrounding blanks.
pub(crate) fn port_number(text: &str) -> Option<u16> {
    if text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok()
}

/// `"/srv/data:/data"`, `"/srv/data:/data:ro"` or `"cache:/cache"` (a named volume).
pub fn parse_volume(text: &str) -> Option<VolumeMount> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [source, target] => (*source, *target, false),
        [source, target, "ro"] => (*source, *target, true),
        [source, target, "rw"] => (*source, *target, false),
        _ => return None,
    };
    if source.is_empty() || !target.starts_with('/') {
        return None;
    }
    Some(VolumeMount {
        source: source.to_owned(),
        target: target.to_owned(),
        read_only,
    })
}

/// `"/dev/ttyUSB0"`, `"/dev/ttyUSB0:/dev/probe"` or `"/dev/ttyUSB0:/dev/probe:rw"` (the
/// cgroup permissions; all of `rwm` when left out).
pub fn parse_device(text: &str) -> Option<DeviceMapping> {
    let parts: Vec<&str> = text.split(':').collect();
    let (host, container, permissions) = match parts.as_slice() {
        [host] => (*host, *host, None),
        [host, container] => (*host, *container, None),
        [host, container, permissions]
            if !permissions.is_empty() && permissions.chars().all(|c| "rwm".contains(c)) =>
        {
            (*host, *container, Some(*permissions))
        }
        _ => return None,
    };
    if !host.starts_with('/') || !container.starts_with('/') {
        return None;
    }
    Some(DeviceMapping {
        host_path: host.to_owned(),
        container_path: container.to_owned(),
        permissions: permissions.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_in_every_notation() {
        let p = parse_port("8080:80").unwrap();
        assert_eq!(
            (p.host_port, p.container_port, p.protocol),
            (Some(8080), 80, Protocol::Tcp)
        );
        let p = parse_port("127.0.0.1:9000:90/udp").unwrap();
        assert_eq!(p.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(
            (p.host_port, p.container_port, p.protocol),
            (Some(9000), 90, Protocol::Udp)
        );
        let p = parse_port("80").unwrap();
        assert_eq!((p.host_port, p.container_port), (None, 80));
        for bad in [
            "80:abc", "0", "70000", "a:b:c:d", "80/sctp", "x.y:1:2", "", "+80", " 80", "080",
        ] {
            assert!(parse_port(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn volumes_bind_or_name() {
        let v = parse_volume("/srv/data:/data:ro").unwrap();
        assert_eq!(
            (v.source.as_str(), v.target.as_str(), v.read_only),
            ("/srv/data", "/data", true)
        );
        assert!(!parse_volume("cache:/cache").unwrap().read_only);
        for bad in ["/srv", "/a:relative", ":/x", "/a:/b:rx"] {
            assert!(parse_volume(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn devices_keep_or_rename_the_path() {
        let d = parse_device("/dev/ttyUSB0").unwrap();
        assert_eq!(d.container_path, "/dev/ttyUSB0");
        let d = parse_device("/dev/ttyUSB0:/dev/probe:rw").unwrap();
        assert_eq!(
            (d.host_path.as_str(), d.container_path.as_str()),
            ("/dev/ttyUSB0", "/dev/probe")
        );
        assert!(parse_device("ttyUSB0").is_none());
    }
}
