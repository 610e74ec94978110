//! Reading a topology file: YAML text → a tree of values that remembers
//! where each one stands in the file → the typed [`TopologyFile`].
//!
//! serde stops at the first problem; a topology must report them all. So
//! the typed read is repeated: each structural problem (an unknown key, a
//! value of the wrong type) is recorded with its line, column and key path,
//! the value at fault is taken out of the tree (a default stands in for it),
//! and the read starts again, until it succeeds. The semantic checks then
//! run on what was read, so one pass over the file reports both kinds.
//!
//! [`TopologyFile`]: super::TopologyFile

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

/// A place in the file: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Place {
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// The file as a JSON tree, with the place of every key and value.
#[derive(Debug, Default)]
pub(crate) struct Located {
    /// The values.
    pub(crate) tree: Value,
    /// Key path (`outputs.public`, `input.topics[0]`) → where its value is.
    values: HashMap<String, Place>,
    /// Key path → where its key is.
    keys: HashMap<String, Place>,
}

/// A structural problem found while reading the typed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Structural {
    /// The key path.
    pub(crate) path: String,
    /// What is wrong.
    pub(crate) message: String,
}

impl Located {
    /// Parses YAML text.
    ///
    /// # Errors
    /// The parser's message (it names the line and column) when the text
    /// is not YAML.
    pub(crate) fn parse(text: &str) -> Result<Located, String> {
        let mut out = Located::default();
        if text.trim().is_empty() {
            out.tree = Value::Object(Map::new());
            return Ok(out);
        }
        // YAML 1.2 booleans only: `off`, `yes`, `n` stay strings (a YAML 1.1
        // reading would turn `ordering: off` into `false`).
        let mut options = serde_saphyr::Options::default();
        options.strict_booleans = true;
        let root: Spanned<Node> =
            serde_saphyr::from_str_with_options(text, options).map_err(|e| e.to_string())?;
        out.tree = out.convert(root, "");
        if out.tree.is_null() {
            out.tree = Value::Object(Map::new());
        }
        Ok(out)
    }

    /// Where the value at `path` is: the path itself, else the nearest
    /// enclosing key that the file has.
    pub(crate) fn place(&self, path: &str) -> Option<Place> {
        let mut p = path;
        loop {
            if let Some(at) = self.values.get(p) {
                return Some(*at);
            }
            p = parent(p)?;
        }
    }

    /// True when the file has a value at exactly `path`.
    pub(crate) fn has(&self, path: &str) -> bool {
        self.values.contains_key(path)
    }

    /// Where the key at `path` is (for unknown keys), else its value's place.
    pub(crate) fn key_place(&self, path: &str) -> Option<Place> {
        self.keys.get(path).copied().or_else(|| self.place(path))
    }

