//! The Noise session of one peer connection: `Noise_XX_25519_ChaChaPoly_BLAKE2s`, its
//! handshake carried in ZeroMQ messages, then every request and reply sealed with the
//! session's keys. Each side's handshake payload is its [`SessionTrust`] proof that its
//! static key belongs to its node, so the session is with one authenticated node.
//!
//! XX rather than IK: the initiator need not know the responder's static key in
//! advance (discovery announces none), both static keys travel encrypted, and the extra
//! half round trip is paid once per pooled connection (the third handshake message rides
//! with the first request). See `PROTOCOL.md` for the framing.

use bytes::Bytes;
use snow::{HandshakeState, TransportState};

use super::session_trust::{SessionTrust, TrustRefusal};
use crate::domain::NodeId;

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";

/// Bound into the handshake hash: a session of another protocol (or version) fails.
pub const PROLOGUE: &[u8] = b"motey-peer/2";

/// The first frame of every message names what the others hold.
pub mod label {
    /// Client: Noise message 1 (`-> e`).
    pub const HELLO: &[u8] = b"hello";
    /// Server: Noise message 2 (`<- e, ee, s, es`, payload the server's proof).
    pub const WELCOME: &[u8] = b"welcome";
    /// Client: Noise message 3 (`-> s, se`, payload the client's proof), then the first
    /// request sealed.
    pub const FINISH: &[u8] = b"finish";
    /// Client: a request sealed in the session.
    pub const REQUEST: &[u8] = b"request";
    /// Server: a reply sealed in the session.
    pub const REPLY: &[u8] = b"reply";
    /// Server: a refusal outside any session (no session, handshake refused), in the clear.
    pub const ERROR: &[u8] = b"error";
}

/// Largest Noise message; longer plaintexts are sealed in several frames.
const MAX_NOISE_MESSAGE: usize = 65_535;
const TAG_LEN: usize = 16;
const MAX_CHUNK: usize = MAX_NOISE_MESSAGE - TAG_LEN;

/// Why a session could not be made or a message not opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoiseError {
    #[error("Noise handshake failed: {0}")]
    Handshake(String),
    #[error(transparent)]
    Trust(#[from] TrustRefusal),
    #[error("message cannot be opened in this session (altered, replayed or out of order)")]
    Unreadable,
}

fn handshake_error(error: snow::Error) -> NoiseError {
    NoiseError::Handshake(error.to_string())
}

/// The X25519 public key of a static private key.
pub fn static_public(private: &[u8; 32]) -> [u8; 32] {
    curve25519_dalek::MontgomeryPoint::mul_base_clamped(*private).to_bytes()
}

fn builder(private: &[u8; 32]) -> Result<snow::Builder<'_>, NoiseError> {
    let params = NOISE_PARAMS
        .parse()
        .expect("the Noise protocol name is valid");
    snow::Builder::new(params)
        .local_private_key(private)
        .and_then(|builder| builder.prologue(PROLOGUE))
        .map_err(handshake_error)
}

/// The proof carried in a handshake payload, checked against the static key the
/// handshake authenticated.
fn verify_remote(
    state: &HandshakeState,
    trust: &dyn SessionTrust,
    proof: &[u8],
) -> Result<NodeId, NoiseError> {
    let remote: [u8; 32] = state
        .get_remote_static()
        .and_then(|key| key.try_into().ok())
        .ok_or_else(|| NoiseError::Handshake("no remote static key".into()))?;
    Ok(trust.verify_peer(&remote, proof)?)
}

/// The client's side of a handshake, between its hello and the server's welcome.
pub struct Initiator {
    state: HandshakeState,
}

impl Initiator {
    /// Starts a handshake: the state and the hello message (`-> e`).
    pub fn start(trust: &dyn SessionTrust) -> Result<(Initiator, Vec<u8>), NoiseError> {
        let private = trust.static_private_key();
        let mut state = builder(&private)?
            .build_initiator()
            .map_err(handshake_error)?;
        let mut hello = vec![0u8; 64];
        let len = state
            .write_message(&[], &mut hello)
            .map_err(handshake_error)?;
        hello.truncate(len);
        Ok((Initiator { state }, hello))
    }

