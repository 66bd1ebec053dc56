//! Device access for administrators (FR-11): the log lines of an image and diagnostic
//! commands inside its container, wherever the image runs. For an image hosted on a peer,
//! the owner asks the peer over the peer protocol; the peer answers only the service's
//! owner. Following a peer-hosted image's log is polling: the owner asks again every
//! second for the lines after the last one it got.

use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use motey_val::{ExecOutput, ExecRequest, ImageState, LogLine, LogQuery, ValError};
use tracing::info;

use super::remote::RemoteError;
use super::{container, Orchestrator};
use crate::domain::{NodeId, ServiceId};

/// How often the owner asks a peer for new log lines while following them.
pub const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// Why device access to an image failed.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("image {image} of service {service} not found")]
    NotFound { service: ServiceId, image: String },
    #[error("image {image} has no container (state {state:?}); it runs nowhere yet")]
    NoContainer { image: String, state: ImageState },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Engine(#[from] ValError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Where an image runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// In this container on this node.
    Here(String),
    /// On this peer.
    Peer(NodeId),
}

impl Orchestrator {
    /// Where an image of a service runs: the container here, or the peer.
    pub async fn locate(&self, service: &ServiceId, image: &str) -> Result<Location, AccessError> {
        let not_found = || AccessError::NotFound {
            service: service.clone(),
            image: image.to_owned(),
        };
        let record = self
            .inner
            .store
            .services
            .get(service.as_str())?
            .ok_or_else(not_found)?;
        let image_record = record.image(image).ok_or_else(not_found)?;
        let me = &self.inner.node;
        match &image_record.node {
            Some(node) if node != me => Ok(Location::Peer(node.clone())),
            Some(_) => {
                // The engine's word wins over the record: during an update the newest
                // container of the image is the interesting one.
                let selector = container::selector(me, service.as_str(), image);
                let mut found = self.inner.engine.list(&selector).await?;
                found.sort_by_key(|c| c.state != ImageState::Running);
                found
                    .into_iter()
                    .next()
                    .map(|c| Location::Here(c.id))
                    .or_else(|| image_record.container_id.clone().map(Location::Here))
                    .ok_or(AccessError::NoContainer {
                        image: image.to_owned(),
                        state: image_record.state,
                    })
            }
            None => Err(AccessError::NoContainer {
                image: image.to_owned(),
                state: image_record.state,
            }),
        }
    }

    /// The latest log lines of an image.
    pub async fn image_logs(
        &self,
        service: &ServiceId,
        image: &str,
        query: LogQuery,
    ) -> Result<(Location, Vec<LogLine>), AccessError> {
        let location = self.locate(service, image).await?;
        let lines = match &location {
            Location::Here(container) => self.inner.engine.log_lines(container, &query).await?,
            Location::Peer(node) => {
                self.inner
                    .remote
                    .image_logs(node, service, image, query)
                    .await?
            }
        };
        Ok((location, lines))
    }

