//! A Confluent-compatible Schema Registry (Confluent, Karapace, Apicurio's
//! ccompat API, Redpanda) over its REST API, through
//! `schema_registry_converter`.
//!
//! Used endpoints: `GET /schemas/ids/{id}` (writer schemas of framed
//! records), `GET /subjects/{subject}/versions/{version}` (writer schemas of
//! JSON events, in the version their `schema_version` names),
//! `POST /subjects/{subject}/versions` (derived tier schemas, idempotent),
//! and for start-up checks and reports `GET /subjects`,
//! `GET /subjects/{subject}/versions` and
//! `POST /compatibility/subjects/{subject}/versions/latest`. The engine
//! caches every answer, so each id or subject version is asked for once.
//!
//! Errors carry the decision the engine needs: 404 is
//! [`LookupError::NotFound`] (the record is poison), a connection failure, a
//! timeout, 429 or any 5xx is [`LookupError::Unavailable`] (wait and retry,
//! skip nothing), a refusal of the schema itself (409 incompatible, 422
//! invalid) is [`LookupError::Refused`] (the events that need it are
//! dead-lettered), and any other refusal (401, 403, …) is
//! [`LookupError::Rejected`] (an operator must act).
//!
//! The calls are `async`; the stream thread, which is not a worker of the
//! async runtime, waits for them with [`tokio::runtime::Handle::block_on`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use schema_registry_converter::async_impl::schema_registry::{
    get_all_subjects, get_all_versions, get_schema_by_id, perform_sr_call, post_schema, SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    RawError, SchemaType, SrCall, SuppliedSchema,
};
use thiserror::Error;

use crate::schema::{LookupError, SchemaLookup};
use crate::telemetry::{self, Metrics};

/// How to reach the registry.
#[derive(Debug, Clone, Default)]
pub struct ConfluentConfig {
    /// Base URLs, tried in order (e.g. `http://registry:8081`).
    pub urls: Vec<String>,
    /// Basic-auth user name.
    pub username: Option<String>,
    /// Basic-auth password.
    pub password: Option<String>,
    /// A PEM file of CA certificates to trust in addition to the system's.
    pub ca_file: Option<PathBuf>,
    /// A PEM file with the client certificate (mutual TLS).
    pub cert_file: Option<PathBuf>,
    /// A PEM file with the client certificate's PKCS#8 private key.
    pub key_file: Option<PathBuf>,
    /// Time limit of one request.
    pub timeout: Duration,
}

/// The registry settings cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// No URL.
    #[error("no schema registry URL is set")]
    NoUrl,
    /// A certificate or key file cannot be read or parsed.
    #[error("{path}: {message}")]
    Tls {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The client cannot be built.
    #[error("schema registry client: {0}")]
    Client(String),
}

/// The registry client.
#[derive(Debug, Clone)]
pub struct ConfluentRegistry {
    settings: SrSettings,
    /// The same HTTP client settings, for the calls the converter does not
    /// make (the compatibility check with its messages).
    http: reqwest::Client,
    urls: Vec<String>,
    auth: Option<(String, Option<String>)>,
    rt: tokio::runtime::Handle,
    metrics: Metrics,
}

/// The registry's verdict on a schema against a subject's latest version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compatibility {
    /// True when the subject would accept it (also when the subject does
    /// not exist yet: its first version is always accepted).
    pub compatible: bool,
    /// The registry's reasons, when it gives them.
    pub messages: Vec<String>,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::Tls {
        path: path.clone(),
        message: e.to_string(),
    })
}

/// An HTTP client builder with the TLS trust and identity of `config`.
fn client_builder(config: &ConfluentConfig) -> Result<reqwest::ClientBuilder, ConfigError> {
    let mut client = reqwest::Client::builder();
    if let Some(ca) = &config.ca_file {
        let pem = read(ca)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ConfigError::Tls {
            path: ca.clone(),
            message: e.to_string(),
        })?;
        for c in certs {
            client = client.add_root_certificate(c);
        }
    }
    match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => {
            let identity =
                reqwest::Identity::from_pkcs8_pem(&read(cert)?, &read(key)?).map_err(|e| {
                    ConfigError::Tls {
                        path: cert.clone(),
                        message: e.to_string(),
                    }
                })?;
            client = client.identity(identity);
        }
        (Some(p), None) | (None, Some(p)) => {
            return Err(ConfigError::Tls {
                path: p.clone(),
                message: "mutual TLS needs both the certificate and the key file".to_owned(),
            })
        }
        (None, None) => {}
    }
    Ok(client)
}