    /// Reads the welcome, checks the server's proof and writes the finishing message
    /// with this node's proof: the session, the server's node and the message to send.
    pub fn finish(
        mut self,
        trust: &dyn SessionTrust,
        welcome: &[u8],
    ) -> Result<(TransportState, NodeId, Vec<u8>), NoiseError> {
        let mut proof = vec![0u8; welcome.len()];
        let len = self
            .state
            .read_message(welcome, &mut proof)
            .map_err(handshake_error)?;
        let server = verify_remote(&self.state, trust, &proof[..len])?;
        let own = trust.handshake_proof(&static_public(&trust.static_private_key()));
        let mut finish = vec![0u8; own.len() + 128];
        let len = self
            .state
            .write_message(&own, &mut finish)
            .map_err(handshake_error)?;
        finish.truncate(len);
        let session = self.state.into_transport_mode().map_err(handshake_error)?;
        Ok((session, server, finish))
    }
}

/// The server's side of a handshake, between its welcome and the client's finish.
pub struct Responder {
    state: HandshakeState,
}

impl Responder {
    /// Reads a hello and writes the welcome with this node's proof.
    pub fn welcome(
        trust: &dyn SessionTrust,
        hello: &[u8],
    ) -> Result<(Responder, Vec<u8>), NoiseError> {
        let private = trust.static_private_key();
        let mut state = builder(&private)?
            .build_responder()
            .map_err(handshake_error)?;
        let mut ignored = vec![0u8; hello.len()];
        state
            .read_message(hello, &mut ignored)
            .map_err(handshake_error)?;
        let own = trust.handshake_proof(&static_public(&private));
        let mut welcome = vec![0u8; own.len() + 128];
        let len = state
            .write_message(&own, &mut welcome)
            .map_err(handshake_error)?;
        welcome.truncate(len);
        Ok((Responder { state }, welcome))
    }

    /// Reads the client's finishing message and checks its proof: the session and the
    /// client's node.
    pub fn finish(
        mut self,
        trust: &dyn SessionTrust,
        finish: &[u8],
    ) -> Result<(TransportState, NodeId), NoiseError> {
        let mut proof = vec![0u8; finish.len()];
        let len = self
            .state
            .read_message(finish, &mut proof)
            .map_err(handshake_error)?;
        let client = verify_remote(&self.state, trust, &proof[..len])?;
        let session = self.state.into_transport_mode().map_err(handshake_error)?;
        Ok((session, client))
    }
}

/// Seals a plaintext as frames of at most one Noise message each.
pub fn seal(session: &mut TransportState, plaintext: &[u8]) -> Vec<Bytes> {
    let mut frames = Vec::with_capacity(plaintext.len() / MAX_CHUNK + 1);
    // An empty plaintext is one empty chunk, so that every message has a frame to open.
    let chunks: Box<dyn Iterator<Item = &[u8]>> = if plaintext.is_empty() {
        Box::new(std::iter::once(plaintext))
    } else {
        Box::new(plaintext.chunks(MAX_CHUNK))
    };
    for chunk in chunks {
        let mut sealed = vec![0u8; chunk.len() + TAG_LEN];
        let len = session
            .write_message(chunk, &mut sealed)
            .expect("a chunk fits one Noise message");
        sealed.truncate(len);
        frames.push(Bytes::from(sealed));
    }
    frames
}

