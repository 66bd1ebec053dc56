//! Client of the Data API over mutual TLS: the device proves itself with its client
//! certificate and trusts only the survey CA for the server.

use std::path::Path;
use std::time::Duration;

use crate::consent::ConsentState;
use crate::store::Measurement;

/// Largest batch the Data API accepts.
pub const MAX_BATCH: usize = 1000;

/// Environment variable in which the Motey agent that started the container names its
/// version; the reader passes it on when it is set.
pub const AGENT_VERSION_ENV: &str = "MOTEY_AGENT_VERSION";

/// The `X-Component-Versions` header (FR-09): this reader, its SML decoder (the crate's
/// own [`crate::sml`] module, built with it) and the agent, if it named its version.
pub fn component_versions(agent: Option<&str>) -> String {
    let version = env!("CARGO_PKG_VERSION");
    let mut header = format!("meter-reader={version},sml-decoder={version}");
    let agent = agent.map(str::trim).filter(|v| {
        !v.is_empty()
            && v.len() <= 64
            && v.chars()
                .all(|c| c.is_ascii_graphic() && c != '=' && c != ',')
    });
    if let Some(agent) = agent {
        header.push_str(",motey-agent=");
        header.push_str(agent);
    }
    header
}

/// Failures talking to the Data API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A certificate or key file cannot be read or used.
    #[error("tls setup: {path}: {message}")]
    Tls {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The request did not get an HTTP answer (connection, TLS handshake, timeout).
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
    /// The Data API answered with an error.
    #[error("data api answered {status}: {code} ({message})")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The `error` code of the body.
        code: String,
        /// The `message` of the body.
        message: String,
        /// The `field` of the body: the offending input, e.g. `measurements[3].meter`.
        field: Option<String>,
    },
}

impl ApiError {
    /// The consent state an answer implies (403 consent_revoked / consent_not_granted).
    pub fn consent(&self) -> Option<ConsentState> {
        match self {
            ApiError::Rejected {
                status: 403, code, ..
            } if code == "consent_revoked" => Some(ConsentState::Revoked),
            ApiError::Rejected {
                status: 403, code, ..
            } if code == "consent_not_granted" => Some(ConsentState::NotGranted),
            _ => None,
        }
    }

    /// The position in the batch of a measurement whose meter the Data API does not know
    /// for this household (403 `foreign_meter`, field `measurements[i].meter`).
    pub fn foreign_meter_at(&self) -> Option<usize> {
        match self {
            ApiError::Rejected {
                status: 403,
                code,
                field: Some(field),
                ..
            } if code == "foreign_meter" => field
                .strip_prefix("measurements[")?
                .strip_suffix("].meter")?
                .parse()
                .ok(),
            _ => None,
        }
    }
}

/// The Data API's acknowledgement of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct Ack {
    /// Measurements stored now.
    pub accepted: u64,
    /// Measurements that were already stored (retries).
    #[serde(default)]
    pub duplicates: u64,
}

#[derive(serde::Deserialize)]
struct ConsentBody {
    state: ConsentState,
}

#[derive(serde::Deserialize)]
struct HouseholdBody {
    consent: ConsentBody,
}

#[derive(serde::Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    field: Option<String>,
}

/// The Data API client.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    /// The `X-Component-Versions` header sent with every request.
    versions: String,
}