    fn convert(&mut self, node: Spanned<Node>, path: &str) -> Value {
        let place = Place {
            line: node.referenced.line(),
            column: node.referenced.column(),
        };
        if place.line > 0 {
            self.values.insert(path.to_owned(), place);
        }
        match node.value {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(b),
            Node::Int(i) => Value::from(i),
            Node::UInt(u) => Value::from(u),
            Node::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
            Node::Str(s) => Value::String(s),
            Node::Seq(items) => Value::Array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| self.convert(item, &format!("{path}[{i}]")))
                    .collect(),
            ),
            Node::Map(entries) => {
                let mut map = Map::new();
                for (k, v) in entries {
                    let name = match k.value {
                        Node::Str(s) => s,
                        Node::Int(i) => i.to_string(),
                        Node::UInt(u) => u.to_string(),
                        Node::Bool(b) => b.to_string(),
                        Node::Float(f) => f.to_string(),
                        Node::Null => "null".to_owned(),
                        Node::Seq(_) | Node::Map(_) => "<complex key>".to_owned(),
                    };
                    let p = join(path, &name);
                    if k.referenced.line() > 0 {
                        self.keys.insert(
                            p.clone(),
                            Place {
                                line: k.referenced.line(),
                                column: k.referenced.column(),
                            },
                        );
                    }
                    let value = self.convert(v, &p);
                    map.insert(name, value);
                }
                Value::Object(map)
            }
        }
    }

    /// Reads the tree as `T`, recording every structural problem and taking
    /// the value at fault out of the tree each time, until the read
    /// succeeds. `None` when the tree cannot be mended (a required value
    /// is missing at the top).
    pub(crate) fn read<T: DeserializeOwned>(
        &mut self,
        problems: &mut Vec<Structural>,
    ) -> Option<T> {
        // Every round takes a value out of a finite tree, so this ends; the
        // bound only guards against a mistake in the mending.
        for _ in 0..256 {
            let err = match serde_path_to_error::deserialize::<_, T>(&self.tree) {
                Ok(t) => return Some(t),
                Err(e) => e,
            };
            let mut segments: Vec<Segment> = err
                .path()
                .iter()
                .filter_map(|s| match s {
                    serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
                    serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
                    serde_path_to_error::Segment::Enum { .. }
                    | serde_path_to_error::Segment::Unknown => None,
                })
                .collect();
            let message = err.into_inner().to_string();
            if let Some(key) = backticked(&message, "unknown field `") {
                if segments.last() != Some(&Segment::Key(key.to_owned())) {
                    segments.push(Segment::Key(key.to_owned()));
                }
                let short = message
                    .split_once(", expected ")
                    .map(|(_, expected)| format!("unknown key; expected {expected}"))
                    .unwrap_or_else(|| "unknown key".to_owned());
                problems.push(Structural {
                    path: render(&segments),
                    message: short,
                });
            } else if message.starts_with("missing field `") {
                problems.push(Structural {
                    path: render(&segments),
                    message: message.replacen("missing field", "missing key", 1),
                });
            } else {
                problems.push(Structural {
                    path: render(&segments),
                    message,
                });
            }
            // A missing key cannot be mended where it is missing: the
            // mapping that lacks it goes, so its default stands in.
            if segments.is_empty() || !remove(&mut self.tree, &segments) {
                return None;
            }
        }
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

fn render(segments: &[Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.is_empty() {
        "<root>".to_owned()
    } else {
        out
    }
}

/// Takes the value at `segments` out of `tree`.
fn remove(tree: &mut Value, segments: &[Segment]) -> bool {
    let Some((last, init)) = segments.split_last() else {
        return false;
    };
    let mut at = tree;
    for s in init {
        at = match (s, at) {
            (Segment::Key(k), Value::Object(m)) => match m.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Index(i), Value::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, at) {
        (Segment::Key(k), Value::Object(m)) => m.remove(k).is_some(),
        (Segment::Index(i), Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

fn backticked<'m>(message: &'m str, after: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(after)?;
    rest.split_once('`').map(|(k, _)| k)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The enclosing key path: `a.b[0]` → `a.b`, `a.b` → `a`, `a` → ``.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    if let Some(head) = path.strip_suffix(']') {
        return head.rfind('[').map(|i| &path[..i]);
    }
    Some(path.rfind('.').map_or("", |i| &path[..i]))
}

/// A YAML node, read with its place (through [`Spanned`]) at every level.
#[derive(Debug)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Node>, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::UInt(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<Spanned<Node>>()? {
            let v = map.next_value::<Spanned<Node>>()?;
            entries.push((k, v));
        }
        Ok(Node::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[serde(default)]
        a: Inner,
        #[serde(default)]
        list: Vec<u32>,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        x: u32,
        #[serde(default)]
        y: String,
    }

    #[test]
    fn every_structural_problem_with_its_place() {
        let text = "a:\n  x: not-a-number\n  z: 1\nlist: [1, two, 3]\nb: 2\n";
        let mut l = Located::parse(text).unwrap();
        let mut problems = Vec::new();
        let read: Outer = l.read(&mut problems).unwrap();
        let mut paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(paths, ["a.x", "a.z", "b", "list[1]"], "{problems:?}");
        assert_eq!(read.list, [1, 3]);
        assert_eq!(l.place("a.x"), Some(Place { line: 2, column: 6 }));
        assert_eq!(l.key_place("a.z"), Some(Place { line: 3, column: 3 }));
        assert_eq!(l.key_place("b").map(|p| p.line), Some(5));
        assert_eq!(l.place("list[1]").map(|p| p.line), Some(4));
        let z = problems.iter().find(|p| p.path == "a.z").unwrap();
        assert!(z.message.starts_with("unknown key"), "{problems:?}");
    }

    #[test]
    fn parents() {
        assert_eq!(parent("a.b[0]"), Some("a.b"));
        assert_eq!(parent("a.b"), Some("a"));
        assert_eq!(parent("a"), Some(""));
        assert_eq!(parent(""), None);
    }
}
