//! Schema registries: where writer schemas come from and where derived tier
//! schemas are registered.
//!
//! The pipeline sees a registry only through [`SchemaLookup`] (defined in
//! [`crate::schema`], implemented here); it caches what
//! it gets, so a lookup happens once per schema id or subject.
//! [`MemoryRegistry`] keeps Confluent's semantics (one id per distinct schema,
//! versions per subject) in memory; [`file::load`] fills one from `avro/` for
//! the embedded default, and [`SharedRegistry`] lets the stream thread and
//! a reader (the demo) share it. [`confluent`] talks to a real registry.

pub mod confluent;
pub mod file;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::schema::{LookupError, SchemaLookup, SubjectNaming};

/// An in-memory registry with Confluent's id semantics: the same schema
/// (compared as JSON) gets the same global id in every subject. With
/// [`MemoryRegistry::enforce_backward`], a registration that cannot read
/// the subject's latest version is refused as Confluent's default
/// (`BACKWARD`) refuses it, so `replay` and the demo dead-letter what a
/// production registry would refuse.
#[derive(Debug, Default, Clone)]
pub struct MemoryRegistry {
    by_id: Vec<(Value, Arc<str>)>,
    subjects: HashMap<String, Vec<u32>>,
    backward: bool,
}

impl MemoryRegistry {
    /// Refuses (or stops refusing) registrations that are not backward
    /// compatible with the subject's latest version.
    pub fn enforce_backward(&mut self, on: bool) {
        self.backward = on;
    }

    /// Why `schema` cannot be `subject`'s next version under `BACKWARD`.
    fn incompatible(&self, subject: &str, schema: &str) -> Option<String> {
        let latest = *self.subjects.get(subject)?.last()?;
        let old = apache_avro::Schema::parse_str(&self.by_id[latest as usize - 1].1).ok()?;
        let new = match apache_avro::Schema::parse_str(schema) {
            Ok(s) => s,
            Err(e) => return Some(format!("invalid schema: {e}")),
        };
        apache_avro::schema_compatibility::SchemaCompatibility::can_read(&old, &new)
            .err()
            .map(|e| {
                format!(
                    "Schema being registered is incompatible with an earlier schema for subject \"{subject}\" (BACKWARD): {e}"
                )
            })
    }
}

impl SchemaLookup for MemoryRegistry {
    fn schema_by_id(&mut self, id: u32) -> Result<Arc<str>, LookupError> {
        let i = (id as usize).checked_sub(1).ok_or(LookupError::NotFound)?;
        self.by_id
            .get(i)
            .map(|(_, t)| t.clone())
            .ok_or(LookupError::NotFound)
    }

    fn latest(&mut self, subject: &str) -> Result<(u32, Arc<str>), LookupError> {
        let id = *self
            .subjects
            .get(subject)
            .and_then(|v| v.last())
            .ok_or(LookupError::NotFound)?;
        Ok((id, self.schema_by_id(id)?))
    }

    fn version(&mut self, subject: &str, version: u32) -> Result<(u32, Arc<str>), LookupError> {
        let id = *self
            .subjects
            .get(subject)
            .and_then(|v| v.get((version as usize).checked_sub(1)?))
            .ok_or(LookupError::NotFound)?;
        Ok((id, self.schema_by_id(id)?))
    }

    fn subjects(&mut self) -> Result<Vec<String>, LookupError> {
        let mut v: Vec<String> = self.subjects.keys().cloned().collect();
        v.sort();
        Ok(v)
    }

    fn versions(&mut self, subject: &str) -> Result<Vec<u32>, LookupError> {
        let ids = self.subjects.get(subject).ok_or(LookupError::NotFound)?;
        Ok((1..=ids.len() as u32).collect())
    }

    fn register(&mut self, subject: &str, schema: &str) -> Result<u32, LookupError> {
        let parsed: Value = serde_json::from_str(schema)
            .map_err(|e| LookupError::Refused(format!("not JSON: {e}")))?;
        let known = self.subjects.get(subject).is_some_and(|ids| {
            ids.iter()
                .any(|id| self.by_id[*id as usize - 1].0 == parsed)
        });
        if self.backward && !known {
            if let Some(why) = self.incompatible(subject, schema) {
                return Err(LookupError::Refused(why));
            }
        }
        let id = match self.by_id.iter().position(|(v, _)| *v == parsed) {
            Some(i) => i as u32 + 1,
            None => {
                self.by_id.push((parsed, Arc::from(schema)));
                self.by_id.len() as u32
            }
        };
        let versions = self.subjects.entry(subject.to_owned()).or_default();
        if !versions.contains(&id) {
            versions.push(id);
        }
        Ok(id)
    }
}

/// A [`MemoryRegistry`] shared between threads: the stream thread registers
/// derived schemas in it while a reader decodes what was produced.
#[derive(Debug, Default, Clone)]
pub struct SharedRegistry(Arc<Mutex<MemoryRegistry>>);

impl SharedRegistry {
    /// Shares `registry`.
    pub fn new(registry: MemoryRegistry) -> Self {
        SharedRegistry(Arc::new(Mutex::new(registry)))
    }

