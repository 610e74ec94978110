//! The schema registry as the pipeline sees it: [`SchemaLookup`], and what a
//! call can fail with ([`LookupError`]). Implemented in [`crate::registry`].

use std::sync::Arc;

use thiserror::Error;

/// What a registry call can fail with, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LookupError {
    /// The id or subject does not exist (poison: dead-letter the record).
    #[error("not found in the schema registry")]
    NotFound,
    /// The registry cannot be reached or answered 5xx (transient: wait and
    /// retry, skip nothing).
    #[error("the schema registry is unavailable: {0}")]
    Unavailable(String),
    /// The registry refused this schema: incompatible with the subject's
    /// earlier versions (409) or invalid (422). The events that need it are
    /// dead-lettered; nothing else stops.
    #[error("the schema registry refused the schema: {0}")]
    Refused(String),
    /// The registry refused the request itself: 401, 403, another 4xx, or a
    /// call that failed without an answer and that the client does not
    /// retry. An operator must act. The engine stops for it (fatal) only
    /// when registering a derived tier schema; when fetching a writer schema
    /// it treats it like [`LookupError::Unavailable`]: wait and retry the
    /// same record, skip nothing. At start-up, `run` stops on it.
    #[error("the schema registry refused the request: {0}")]
    Rejected(String),
}

/// A schema registry as the pipeline uses it. The engine caches what it gets,
/// so each id or subject is looked up once.
pub trait SchemaLookup {
    /// The schema text registered under a global id.
    ///
    /// # Errors
    /// [`LookupError`]
    fn schema_by_id(&mut self, id: u32) -> Result<Arc<str>, LookupError>;

    /// The latest version of a subject: its id and text.
    ///
    /// # Errors
    /// [`LookupError`]
    fn latest(&mut self, subject: &str) -> Result<(u32, Arc<str>), LookupError>;

    /// One version of a subject (1, 2, …): its id and text.
    ///
    /// # Errors
    /// [`LookupError::NotFound`] when the subject or the version does not
    /// exist.
    fn version(&mut self, subject: &str, version: u32) -> Result<(u32, Arc<str>), LookupError>;

    /// Every subject, sorted.
    ///
    /// # Errors
    /// [`LookupError`]
    fn subjects(&mut self) -> Result<Vec<String>, LookupError>;

    /// The versions of a subject, ascending.
    ///
    /// # Errors
    /// [`LookupError::NotFound`] when the subject does not exist.
    fn versions(&mut self, subject: &str) -> Result<Vec<u32>, LookupError>;

    /// Registers a schema under a subject (idempotent) and returns its id.
    ///
    /// # Errors
    /// [`LookupError`]
    fn register(&mut self, subject: &str, schema: &str) -> Result<u32, LookupError>;
}
