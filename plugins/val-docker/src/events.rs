//! Docker's event stream, narrowed to the lifecycle of managed containers.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::EventsOptions;
use motey_val::{labels, EngineEvent};

/// Container actions the orchestrator reacts to.
pub(crate) const WATCHED_ACTIONS: [&str; 6] = ["die", "start", "stop", "destroy", "oom", "restart"];

/// Event attributes Docker adds next to the container's labels.
const NON_LABEL_ATTRIBUTES: [&str; 5] = ["name", "image", "exitCode", "signal", "execDuration"];

/// Subscription filter: container events of the watched actions, only for containers
/// labelled as managed. `since` (Unix seconds, fractional) makes Docker replay what happened
/// between the call and the moment the stream is first polled.
pub(crate) fn subscription(since: String) -> EventsOptions {
    let filters = HashMap::from([
        ("type".to_owned(), vec!["container".to_owned()]),
        ("label".to_owned(), vec![labels::MANAGED.to_owned()]),
        (
            "event".to_owned(),
            WATCHED_ACTIONS
                .iter()
                .map(|action| (*action).to_owned())
                .collect(),
        ),
    ]);
    EventsOptions {
        since: Some(since),
        until: None,
        filters: Some(filters),
    }
}

/// Turns one Docker event into an [`EngineEvent`]; `None` for events that are not about a
/// watched action of a managed container (Docker's filter should already exclude those).
pub(crate) fn engine_event(message: EventMessage) -> Option<EngineEvent> {
    if message.typ != Some(EventMessageTypeEnum::CONTAINER) {
        return None;
    }
    // Docker ≥ 1.22 may append details, e.g. `exec_start: sh`; only the verb matters here.
    let action = message.action?.split(':').next()?.trim().to_owned();
    if !WATCHED_ACTIONS.contains(&action.as_str()) {
        return None;
    }
    let actor = message.actor?;
    let attributes = actor.attributes.unwrap_or_default();
    if !attributes.contains_key(labels::MANAGED) {
        return None;
    }
    let exit_code = attributes
        .get("exitCode")
        .and_then(|code| code.parse().ok());
    let labels: BTreeMap<String, String> = attributes
        .into_iter()
        .filter(|(key, _)| !NON_LABEL_ATTRIBUTES.contains(&key.as_str()))
        .collect();
    Some(EngineEvent::ContainerChanged {
        container_id: actor.id?,
        labels,
        action,
        exit_code,
    })
}

#[cfg(test)]
mod tests {
    use bollard::models::EventActor;

    use super::*;

    fn message(action: &str, attributes: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            typ: Some(EventMessageTypeEnum::CONTAINER),
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some("c0ffee".into()),
                attributes: Some(
                    attributes
                        .iter()
                        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                        .collect(),
                ),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn die_carries_exit_code_and_only_labels() {
        let event = engine_event(message(
            "die",
            &[
                (labels::MANAGED, "true"),
                (labels::SERVICE_ID, "s1"),
                ("exitCode", "3"),
                ("name", "svc-web"),
                ("image", "motey/testbox"),
            ],
        ))
        .unwrap();
        let EngineEvent::ContainerChanged {
            container_id,
            labels: event_labels,
            action,
            exit_code,
        } = event;
        assert_eq!(container_id, "c0ffee");
        assert_eq!(action, "die");
        assert_eq!(exit_code, Some(3));
        assert_eq!(event_labels.len(), 2);
        assert_eq!(event_labels[labels::SERVICE_ID], "s1");
    }

    #[test]
    fn unmanaged_and_unwatched_events_are_dropped() {
        assert_eq!(engine_event(message("die", &[("exitCode", "1")])), None);
        assert_eq!(
            engine_event(message("exec_start: sh", &[(labels::MANAGED, "true")])),
            None
        );
        let mut network = message("start", &[(labels::MANAGED, "true")]);
        network.typ = Some(EventMessageTypeEnum::NETWORK);
        assert_eq!(engine_event(network), None);
    }

    #[test]
    fn start_has_no_exit_code() {
        let EngineEvent::ContainerChanged {
            action, exit_code, ..
        } = engine_event(message("start", &[(labels::MANAGED, "true")])).unwrap();
        assert_eq!((action.as_str(), exit_code), ("start", None));
    }

    #[test]
    fn subscription_filters_managed_lifecycle_events() {
        let options = subscription("1700000000.5".into());
        let filters = options.filters.unwrap();
        assert_eq!(filters["label"], vec![labels::MANAGED.to_string()]);
        assert_eq!(filters["type"], vec!["container".to_string()]);
        assert_eq!(filters["event"].len(), WATCHED_ACTIONS.len());
        assert_eq!(options.since.as_deref(), Some("1700000000.5"));
    }
}