    fn with<T>(&self, f: impl FnOnce(&mut MemoryRegistry) -> T) -> T {
        // A panic while holding the lock cannot leave the registry half
        // written (each call is one push), so a poisoned lock is usable.
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

impl SchemaLookup for SharedRegistry {
    fn schema_by_id(&mut self, id: u32) -> Result<Arc<str>, LookupError> {
        self.with(|r| r.schema_by_id(id))
    }

    fn latest(&mut self, subject: &str) -> Result<(u32, Arc<str>), LookupError> {
        self.with(|r| r.latest(subject))
    }

    fn version(&mut self, subject: &str, version: u32) -> Result<(u32, Arc<str>), LookupError> {
        self.with(|r| r.version(subject, version))
    }

    fn subjects(&mut self) -> Result<Vec<String>, LookupError> {
        self.with(SchemaLookup::subjects)
    }

    fn versions(&mut self, subject: &str) -> Result<Vec<u32>, LookupError> {
        self.with(|r| r.versions(subject))
    }

    fn register(&mut self, subject: &str, schema: &str) -> Result<u32, LookupError> {
        self.with(|r| r.register(subject, schema))
    }
}

/// One version of a subject that an input topic's events are read with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownSchema {
    /// The subject.
    pub subject: String,
    /// The input topic whose naming gives this subject.
    pub topic: String,
    /// The event type the subject belongs to.
    pub event_type: String,
    /// The subject version (1, 2, …).
    pub version: u32,
    /// The schema's global id.
    pub id: u32,
    /// The schema text.
    pub text: Arc<str>,
}

/// Every version of every subject that a topology's input topics read
/// events with, from the registry the processor uses: what configuration is
/// checked against and what `privacy-report` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalogue {
    /// Where the schemas came from, for messages: `the folder avro`, `the
    /// registry at http://…`.
    pub source: String,
    /// Sorted by subject and version.
    pub schemas: Vec<KnownSchema>,
}

impl Catalogue {
    /// Reads every version of every subject that `naming` gives an event
    /// type for one of `topics` (subjects of other topics, and derived tier
    /// subjects, are not the input's).
    ///
    /// # Errors
    /// The registry's error.
    pub fn read(
        registry: &mut dyn SchemaLookup,
        naming: &SubjectNaming,
        topics: &[String],
        source: impl Into<String>,
    ) -> Result<Catalogue, LookupError> {
        let mut schemas = Vec::new();
        for subject in registry.subjects()? {
            let Some((topic, event_type)) = topics
                .iter()
                .find_map(|t| naming.event_type_of(t, &subject).map(|e| (t, e)))
            else {
                continue;
            };
            for version in registry.versions(&subject)? {
                let (id, text) = registry.version(&subject, version)?;
                schemas.push(KnownSchema {
                    subject: subject.clone(),
                    topic: topic.clone(),
                    event_type: event_type.clone(),
                    version,
                    id,
                    text,
                });
            }
        }
        schemas.sort_by(|a, b| (&a.subject, a.version).cmp(&(&b.subject, b.version)));
        Ok(Catalogue {
            source: source.into(),
            schemas,
        })
    }

    /// The event types that have a schema.
    pub fn event_types(&self) -> BTreeSet<&str> {
        self.schemas.iter().map(|s| s.event_type.as_str()).collect()
    }

    /// The versions of an event type's subject (as read from `topic`).
    pub fn versions_of(&self, event_type: &str) -> BTreeSet<u32> {
        self.schemas
            .iter()
            .filter(|s| s.event_type == event_type)
            .map(|s| s.version)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backward_refuses_what_cannot_read_the_latest_version() {
        let mut r = MemoryRegistry::default();
        let v1 = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#;
        let v2 = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"string"}]}"#;
        let v2d = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"string","default":"x"}]}"#;
        r.register("s", v1).unwrap();
        r.enforce_backward(true);
        assert!(
            matches!(r.register("s", v2), Err(LookupError::Refused(m)) if m.contains("incompatible"))
        );
        assert!(r.register("s", v2d).is_ok());
        // Registering a known version again is always accepted.
        assert!(r.register("s", v1).is_ok());
        r.enforce_backward(false);
        assert!(r.register("s", v2).is_ok());
    }

    #[test]
    fn same_schema_same_id_across_subjects() {
        let mut r = MemoryRegistry::default();
        let a = r.register("a-value", r#"{"type":"string"}"#).unwrap();
        let b = r.register("b-value", r#"{ "type" : "string" }"#).unwrap();
        let c = r.register("a-value", r#""long""#).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(r.latest("a-value").unwrap().0, c);
        assert_eq!(r.version("a-value", 1).unwrap().0, a);
        assert_eq!(r.version("a-value", 2).unwrap().0, c);
        assert_eq!(r.version("a-value", 3), Err(LookupError::NotFound));
        assert_eq!(r.versions("a-value").unwrap(), [1, 2]);
        assert_eq!(
            SchemaLookup::subjects(&mut r).unwrap(),
            ["a-value", "b-value"]
        );
        assert_eq!(r.schema_by_id(0), Err(LookupError::NotFound));
        assert_eq!(r.schema_by_id(99), Err(LookupError::NotFound));
    }
}
