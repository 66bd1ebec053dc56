//! Image references and pull progress.

use bollard::models::CreateImageInfo;
use bollard::query_parameters::CreateImageOptions;
use motey_val::PullProgress;

/// Pull options for `reference`. Docker pulls *every* tag of a repository when the tag is
/// left out, so a reference without tag or digest pulls `latest`, as `docker pull` does.
pub(crate) fn pull_options(reference: &str) -> CreateImageOptions {
    let (from_image, tag) = split_reference(reference);
    CreateImageOptions {
        from_image: Some(from_image.to_owned()),
        tag: Some(tag.to_owned()),
        ..Default::default()
    }
}

/// Splits `registry:port/repo:tag` into repository and tag; a digest reference
/// (`repo@sha256:...`) stays whole, with the digest as its "tag".
fn split_reference(reference: &str) -> (&str, &str) {
    if let Some((repository, digest)) = reference.split_once('@') {
        return (repository, digest);
    }
    // A colon after the last slash separates the tag; one before it is a registry port.
    let name_start = reference.rfind('/').map_or(0, |slash| slash + 1);
    match reference[name_start..].rfind(':') {
        Some(colon) => {
            let colon = name_start + colon;
            (&reference[..colon], &reference[colon + 1..])
        }
        None => (reference, "latest"),
    }
}

/// The engine-neutral form of one progress message of a pull.
pub(crate) fn progress(image: &str, info: &CreateImageInfo) -> Option<PullProgress> {
    let status = info.status.clone()?;
    let status = match &info.id {
        // Layer messages name the layer, e.g. `a3ed95ca: Downloading`.
        Some(layer) if !status.contains(layer.as_str()) => format!("{layer}: {status}"),
        _ => status,
    };
    let detail = info.progress_detail.as_ref();
    let non_negative = |value: Option<i64>| value.and_then(|v| u64::try_from(v).ok());
    Some(PullProgress {
        image: image.to_owned(),
        status,
        current: non_negative(detail.and_then(|d| d.current)),
        total: non_negative(detail.and_then(|d| d.total)).filter(|total| *total > 0),
    })
}

#[cfg(test)]
mod tests {
    use bollard::models::ProgressDetail;

    use super::*;

    #[test]
    fn references_split_into_repository_and_tag() {
        assert_eq!(split_reference("alpine"), ("alpine", "latest"));
        assert_eq!(split_reference("alpine:3.19"), ("alpine", "3.19"));
        assert_eq!(
            split_reference("127.0.0.1:5000/testbox"),
            ("127.0.0.1:5000/testbox", "latest")
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/motey/testbox:t1"),
            ("127.0.0.1:5000/motey/testbox", "t1")
        );
        assert_eq!(split_reference("repo@sha256:abcd"), ("repo", "sha256:abcd"));
    }

    #[test]
    fn pull_options_always_name_a_tag() {
        let options = pull_options("registry.local:5000/meter-reader");
        assert_eq!(
            options.from_image.as_deref(),
            Some("registry.local:5000/meter-reader")
        );
        assert_eq!(options.tag.as_deref(), Some("latest"));
    }

    #[test]
    fn layer_progress_names_the_layer_and_sizes() {
        let info = CreateImageInfo {
            id: Some("a3ed95ca".into()),
            status: Some("Downloading".into()),
            progress_detail: Some(ProgressDetail {
                current: Some(512),
                total: Some(2048),
            }),
            ..Default::default()
        };
        let progress = progress("x:1", &info).unwrap();
        assert_eq!(progress.status, "a3ed95ca: Downloading");
        assert_eq!((progress.current, progress.total), (Some(512), Some(2048)));
    }

    #[test]
    fn plain_status_has_no_sizes() {
        let info = CreateImageInfo {
            id: Some("t1".into()),
            status: Some("Pulling from testbox".into()),
            progress_detail: Some(ProgressDetail::default()),
            ..Default::default()
        };
        let progress = progress("x:t1", &info).unwrap();
        assert_eq!(progress.status, "t1: Pulling from testbox");
        assert_eq!((progress.current, progress.total), (None, None));
    }

    #[test]
    fn messages_without_status_are_not_progress() {
        assert!(progress("x", &CreateImageInfo::default()).is_none());
    }
}
