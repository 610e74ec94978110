//! A Confluent-compatible Schema Registry (Confluent, Karapace, Apicurio's
//! ccompat API, Redpanda) over its REST API, through
//! `schema_registry_converter`.
//!
//! Used endpoints: `GET /schemas/ids/{id}` (writer schemas of framed
//! records), `GET /subjects/{subject}/versions/latest` (writer schemas of
//! JSON events) and `POST /subjects/{subject}/versions` (derived tier
//! schemas, idempotent). The engine caches every answer, so each id or
//! subject is asked for once.
//!
//! Errors carry the decision the engine needs: 404 is
//! [`LookupError::NotFound`] (the record is poison), a connection failure, a
//! timeout, 429 or any 5xx is [`LookupError::Unavailable`] (wait and retry,
//! skip nothing), and any other refusal (401, 403, 409 incompatible, 422
//! invalid) is [`LookupError::Rejected`].
//!
//! The calls are `async`; the stream thread, which is not a worker of the
//! async runtime, waits for them with [`tokio::runtime::Handle::block_on`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use schema_registry_converter::async_impl::schema_registry::{
    get_schema_by_id, perform_sr_call, post_schema, SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    RawError, SchemaType, SrCall, SuppliedSchema,
};
use thiserror::Error;

use super::{LookupError, SchemaLookup};
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
    rt: tokio::runtime::Handle,
    metrics: Metrics,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::Tls {
        path: path.clone(),
        message: e.to_string(),
    })
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
        let (first, rest) = config.urls.split_first().ok_or(ConfigError::NoUrl)?;
        let mut builder = SrSettings::new_builder(first.trim_end_matches('/').to_owned());
        for u in rest {
            builder.add_url(u.trim_end_matches('/').to_owned());
        }
        if let Some(user) = &config.username {
            builder.set_basic_authorization(user, config.password.as_deref());
        }
        builder.set_timeout(config.timeout);
        let mut client = reqwest::Client::builder();
        if let Some(ca) = &config.ca_file {
            let pem = read(ca)?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ConfigError::Tls {
                    path: ca.clone(),
                    message: e.to_string(),
                })?;
            for c in certs {
                client = client.add_root_certificate(c);
            }
        }
        match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => {
                let identity = reqwest::Identity::from_pkcs8_pem(&read(cert)?, &read(key)?)
                    .map_err(|e| ConfigError::Tls {
                        path: cert.clone(),
                        message: e.to_string(),
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
        let settings = builder
            .build_with(client)
            .map_err(|e| ConfigError::Client(e.to_string()))?;
        Ok(ConfluentRegistry {
            settings,
            rt,
            metrics,
        })
    }

    fn fail(&self, what: &str, e: &SRCError) -> LookupError {
        let status = status_of(e);
        let err = classify(e, status);
        let kind = match err {
            LookupError::NotFound => return err,
            LookupError::Unavailable(_) => "unavailable",
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

/// The decision for an error (see the module docs).
fn classify(e: &SRCError, status: Option<u16>) -> LookupError {
    // The message names the endpoint and the status, never a record value.
    let message = match status {
        Some(s) => format!("HTTP {s}: {}", e.error),
        None => e.error.clone(),
    };
    match status {
        Some(404) => LookupError::NotFound,
        Some(429) => LookupError::Unavailable(message),
        Some(s) if s >= 500 => LookupError::Unavailable(message),
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
