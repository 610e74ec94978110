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

use std::fmt;
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

/// One reason the folder cannot be loaded; names the file.
#[derive(Debug, Error)]
pub enum FileRegistryError {
    /// The folder, or a file or folder it must have (`envelope.avsc`,
    /// `events/`), is missing or cannot be listed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A schema file is there but cannot be read.
    #[error("{path}: {source}")]
    Unreadable {
        /// The file.
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

/// Every reason the folder cannot be loaded, all at once. With one, it is
/// that one (its message and its source).
#[derive(Debug)]
pub struct FolderError {
    /// One per bad file (or per folder that cannot be listed), in the order
    /// found: the envelope, file names, version sequences, then the files'
    /// contents in event type and version order.
    pub problems: Vec<FileRegistryError>,
}

impl fmt::Display for FolderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "{one}"),
            all => {
                write!(f, "{} problems:", all.len())?;
                for p in all {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for FolderError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self.problems.as_slice() {
            [one] => std::error::Error::source(one),
            _ => None,
        }
    }
}

fn bad(path: &Path, message: impl Into<String>) -> FileRegistryError {
    FileRegistryError::Bad {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// A schema file as JSON. A file that is not there is the folder's problem
/// ([`FileRegistryError::Io`]); one that is there and cannot be read, the
/// file's.
fn read_json(path: &Path) -> Result<Value, FileRegistryError> {
    let text = fs::read_to_string(path).map_err(|source| {
        let path = path.to_owned();
        if source.kind() == std::io::ErrorKind::NotFound {
            FileRegistryError::Io { path, source }
        } else {
            FileRegistryError::Unreadable { path, source }
        }
    })?;
    serde_json::from_str(&text).map_err(|e| bad(path, format!("not JSON: {e}")))
}

/// Every `.avsc` file under `dir`, at any depth.
pub(crate) fn payload_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), FileRegistryError> {
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
/// Every file that cannot be read, is not JSON, is misnamed, leaves a gap
/// in its event type's versions or cannot be composed, all at once; or the
/// folder alone when it cannot be listed.
pub fn load(
    dir: &Path,
    naming: &SubjectNaming,
    topics: &[String],
) -> Result<FileRegistry, FolderError> {
    let fail = |problems| Err(FolderError { problems });
    if let Err(source) = fs::read_dir(dir) {
        return fail(vec![FileRegistryError::Io {
            path: dir.to_owned(),
            source,
        }]);
    }
    let mut problems = Vec::new();
    let envelope_path = dir.join("envelope.avsc");
    let envelope = match read_json(&envelope_path) {
        Ok(v) => Some(v),
        Err(e) => {
            problems.push(e);
            None
        }
    };
    let mut files = Vec::new();
    if let Err(e) = payload_files(&dir.join("events"), &mut files) {
        problems.push(e);
    }
    files.sort();
    let mut named = Vec::with_capacity(files.len());
    for path in files {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let (event_type, version) = split_version(&stem);
        if !is_valid_event_type(event_type) || version == Some(0) {
            problems.push(bad(&path, "the file name must be <event_type>.avsc or <event_type>.v<N>.avsc with event_type matching ^[a-z]+\\.[a-z_]+$ and N >= 2"));
            continue;
        }
        named.push((event_type.to_owned(), version.unwrap_or(1), path));
    }
    named.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    problems.extend(version_gaps(&named));
    let mut registry = MemoryRegistry::default();
    let mut events = Vec::with_capacity(named.len());
    // The envelope's own faults show in every composition: reported once.
    let mut envelope_reported = false;
    for (event_type, version, path) in named {
        let payload = match read_json(&path) {
            Ok(p) => p,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        let Some(envelope) = &envelope else {
            continue;
        };
        let (fullname, schema) = match compose(envelope, &event_type, payload) {
            Ok(c) => c,
            Err(m) => {
                if !std::mem::replace(&mut envelope_reported, true) {
                    problems.push(bad(&envelope_path, m));
                }
                continue;
            }
        };
        let text = schema.to_string();
        let mut id = 0;
        for topic in topics {
            match registry.register(&naming.subject(topic, &event_type), &text) {
                Ok(i) => id = i,
                Err(e) => {
                    problems.push(bad(&path, e.to_string()));
                    break;
                }
            }
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
    if !problems.is_empty() {
        return fail(problems);
    }
    Ok(FileRegistry { registry, events })
}

/// The files that break their event type's version sequence (1, 2, … without
/// gaps or doubles); `named` is sorted by event type and version.
fn version_gaps(named: &[(String, u32, PathBuf)]) -> Vec<FileRegistryError> {
    let mut problems = Vec::new();
    if let Some((t, v, p)) = named.first() {
        if *v != 1 {
            problems.push(bad(
                p,
                format!("is version {v} of {t}, but {t}.avsc (version 1) is missing"),
            ));
        }
    }
    for pair in named.windows(2) {
        let ((t0, v0, p0), (t1, v1, p1)) = (&pair[0], &pair[1]);
        if t0 == t1 && *v1 == *v0 {
            problems.push(bad(
                p1,
                format!("is version {v1} of {t1}, like {}", p0.display()),
            ));
        } else if t0 == t1 && *v1 != v0 + 1 {
            problems.push(bad(
                p1,
                format!("is version {v1} of {t1}, but version {} is missing", v0 + 1),
            ));
        } else if t0 != t1 && *v1 != 1 {
            problems.push(bad(
                p1,
                format!("is version {v1} of {t1}, but {t1}.avsc (version 1) is missing"),
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYLOAD: &str = r#"{"type":"record","name":"P","fields":[]}"#;

    /// A folder with `envelope` as its `envelope.avsc` and each (path, text)
    /// file below it.
    fn folder(envelope: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (file, text) in [("envelope.avsc", envelope)].iter().chain(files) {
            let path = dir.path().join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        dir
    }

    fn load_folder(dir: &Path) -> FolderError {
        load(dir, &SubjectNaming::default(), &["in".to_owned()]).unwrap_err()
    }

    #[test]
    fn every_bad_file_is_reported_at_once() {
        let dir = folder(
            r#"{"type":"record","name":"Envelope","namespace":"t","fields":[{"name":"data","type":"null"}]}"#,
            &[
                ("events/a/a.one.avsc", "{ not json"),
                ("events/a/a.two.avsc", "["),
                ("events/a/A.Bad.avsc", PAYLOAD),
                ("events/a/a.three.avsc", PAYLOAD),
                ("events/a/a.three.v3.avsc", PAYLOAD),
                ("events/a/a.four.avsc", PAYLOAD),
            ],
        );
        let d = dir.path();
        let e = load_folder(d);
        let mut found: Vec<String> = e
            .problems
            .iter()
            .map(|p| {
                p.to_string()
                    .strip_prefix(&format!("{}/", d.display()))
                    .unwrap()
                    .split(": ")
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(": ")
            })
            .collect();
        found.sort();
        assert_eq!(
            found,
            [
                "events/a/A.Bad.avsc: the file name must be <event_type>.avsc or <event_type>.v<N>.avsc with event_type matching ^[a-z]+\\.[a-z_]+$ and N >= 2",
                "events/a/a.one.avsc: not JSON",
                "events/a/a.three.v3.avsc: is version 3 of a.three, but version 2 is missing",
                "events/a/a.two.avsc: not JSON",
            ]
        );
        assert!(e.to_string().starts_with("4 problems:\n  - "), "{e}");
    }

    #[test]
    fn a_folder_that_cannot_be_listed_is_the_only_problem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = load_folder(&missing);
        assert!(
            matches!(e.problems.as_slice(), [FileRegistryError::Io { path, .. }] if *path == missing),
            "{e}"
        );
    }

    #[test]
    fn an_envelope_fault_is_reported_once() {
        let dir = folder(
            r#"{"type":"record","name":"E","fields":[]}"#,
            &[
                ("events/a/a.one.avsc", PAYLOAD),
                ("events/a/a.two.avsc", PAYLOAD),
            ],
        );
        let d = dir.path();
        assert_eq!(
            load_folder(d).to_string(),
            format!(
                "{}: the envelope needs a namespace",
                d.join("envelope.avsc").display()
            )
        );
    }
}
