//! Subject naming: which registry subject holds an event type's writer
//! schema ([`SubjectNaming`]), and which one a tier's derived schema is
//! registered under ([`derived_subject`]).

use std::collections::{BTreeMap, HashMap};

use super::CompiledSchema;
use crate::validate::is_valid_event_type;

/// How a JSON event's `event_type` maps to a registry subject, and its
/// `schema_version` to a version of that subject.
///
/// The template may use `{topic}` (input topic), `{event_type}`, `{domain}`
/// (the part before the dot) and `{Type}` (the event type in PascalCase:
/// `user.login_failed` → `UserLoginFailed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectNaming {
    /// The template used unless an event type overrides it.
    pub template: String,
    /// Subjects (templates too) for single event types.
    pub overrides: HashMap<String, String>,
    /// Per event type, producer `schema_version` → subject version, where
    /// the two are numbered differently. An event type with a map reads only
    /// the versions it maps; every other event type reads subject version
    /// `schema_version`.
    pub versions: HashMap<String, BTreeMap<u32, u32>>,
}

/// The default subject template: topic-record naming with our namespace.
pub const DEFAULT_SUBJECT_TEMPLATE: &str = "{topic}-com.privacyrouter.events.{domain}.{Type}";

impl Default for SubjectNaming {
    fn default() -> Self {
        SubjectNaming {
            template: DEFAULT_SUBJECT_TEMPLATE.to_owned(),
            overrides: HashMap::new(),
            versions: HashMap::new(),
        }
    }
}

/// `user.login_failed` → `UserLoginFailed`.
pub fn pascal_case(event_type: &str) -> String {
    event_type
        .split(['.', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

impl SubjectNaming {
    /// The subject of an event type read from `topic`.
    pub fn subject(&self, topic: &str, event_type: &str) -> String {
        let template = self.overrides.get(event_type).unwrap_or(&self.template);
        let domain = event_type.split('.').next().unwrap_or_default();
        template
            .replace("{topic}", topic)
            .replace("{event_type}", event_type)
            .replace("{domain}", domain)
            .replace("{Type}", &pascal_case(event_type))
    }

    /// The subject version a JSON event of `event_type` with
    /// `schema_version` is read with; `None` when the topology maps this
    /// event type's versions and not this one.
    pub fn subject_version(&self, event_type: &str, schema_version: u32) -> Option<u32> {
        match self.versions.get(event_type) {
            Some(map) => map.get(&schema_version).copied(),
            None => Some(schema_version),
        }
    }

    /// The event type whose subject (read from `topic`) is `subject`, if
    /// any: the inverse of [`SubjectNaming::subject`]. Candidates are read
    /// off the subject (an event type written out, or a PascalCase name
    /// split back into domain and type) and each is checked by producing
    /// the subject again, so a wrong guess is never returned.
    pub fn event_type_of(&self, topic: &str, subject: &str) -> Option<String> {
        let fits = |t: &str| is_valid_event_type(t) && self.subject(topic, t) == subject;
        if let Some(t) = self.overrides.keys().find(|t| fits(t)) {
            return Some(t.clone());
        }
        let bytes = subject.as_bytes();
        let lower = |b: u8| b.is_ascii_lowercase() || b == b'_' || b == b'.';
        // `{event_type}` written out: a maximal run of [a-z_.] or part of one.
        let mut i = 0;
        while i < bytes.len() {
            if !lower(bytes[i]) {
                i += 1;
                continue;
            }
            let run_end = (i..bytes.len())
                .find(|&j| !lower(bytes[j]))
                .unwrap_or(bytes.len());
            for a in i..run_end {
                for b in a + 3..=run_end {
                    if fits(&subject[a..b]) {
                        return Some(subject[a..b].to_owned());
                    }
                }
            }
            i = run_end;
        }
        // `{Type}` (with or without `{domain}`): a PascalCase word, split at
        // each word boundary into domain and type.
        for word in subject.split(|c: char| !c.is_ascii_alphanumeric()) {
            if !word.starts_with(|c: char| c.is_ascii_uppercase()) {
                continue;
            }
            let snake = snake_words(word);
            for (at, _) in snake.match_indices('_') {
                let t = format!("{}.{}", &snake[..at], &snake[at + 1..]);
                if fits(&t) {
                    return Some(t);
                }
            }
        }
        None
    }
}

/// `UserLoginFailed` → `user_login_failed`.
fn snake_words(pascal: &str) -> String {
    let mut out = String::with_capacity(pascal.len() + 4);
    for (i, c) in pascal.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The subject a tier's derived schema is registered under:
/// `<tier topic>-<record full name>` (topic-record naming, since one topic
/// holds many event types).
pub fn derived_subject(topic: &str, schema: &CompiledSchema) -> String {
    format!("{topic}-{}", schema.fullname().unwrap_or("record"))
}