fn read(path: &Path) -> Result<Vec<u8>, ApiError> {
    std::fs::read(path).map_err(|e| ApiError::Tls {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

impl ApiClient {
    /// A client for `base` (`https://host:8443`) with the device's identity.
    pub fn new(
        base: &str,
        ca_cert: &Path,
        client_cert: &Path,
        client_key: &Path,
    ) -> Result<Self, ApiError> {
        let ca = reqwest::Certificate::from_pem(&read(ca_cert)?).map_err(|e| ApiError::Tls {
            path: ca_cert.display().to_string(),
            message: e.to_string(),
        })?;
        let mut identity_pem = read(client_cert)?;
        identity_pem.push(b'\n');
        identity_pem.extend(read(client_key)?);
        let identity = reqwest::Identity::from_pem(&identity_pem).map_err(|e| ApiError::Tls {
            path: client_key.display().to_string(),
            message: e.to_string(),
        })?;
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .identity(identity)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("meter-reader/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            versions: component_versions(std::env::var(AGENT_VERSION_ENV).ok().as_deref()),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.base, path))
            .header("X-Component-Versions", &self.versions)
    }

    async fn check(resp: reqwest::Response) -> Result<reqwest::Response, ApiError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body: ErrorBody = resp.json().await.unwrap_or_default();
        Err(ApiError::Rejected {
            status: status.as_u16(),
            code: body.error,
            message: body.message,
            field: body.field,
        })
    }

    /// `GET /household/consent`; a device without the `consent` scope learns the state
    /// from `GET /household` instead, which carries it too.
    pub async fn consent(&self) -> Result<ConsentState, ApiError> {
        let resp = self
            .request(reqwest::Method::GET, "/household/consent")
            .send()
            .await?;
        match Self::check(resp).await {
            Ok(resp) => Ok(resp.json::<ConsentBody>().await?.state),
            Err(ApiError::Rejected {
                status: 403, code, ..
            }) if code == "insufficient_scope" => {
                let resp = self
                    .request(reqwest::Method::GET, "/household")
                    .send()
                    .await?;
                let body: HouseholdBody = Self::check(resp).await?.json().await?;
                Ok(body.consent.state)
            }
            Err(e) => Err(e),
        }
    }

    /// Any participant endpoint, answered as it came: the status and the JSON body
    /// (`null` if there is none). Only a missing answer is an error. The device frontend
    /// shows the Data API's own answers this way.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
    ) -> Result<(u16, serde_json::Value), ApiError> {
        let resp = self.request(method, path_and_query).send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok((status, body))
    }

    /// `POST /household/meter/measurement` with up to [`MAX_BATCH`] measurements.
    pub async fn upload(&self, batch: &[Measurement]) -> Result<Ack, ApiError> {
        let resp = self
            .request(reqwest::Method::POST, "/household/meter/measurement")
            .json(&serde_json::json!({ "measurements": batch }))
            .send()
            .await?;
        Ok(Self::check(resp).await?.json().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_versions_name_what_runs() {
        let own = env!("CARGO_PKG_VERSION");
        assert_eq!(
            component_versions(None),
            format!("meter-reader={own},sml-decoder={own}")
        );
        assert_eq!(
            component_versions(Some(" 0.9.1 ")),
            format!("meter-reader={own},sml-decoder={own},motey-agent=0.9.1")
        );
        // A value that would break the header's name=version list is left out.
        assert_eq!(component_versions(Some("1,x=2")), component_versions(None));
    }

    #[test]
    fn forbidden_answers_name_the_consent() {
        let e = |status, code: &str| ApiError::Rejected {
            status,
            code: code.into(),
            message: String::new(),
            field: None,
        };
        assert_eq!(
            e(403, "consent_revoked").consent(),
            Some(ConsentState::Revoked)
        );
        assert_eq!(
            e(403, "consent_not_granted").consent(),
            Some(ConsentState::NotGranted)
        );
        assert_eq!(e(403, "foreign_meter").consent(), None);
        assert_eq!(e(500, "consent_revoked").consent(), None);
    }

    #[test]
    fn foreign_meters_are_located_in_the_batch() {
        let e = |code: &str, field: Option<&str>| ApiError::Rejected {
            status: 403,
            code: code.into(),
            message: String::new(),
            field: field.map(str::to_owned),
        };
        assert_eq!(
            e("foreign_meter", Some("measurements[17].meter")).foreign_meter_at(),
            Some(17)
        );
        assert_eq!(e("foreign_meter", None).foreign_meter_at(), None);
        assert_eq!(
            e("foreign_meter", Some("measurements[x].meter")).foreign_meter_at(),
            None
        );
        assert_eq!(
            e("insufficient_scope", Some("measurements[1].meter")).foreign_meter_at(),
            None
        );
    }

    #[test]
    fn missing_certificate_files_are_named() {
        let err = ApiClient::new(
            "https://localhost:8443",
            Path::new("/nonexistent/ca.pem"),
            Path::new("/nonexistent/device.pem"),
            Path::new("/nonexistent/device-key.pem"),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