/// Opens the frames [`seal`] made, in order; `limit` bounds the plaintext.
pub fn open(
    session: &mut TransportState,
    frames: &[Bytes],
    limit: usize,
) -> Result<Vec<u8>, NoiseError> {
    let total: usize = frames.iter().map(Bytes::len).sum();
    if frames.is_empty() || total > limit + frames.len() * TAG_LEN {
        return Err(NoiseError::Unreadable);
    }
    // Each frame opens in place at the end of the plaintext, without a scratch buffer.
    let mut plaintext = Vec::with_capacity(total);
    for frame in frames {
        let start = plaintext.len();
        plaintext.resize(start + frame.len(), 0);
        let len = session
            .read_message(frame, &mut plaintext[start..])
            .map_err(|_| NoiseError::Unreadable)?;
        plaintext.truncate(start + len);
    }
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::cluster_key_trust::ClusterKeyTrust;
    use crate::peer::ClusterKey;

    fn trust(node: &str, secret: &str, private: u8) -> ClusterKeyTrust {
        ClusterKeyTrust::new(
            NodeId(node.into()),
            ClusterKey::from_secret(secret),
            [private; 32],
        )
    }

    fn sessions(
        client: &ClusterKeyTrust,
        server: &ClusterKeyTrust,
    ) -> Result<(TransportState, TransportState), NoiseError> {
        let (initiator, hello) = Initiator::start(client)?;
        let (responder, welcome) = Responder::welcome(server, &hello)?;
        let (client_session, server_node, finish) = initiator.finish(client, &welcome)?;
        assert_eq!(server_node, server.node_id());
        let (server_session, client_node) = responder.finish(server, &finish)?;
        assert_eq!(client_node, client.node_id());
        Ok((client_session, server_session))
    }

    #[test]
    fn a_session_carries_long_messages_and_refuses_replays() {
        let secret = "the cluster secret of the tests";
        let (mut client, mut server) =
            sessions(&trust("a", secret, 1), &trust("b", secret, 2)).unwrap();
        let long: Vec<u8> = (0..200_000u32).map(|n| n as u8).collect();
        let frames = seal(&mut client, &long);
        assert_eq!(frames.len(), 4);
        assert_eq!(open(&mut server, &frames, 1 << 20).unwrap(), long);
        assert_eq!(
            open(&mut server, &frames, 1 << 20),
            Err(NoiseError::Unreadable)
        );
        let empty = seal(&mut server, b"");
        assert_eq!(open(&mut client, &empty, 10).unwrap(), b"");
        let too_long = seal(&mut client, &long);
        assert_eq!(
            open(&mut server, &too_long, 1000),
            Err(NoiseError::Unreadable)
        );
    }

    #[test]
    fn a_node_of_another_cluster_gets_no_session() {
        let refused = sessions(
            &trust("a", "the cluster secret of the tests", 1),
            &trust("b", "another cluster's secret", 2),
        );
        assert!(matches!(
            refused,
            Err(NoiseError::Trust(TrustRefusal::NotProven))
        ));
    }

    /// A client that believes any server and proves its key with another cluster's key.
    struct Forger(ClusterKeyTrust, ClusterKeyTrust);

    impl SessionTrust for Forger {
        fn node_id(&self) -> NodeId {
            self.0.node_id()
        }
        fn static_private_key(&self) -> [u8; 32] {
            self.0.static_private_key()
        }
        fn handshake_proof(&self, local_static_public: &[u8; 32]) -> Vec<u8> {
            self.0.handshake_proof(local_static_public)
        }
        fn verify_peer(&self, remote: &[u8; 32], proof: &[u8]) -> Result<NodeId, TrustRefusal> {
            // Whatever the server proves, carry on as if it held.
            Ok(self
                .1
                .verify_peer(remote, proof)
                .unwrap_or(NodeId("b".into())))
        }
        fn still_trusted(&self, _: &NodeId) -> bool {
            true
        }
    }

    #[test]
    fn the_server_refuses_a_client_whose_proof_does_not_hold() {
        let server = trust("b", "the cluster secret of the tests", 2);
        let forger = Forger(
            trust("a", "another cluster's secret", 1),
            trust("a", "the cluster secret of the tests", 1),
        );
        let (initiator, hello) = Initiator::start(&forger).unwrap();
        let (responder, welcome) = Responder::welcome(&server, &hello).unwrap();
        let (_, _, finish) = initiator.finish(&forger, &welcome).unwrap();
        assert_eq!(
            responder.finish(&server, &finish).unwrap_err(),
            NoiseError::Trust(TrustRefusal::NotProven)
        );
    }

    #[test]
    fn the_static_public_key_is_the_one_noise_uses() {
        let keypair = snow::Builder::new(NOISE_PARAMS.parse().unwrap())
            .generate_keypair()
            .unwrap();
        let private: [u8; 32] = keypair.private.as_slice().try_into().unwrap();
        assert_eq!(
            static_public(&private).as_slice(),
            keypair.public.as_slice()
        );
    }
}
