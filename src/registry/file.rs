//! The file-backed registry over `avro/`: the embedded default.
//!
//! `avro/envelope.avsc` is the canonical envelope; every
//! `avro/events/<domain>/<event_type>.avsc` is one event type's payload
//! (version 1 of its subject), and `<event_type>.v<N>.avsc` beside it is
//! version N (2, 3, … without gaps), as a producer evolving its schema
//! would register them. An event type's schema is the envelope renamed to
//! `<envelope namespace>.<domain>.<EventType>` with `data` set to the payload,
//! registered under the subject the topology's naming gives for each input
//! topic. Ids are assigned in (event type, version) order, so they are stable
//! for a given `avro/` folder.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

use super::MemoryRegistry;
use crate::schema::{pascal_case, SchemaLookup, SubjectNaming};
use crate::validate::is_valid_event_type;

/// One event type found in the folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSchema {
    /// `user.created`
    pub event_type: String,
    /// The subject version this file is (1 for `<event_type>.avsc`).
    pub version: u32,
    /// The composed record's full name.
    pub fullname: String,
    /// The payload file.
    pub path: PathBuf,
    /// The composed schema text.
    pub text: String,
    /// Its id in the registry.
    pub id: u32,
}

/// The loaded folder.
#[derive(Debug, Clone)]
pub struct FileRegistry {
    /// The registry holding every composed schema.
    pub registry: MemoryRegistry,
    /// The event types, sorted.
    pub events: Vec<EventSchema>,
}

/// Why the folder cannot be loaded; names the file.
#[derive(Debug, Error)]
pub enum FileRegistryError {
    /// A file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file is not a schema we can use.
    #[error("{path}: {message}")]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn bad(path: &Path, message: impl Into<String>) -> FileRegistryError {
    FileRegistryError::Bad {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn read_json(path: &Path) -> Result<Value, FileRegistryError> {
    let text = fs::read_to_string(path).map_err(|source| FileRegistryError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| bad(path, format!("not JSON: {e}")))
}

fn payload_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), FileRegistryError> {
    let entries = fs::read_dir(dir).map_err(|source| FileRegistryError::Io {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let path = entry
            .map_err(|source| FileRegistryError::Io {
                path: dir.to_owned(),
                source,
            })?
            .path();
        if path.is_dir() {
            payload_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "avsc") {
            out.push(path);
        }
    }
    Ok(())
}

/// The envelope renamed for `event_type`, with `data` set to `payload`.
///
/// # Errors
/// A message when the envelope has no namespace or no `data` field.
pub fn compose(
    envelope: &Value,
    event_type: &str,
    payload: Value,
) -> Result<(String, Value), String> {
    let mut schema = envelope.clone();
    let obj = schema
        .as_object_mut()
        .ok_or("the envelope is not a record")?;
    let ns = obj
        .get("namespace")
        .and_then(Value::as_str)
        .ok_or("the envelope needs a namespace")?
        .to_owned();
    let domain = event_type.split('.').next().unwrap_or_default();
    let fullname = format!("{ns}.{domain}.{}", pascal_case(event_type));
    obj.insert("name".into(), Value::String(fullname.clone()));
    obj.remove("namespace");
    let data = obj
        .get_mut("fields")
        .and_then(Value::as_array_mut)
        .and_then(|fs| fs.iter_mut().find(|f| f["name"] == "data"))
        .ok_or("the envelope has no data field")?;
    data["type"] = payload;
    Ok((fullname, schema))
}

/// `user.created.v2` → (`user.created`, Some(2)); `user.created` →
/// (`user.created`, None).
fn split_version(stem: &str) -> (&str, Option<u32>) {
    if let Some((head, tail)) = stem.rsplit_once(".v") {
        if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) {
            return (head, tail.parse().ok().or(Some(0)));
        }
    }
    (stem, None)
}

/// Loads `dir` and registers every event type under the subjects `naming`
/// gives for each of `topics`.
///
/// # Errors
/// The first file that cannot be read or composed.
pub fn load(
    dir: &Path,
    naming: &SubjectNaming,
    topics: &[String],
) -> Result<FileRegistry, FileRegistryError> {
    let envelope_path = dir.join("envelope.avsc");
    let envelope = read_json(&envelope_path)?;
    let mut files = Vec::new();
    payload_files(&dir.join("events"), &mut files)?;
    let mut named = Vec::with_capacity(files.len());
    for path in files {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let (event_type, version) = split_version(&stem);
        if !is_valid_event_type(event_type) || version == Some(0) {
            return Err(bad(&path, "the file name must be <event_type>.avsc or <event_type>.v<N>.avsc with event_type matching ^[a-z]+\\.[a-z_]+$ and N >= 2"));
        }
        named.push((event_type.to_owned(), version.unwrap_or(1), path));
    }
    named.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    for pair in named.windows(2) {
        let ((t0, v0, p0), (t1, v1, p1)) = (&pair[0], &pair[1]);
        if t0 == t1 && *v1 == *v0 {
            return Err(bad(
                p1,
                format!("is version {v1} of {t1}, like {}", p0.display()),
            ));
        }
        if t0 == t1 && *v1 != v0 + 1 {
            return Err(bad(
                p1,
                format!("is version {v1} of {t1}, but version {} is missing", v0 + 1),
            ));
        }
        if t0 != t1 && *v1 != 1 {
            return Err(bad(
                p1,
                format!("is version {v1} of {t1}, but {t1}.avsc (version 1) is missing"),
            ));
        }
    }
    if let Some((t, v, p)) = named.first() {
        if *v != 1 {
            return Err(bad(
                p,
                format!("is version {v} of {t}, but {t}.avsc (version 1) is missing"),
            ));
        }
    }
    let mut registry = MemoryRegistry::default();
    let mut events = Vec::with_capacity(named.len());
    for (event_type, version, path) in named {
        let payload = read_json(&path)?;
        let (fullname, schema) =
            compose(&envelope, &event_type, payload).map_err(|m| bad(&envelope_path, m))?;
        let text = schema.to_string();
        let mut id = 0;
        for topic in topics {
            id = registry
                .register(&naming.subject(topic, &event_type), &text)
                .map_err(|e| bad(&path, e.to_string()))?;
        }
        events.push(EventSchema {
            event_type,
            version,
            fullname,
            path,
            text,
            id,
        });
    }
    Ok(FileRegistry { registry, events })
}
