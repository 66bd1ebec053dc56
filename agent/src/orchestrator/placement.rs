//! Where an image runs: here when this node offers every capability it needs, otherwise
//! on an alive peer that does, preferring the peer already running the fewest of our
//! images so that load spreads.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use futures::future::join_all;

use super::remote::RemoteNodes;
use crate::domain::{ImageBlueprint, NodeId};

/// The outcome of placing one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// This node has everything the image needs.
    Here,
    /// Peers that have everything, best first.
    Peers(Vec<NodeId>),
    /// Nobody offers all capabilities; the ones this node lacks are named.
    Nowhere { missing: Vec<String> },
}

/// How long a peer may take to say what it offers before it is passed over.
const CAPABILITY_TIMEOUT: Duration = Duration::from_secs(5);

/// Decides where `image` can run. `local` are this node's capability names and
/// `placed_on` counts the images this node already placed on each peer.
pub async fn place(
    image: &ImageBlueprint,
    local: &BTreeSet<String>,
    remote: &dyn RemoteNodes,
    placed_on: &HashMap<NodeId, usize>,
) -> Placement {
    let missing: Vec<String> = image
        .capabilities
        .iter()
        .filter(|capability| !local.contains(*capability))
        .cloned()
        .collect();
    if missing.is_empty() {
        return Placement::Here;
    }
    let peers = remote.alive_peers().await;
    let answers = join_all(peers.iter().map(|peer| async move {
        let offered = tokio::time::timeout(CAPABILITY_TIMEOUT, remote.capabilities(&peer.id)).await;
        match offered {
            Ok(Ok(capabilities)) => {
                let names: BTreeSet<String> =
                    capabilities.into_iter().map(|c| c.capability).collect();
                image
                    .capabilities
                    .iter()
                    .all(|needed| names.contains(needed))
                    .then(|| peer.id.clone())
            }
            Ok(Err(error)) => {
                tracing::debug!(peer = %peer.id, %error, "peer did not say what it offers");
                None
            }
            Err(_) => {
                tracing::debug!(peer = %peer.id, "peer took too long to say what it offers");
                None
            }
        }
    }))
    .await;
    let mut capable: Vec<NodeId> = answers.into_iter().flatten().collect();
    if capable.is_empty() {
        return Placement::Nowhere { missing };
    }
    capable.sort_by_key(|node| (placed_on.get(node).copied().unwrap_or(0), node.clone()));
    Placement::Peers(capable)
}
