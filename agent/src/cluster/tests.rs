//! The CA, membership and proofs together, on files in a temporary directory.

use std::time::Duration;

use rcgen::KeyPair;

use super::peer_trust::CertifiedSessions;
use super::*;
use crate::peer::SessionTrust;

const DAY: Duration = Duration::from_secs(86_400);

/// A CA node and a second node holding a certificate from it.
fn cluster() -> (tempfile::TempDir, ClusterAuthority, Membership, Membership) {
    let dir = tempfile::tempdir().unwrap();
    let ca_files = ClusterFiles::in_data_dir(&dir.path().join("ca"));
    let authority = ClusterAuthority::init(&ca_files, "ca-node", DAY).unwrap();
    let ca_member = Membership::load(&ca_files).unwrap();
    let edge_files = ClusterFiles::in_data_dir(&dir.path().join("edge"));
    edge_files.create_dir().unwrap();
    let key = KeyPair::generate().unwrap();
    let request = NodeIdentity::request_for(&key, "edge-1").unwrap();
    let issued = authority.issue(&request, "edge-1", DAY).unwrap();
    edge_files
        .write_private(&edge_files.node_key(), &key.serialize_pem())
        .unwrap();
    edge_files
        .write_private(&edge_files.node_cert(), &issued.pem)
        .unwrap();
    edge_files
        .write_private(&edge_files.ca_cert(), authority.ca_pem())
        .unwrap();
    let edge = Membership::load(&edge_files).unwrap();
    (dir, authority, ca_member, edge)
}

#[test]
fn a_node_certificate_names_the_node_and_chains_to_the_ca() {
    let (_dir, _authority, ca_member, edge) = cluster();
    let member = ca_member
        .verify_certificate(edge.identity().certificate_der())
        .unwrap();
    assert_eq!(member.node_id.as_str(), "edge-1");
    assert!(ca_member.still_trusted(&member.node_id));
}

#[test]
fn a_certificate_of_another_cluster_is_refused() {
    let (_dir, _authority, ca_member, _edge) = cluster();
    let (_other_dir, _other, other_member, _) = cluster();
    let refusal = ca_member
        .verify_certificate(other_member.identity().certificate_der())
        .unwrap_err();
    assert_eq!(refusal, TrustRefusal::UnknownIssuer);
}

#[test]
fn the_ca_decides_the_node_id_not_the_request() {
    let (_dir, authority, ca_member, _edge) = cluster();
    let key = KeyPair::generate().unwrap();
    let request = NodeIdentity::request_for(&key, "ca-node").unwrap();
    let issued = authority.issue(&request, "edge-2", DAY).unwrap();
    let der = identity::pem_to_der(&issued.pem, "CERTIFICATE").unwrap();
    assert_eq!(
        ca_member.verify_certificate(&der).unwrap().node_id.as_str(),
        "edge-2"
    );
}

#[test]
fn a_revoked_node_is_refused_after_the_list_arrives_and_not_reissued() {
    let (_dir, authority, ca_member, edge) = cluster();
    let edge_id = edge.node_id();
    let old_list = authority.revocations().unwrap();
    ca_member
        .verify_certificate(edge.identity().certificate_der())
        .unwrap();
    assert_eq!(authority.revoke("edge-1").unwrap(), 1);
    let list = authority.revocations().unwrap();
    assert!(list.number() > old_list.number());
    let revoked = ca_member.apply_revocations(list.pem()).unwrap().unwrap();
    assert_eq!(revoked, vec![edge_id.clone()]);
    assert!(!ca_member.still_trusted(&edge_id));
    assert_eq!(
        ca_member
            .verify_certificate(edge.identity().certificate_der())
            .unwrap_err(),
        TrustRefusal::Revoked {
            node: "edge-1".into()
        }
    );
    // An older list replayed changes nothing.
    assert!(ca_member
        .apply_revocations(old_list.pem())
        .unwrap()
        .is_none());
    let key = KeyPair::generate().unwrap();
    let request = NodeIdentity::request_for(&key, "edge-1").unwrap();
    assert!(matches!(
        authority.issue(&request, "edge-1", DAY),
        Err(ClusterError::NodeRevoked(_))
    ));
}

#[test]
fn a_list_not_signed_by_the_ca_is_refused() {
    let (_dir, _authority, ca_member, _edge) = cluster();
    let (_other_dir, other, _, _) = cluster();
    other.revoke("edge-1").unwrap();
    let foreign = other.revocations().unwrap();
    assert!(ca_member.apply_revocations(foreign.pem()).is_err());
}

#[test]
fn a_session_proof_binds_the_static_key_to_the_node() {
    let (_dir, _authority, ca_member, edge) = cluster();
    let edge_sessions = CertifiedSessions::new(edge).unwrap();
    let ca_sessions = CertifiedSessions::new(ca_member).unwrap();
    let static_public = [7u8; 32];
    let proof = edge_sessions.handshake_proof(&static_public);
    assert_eq!(
        ca_sessions
            .verify_peer(&static_public, &proof)
            .unwrap()
            .as_str(),
        "edge-1"
    );
    assert_eq!(
        ca_sessions.verify_peer(&[8u8; 32], &proof).unwrap_err(),
        TrustRefusal::BadSignature
    );
    assert!(ca_sessions
        .verify_peer(&static_public, &proof[..10])
        .is_err());
    assert_eq!(edge_sessions.static_private_key().len(), 32);
}

#[test]
fn a_sealed_message_opens_only_unchanged() {
    let (_dir, _authority, ca_member, edge) = cluster();
    let message = br#"{"type":"node_meta","sender":"edge-1"}"#;
    let sealed = signed::seal(&edge.identity(), message);
    let (member, opened) = signed::open(&ca_member, &sealed).unwrap();
    assert_eq!(member.node_id.as_str(), "edge-1");
    assert_eq!(opened, message);
    let text = String::from_utf8(sealed).unwrap();
    let altered = text.replace("edge-1", "ca-node");
    assert_eq!(
        signed::open(&ca_member, altered.as_bytes()).unwrap_err(),
        TrustRefusal::BadSignature
    );
    assert!(signed::open(&ca_member, message).is_err());
}

#[test]
fn keys_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, authority, _ca_member, edge) = cluster();
    for path in [
        authority.files().ca_key(),
        authority.files().node_key(),
        edge.files().node_key(),
    ] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }
}

#[test]
fn a_joined_node_cannot_make_a_ca_over_its_identity() {
    let (_dir, _authority, _ca_member, edge) = cluster();
    let before = std::fs::read_to_string(edge.files().node_cert()).unwrap();
    assert!(ClusterAuthority::init(edge.files(), "edge-1", DAY).is_err());
    assert_eq!(
        std::fs::read_to_string(edge.files().node_cert()).unwrap(),
        before
    );
}