/// A registry URL without the user name and password it may carry, and
/// those (percent-decoded), so requests, logs and errors only ever show the
/// bare URL and the credentials travel as basic auth.
pub fn split_credentials(url: &str) -> (String, Option<(String, Option<String>)>) {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return (url.trim_end_matches('/').to_owned(), None);
    };
    if parsed.username().is_empty() && parsed.password().is_none() {
        return (url.trim_end_matches('/').to_owned(), None);
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let user = decode(parsed.username());
    let password = parsed.password().map(decode);
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    (
        parsed.as_str().trim_end_matches('/').to_owned(),
        Some((user, password)),
    )
}

impl ConfluentRegistry {
    /// A client for `config`, whose calls run on `rt`.
    ///
    /// # Errors
    /// [`ConfigError`] for a missing URL or unusable TLS files.
    pub fn new(
        config: &ConfluentConfig,
        rt: tokio::runtime::Handle,
        metrics: Metrics,
    ) -> Result<Self, ConfigError> {
        // Credentials written into a URL become basic auth (the flags win).
        let mut in_url = None;
        let urls: Vec<String> = config
            .urls
            .iter()
            .map(|u| {
                let (bare, creds) = split_credentials(u);
                in_url = in_url.take().or(creds);
                bare
            })
            .collect();
        let auth = match &config.username {
            Some(u) => Some((u.clone(), config.password.clone())),
            None => in_url,
        };
        let (first, rest) = urls.split_first().ok_or(ConfigError::NoUrl)?;
        let mut builder = SrSettings::new_builder(first.clone());
        for u in rest {
            builder.add_url(u.clone());
        }
        if let Some((user, password)) = &auth {
            builder.set_basic_authorization(user, password.as_deref());
        }
        builder.set_timeout(config.timeout);
        let http = client_builder(config)?
            .timeout(config.timeout)
            .build()
            .map_err(|e| ConfigError::Client(e.to_string()))?;
        let client = client_builder(config)?;
        let settings = builder
            .build_with(client)
            .map_err(|e| ConfigError::Client(e.to_string()))?;
        Ok(ConfluentRegistry {
            settings,
            http,
            urls,
            auth,
            rt,
            metrics,
        })
    }

    /// The first URL, for messages.
    pub fn url(&self) -> &str {
        self.urls.first().map_or("", String::as_str)
    }