    /// The last `tail` log lines of an image, then each new one, until the stream is
    /// dropped (the client went away) or the container's output ends.
    pub async fn follow_image_logs(
        &self,
        service: &ServiceId,
        image: &str,
        tail: usize,
    ) -> Result<BoxStream<'static, Result<LogLine, AccessError>>, AccessError> {
        match self.locate(service, image).await? {
            Location::Here(container) => Ok(self
                .inner
                .engine
                .follow_logs(&container, tail)
                .map(|line| line.map_err(AccessError::from))
                .boxed()),
            Location::Peer(node) => {
                let remote = self.inner.remote.clone();
                let service = service.clone();
                let image = image.to_owned();
                // The cursor is the time of the last line seen; the first request asks
                // for the tail.
                let first = LogQuery {
                    tail,
                    since_ns: None,
                };
                let polls = stream::unfold((Some(first), None::<i64>), move |(query, cursor)| {
                    let remote = remote.clone();
                    let (node, service, image) = (node.clone(), service.clone(), image.clone());
                    async move {
                        let query = match query {
                            Some(query) => query,
                            None => {
                                tokio::time::sleep(FOLLOW_POLL).await;
                                LogQuery {
                                    tail: 10_000,
                                    since_ns: cursor,
                                }
                            }
                        };
                        match remote.image_logs(&node, &service, &image, query).await {
                            Ok(lines) => {
                                let next = lines.iter().filter_map(|l| l.at_ns).max().or(cursor);
                                Some((Ok(lines), (None, next)))
                            }
                            Err(error) => Some((Err(AccessError::from(error)), (None, cursor))),
                        }
                    }
                });
                Ok(polls
                    .flat_map(|batch| match batch {
                        Ok(lines) => stream::iter(lines.into_iter().map(Ok)).boxed(),
                        Err(error) => stream::iter([Err(error)]).boxed(),
                    })
                    .boxed())
            }
        }
    }

    /// Runs a diagnostic command in an image's container, here or on its peer.
    pub async fn image_exec(
        &self,
        service: &ServiceId,
        image: &str,
        exec: ExecRequest,
    ) -> Result<(Location, ExecOutput), AccessError> {
        let location = self.locate(service, image).await?;
        let output = match &location {
            Location::Here(container) => self.inner.engine.exec(container, &exec).await?,
            Location::Peer(node) => {
                self.inner
                    .remote
                    .image_exec(node, service, image, exec)
                    .await?
            }
        };
        Ok((location, output))
    }

    /// Checks that `requester` owns the service of an image this node hosts, and finds
    /// its container. A service this node owns itself is never a peer's to access.
    async fn hosted_container(
        &self,
        requester: &NodeId,
        service: &ServiceId,
        image: &str,
    ) -> Result<String, AccessError> {
        let owner = self
            .inner
            .store
            .services
            .get(service.as_str())?
            .map(|record| record.owner)
            .ok_or_else(|| AccessError::NotFound {
                service: service.clone(),
                image: image.to_owned(),
            })?;
        if owner == self.inner.node || &owner != requester {
            return Err(AccessError::Refused(format!(
                "service {service} belongs to node {owner}; only it may access its images"
            )));
        }
        match self.locate(service, image).await? {
            Location::Here(container) => Ok(container),
            Location::Peer(node) => Err(AccessError::Refused(format!(
                "image {image} runs on node {node}, not here"
            ))),
        }
    }

    /// A peer (the owner) asks for the log lines of an image hosted here.
    pub async fn hosted_image_logs(
        &self,
        requester: &NodeId,
        service: &ServiceId,
        image: &str,
        query: LogQuery,
    ) -> Result<Vec<LogLine>, AccessError> {
        let container = self.hosted_container(requester, service, image).await?;
        let mut lines = self.inner.engine.log_lines(&container, &query).await?;
        // Keep the reply inside one envelope: the newest lines win.
        let mut bytes = 0;
        let keep = lines
            .iter()
            .rev()
            .take_while(|line| {
                bytes += line.text.len() + 64;
                bytes <= crate::peer::messages::MAX_LOG_REPLY_BYTES
            })
            .count();
        lines.drain(..lines.len() - keep);
        Ok(lines)
    }

    /// A peer (the owner) runs a diagnostic command in an image hosted here, within this
    /// node's own limits.
    pub async fn hosted_image_exec(
        &self,
        requester: &NodeId,
        service: &ServiceId,
        image: &str,
        mut exec: ExecRequest,
        limits: &crate::config::Access,
    ) -> Result<ExecOutput, AccessError> {
        if !limits.allow_exec {
            return Err(AccessError::Refused(
                "diagnostic commands are not allowed on this node ([SECURITY] allow_exec)".into(),
            ));
        }
        let container = self.hosted_container(requester, service, image).await?;
        exec.timeout_secs = exec.timeout_secs.min(limits.exec_timeout_secs);
        exec.max_output_bytes = exec.max_output_bytes.min(limits.exec_max_output);
        info!(
            target: "motey::audit",
            who = %requester, via = "peer protocol", %service, %image, %container,
            command = ?exec.command, "diagnostic command run for the owner node"
        );
        Ok(self.inner.engine.exec(&container, &exec).await?)
    }
}