    /// Asks the registry whether `subject` would accept `schema` as its
    /// next version (`POST /compatibility/subjects/{subject}/versions/latest?verbose=true`).
    /// A subject that does not exist yet accepts anything.
    ///
    /// # Errors
    /// [`LookupError`] when the registry cannot answer.
    pub async fn compatibility(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Compatibility, LookupError> {
        let body = serde_json::json!({ "schema": schema }).to_string();
        let mut last = LookupError::Unavailable("no registry URL".to_owned());
        for url in &self.urls {
            let mut req = self
                .http
                .post(format!(
                    "{url}/compatibility/subjects/{}/versions/latest?verbose=true",
                    encode_path(subject)
                ))
                .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                .header("Accept", "application/vnd.schemaregistry.v1+json")
                .body(body.clone());
            if let Some((user, password)) = &self.auth {
                req = req.basic_auth(user, password.as_deref());
            }
            let res = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    last = LookupError::Unavailable(format!("compatibility check: {e}"));
                    continue;
                }
            };
            let status = res.status().as_u16();
            let answer: serde_json::Value = res.json().await.unwrap_or_default();
            let messages = |v: &serde_json::Value| -> Vec<String> {
                v.get("messages")
                    .and_then(|m| m.as_array())
                    .map(|m| {
                        m.iter()
                            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            return match status {
                200 => Ok(Compatibility {
                    compatible: answer
                        .get("is_compatible")
                        .and_then(serde_json::Value::as_bool)
                        .unwrap_or(false),
                    messages: messages(&answer),
                }),
                // No subject (40401) or no version yet (40402): the first
                // version of a subject is always accepted.
                404 => Ok(Compatibility {
                    compatible: true,
                    messages: Vec::new(),
                }),
                409 | 422 => Ok(Compatibility {
                    compatible: false,
                    messages: vec![answer
                        .get("message")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("refused")
                        .to_owned()],
                }),
                s if s == 429 || s >= 500 => Err(LookupError::Unavailable(format!(
                    "compatibility check: HTTP {s}"
                ))),
                s => Err(LookupError::Rejected(format!(
                    "compatibility check: HTTP {s}: {}",
                    answer
                        .get("message")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("")
                ))),
            };
        }
        Err(last)
    }

    /// [`ConfluentRegistry::compatibility`], waited for on the client's
    /// runtime: for callers that are not async tasks (`check --schema`),
    /// like the [`SchemaLookup`] calls.
    ///
    /// # Errors
    /// [`LookupError`] when the registry cannot answer.
    pub fn compatibility_blocking(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Compatibility, LookupError> {
        self.rt.block_on(self.compatibility(subject, schema))
    }

    fn fail(&self, what: &str, e: &SRCError) -> LookupError {
        let status = status_of(e);
        let err = classify(e, status);
        let kind = match err {
            LookupError::NotFound => return err,
            LookupError::Unavailable(_) => "unavailable",
            LookupError::Refused(_) => "refused",
            LookupError::Rejected(_) => "rejected",
        };
        telemetry::registry_error(&self.metrics, kind, what, status);
        err
    }
}

/// The HTTP status of a failed call: from the registry's error code
/// (`40403` → 404) or the message; `None` when the call got no answer.
fn status_of(e: &SRCError) -> Option<u16> {
    let from_message = || {
        let at = e.error.find("status ")? + "status ".len();
        e.error.get(at..at + 3)?.parse().ok()
    };
    from_message().or_else(|| {
        std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<RawError>())
            .map(|r| r.error_code)
            .filter(|c| *c >= 10_000)
            .map(|c| (c / 100) as u16)
    })
}

/// The registry's own message of a failed call (`{"error_code", "message"}`).
fn registry_message(e: &SRCError) -> Option<String> {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<RawError>())
        .map(|r| r.message.clone())
        .filter(|m| !m.is_empty())
}

/// The decision for an error (see the module docs).
fn classify(e: &SRCError, status: Option<u16>) -> LookupError {
    // The message names the endpoint, the status and the registry's own
    // message (about schemas and subjects), never a record value.
    let message = match (status, registry_message(e)) {
        (Some(s), Some(m)) => format!("HTTP {s}: {m}"),
        (Some(s), None) => format!("HTTP {s}: {}", e.error),
        (None, _) => e.error.clone(),
    };
    match status {
        Some(404) => LookupError::NotFound,
        Some(429) => LookupError::Unavailable(message),
        Some(s) if s >= 500 => LookupError::Unavailable(message),
        Some(409 | 422) => LookupError::Refused(message),
        Some(_) => LookupError::Rejected(message),
        None if e.retriable => LookupError::Unavailable(message),
        None => LookupError::Rejected(message),
    }
}

impl SchemaLookup for ConfluentRegistry {
    fn schema_by_id(&mut self, id: u32) -> Result<Arc<str>, LookupError> {
        match self.rt.block_on(get_schema_by_id(id, &self.settings)) {
            Ok(s) if s.schema_type == SchemaType::Avro => Ok(Arc::from(s.schema)),
            Ok(_) => Err(LookupError::NotFound),
            Err(e) => Err(self.fail("schema by id", &e)),
        }
    }

    fn latest(&mut self, subject: &str) -> Result<(u32, Arc<str>), LookupError> {
        match self
            .rt
            .block_on(perform_sr_call(&self.settings, SrCall::GetLatest(subject)))
        {
            Ok(raw) => match (raw.id, raw.schema) {
                (Some(id), Some(schema))
                    if raw.schema_type.as_deref().is_none_or(|t| t == "AVRO") =>
                {
                    Ok((id, Arc::from(schema)))
                }
                (Some(_), Some(_)) => Err(LookupError::NotFound),
                _ => Err(self.fail(
                    "latest version",
                    &SRCError::non_retryable_without_cause("the answer has no id or no schema"),
                )),
            },
            Err(e) => Err(self.fail("latest version", &e)),
        }
    }

    fn version(&mut self, subject: &str, version: u32) -> Result<(u32, Arc<str>), LookupError> {
        match self.rt.block_on(perform_sr_call(
            &self.settings,
            SrCall::GetBySubjectAndVersion(subject, version),
        )) {
            Ok(raw) => match (raw.id, raw.schema) {
                (Some(id), Some(schema))
                    if raw.schema_type.as_deref().is_none_or(|t| t == "AVRO") =>
                {
                    Ok((id, Arc::from(schema)))
                }
                (Some(_), Some(_)) => Err(LookupError::NotFound),
                _ => Err(self.fail(
                    "subject version",
                    &SRCError::non_retryable_without_cause("the answer has no id or no schema"),
                )),
            },
            Err(e) => Err(self.fail("subject version", &e)),
        }
    }

    fn subjects(&mut self) -> Result<Vec<String>, LookupError> {
        let mut v = self
            .rt
            .block_on(get_all_subjects(&self.settings))
            .map_err(|e| self.fail("subjects", &e))?;
        v.sort();
        Ok(v)
    }

    fn versions(&mut self, subject: &str) -> Result<Vec<u32>, LookupError> {
        let mut v = self
            .rt
            .block_on(get_all_versions(&self.settings, encode_path(subject)))
            .map_err(|e| self.fail("versions", &e))?;
        v.sort_unstable();
        Ok(v)
    }

    fn register(&mut self, subject: &str, schema: &str) -> Result<u32, LookupError> {
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned());
        match self
            .rt
            .block_on(post_schema(&self.settings, subject.to_owned(), supplied))
        {
            Ok(r) => Ok(r.id),
            Err(e) => Err(self.fail("register", &e)),
        }
    }
}

/// A subject as one URL path segment (our subjects are letters, digits,
/// '.', '-' and '_'; anything else is percent-encoded).
fn encode_path(subject: &str) -> String {
    let mut out = String::with_capacity(subject.len());
    for b in subject.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_code(code: u32, status: &str) -> SRCError {
        SRCError::non_retryable_with_cause(
            serde_json::from_value::<RawError>(
                serde_json::json!({"error_code": code, "message": "m"}),
            )
            .unwrap(),
            &format!("HTTP request to schema registry failed with status {status}"),
        )
    }

    #[test]
    fn errors_carry_the_decision() {
        let e = with_code(40403, "404 Not Found");
        assert_eq!(classify(&e, status_of(&e)), LookupError::NotFound);
        let e = with_code(0, "503 Service Unavailable");
        assert_eq!(status_of(&e), Some(503));
        assert!(matches!(
            classify(&e, status_of(&e)),
            LookupError::Unavailable(_)
        ));
        let e = with_code(50001, "500 Internal Server Error");
        assert!(matches!(
            classify(&e, status_of(&e)),
            LookupError::Unavailable(_)
        ));
        let e = with_code(409, "409 Conflict");
        assert_eq!(status_of(&e), Some(409));
        assert_eq!(
            classify(&e, status_of(&e)),
            LookupError::Refused("HTTP 409: m".to_owned())
        );
        let e = with_code(42201, "422 Unprocessable Entity");
        assert!(matches!(
            classify(&e, status_of(&e)),
            LookupError::Refused(_)
        ));
        let e = with_code(40101, "401 Unauthorized");
        assert!(matches!(
            classify(&e, status_of(&e)),
            LookupError::Rejected(_)
        ));
        let e = SRCError::new("http call to schema registry failed", None, true);
        assert!(matches!(
            classify(&e, status_of(&e)),
            LookupError::Unavailable(_)
        ));
    }
}
