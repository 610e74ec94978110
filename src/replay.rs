//! `privacy-router replay`: runs a file of events through the engine, as one
//! partition of the first input topic, and writes what each tier topic and
//! the dead-letter topic would receive as JSON lines, with a summary.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufRead, BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::order::hold::Holdback;
use crate::order::{MemoryStore, VersionStore};
use crate::pipeline::Engine;
use crate::record::{OutRecord, Outcome, RawHeaders, RawRecord, Source, Tier};
use crate::reorder::{HeldChange, Reorder, Step};
use crate::schema::{binary, json as sjson, CompiledSchema, SchemaLookup};
use crate::telemetry::{At, Metrics, RecordEvents};

/// How the input file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// JSON lines when the first byte is `{` or whitespace, framed otherwise.
    Auto,
    /// One record value per line (normally a JSON envelope).
    Jsonl,
    /// Records preceded by their length (u32, big-endian); values are
    /// normally Confluent-framed Avro.
    Framed,
}

/// Counts of what happened, by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records read.
    pub consumed: u64,
    /// Records produced per tier.
    pub produced: BTreeMap<Tier, u64>,
    /// Ordering verdicts of decoded, valid events.
    pub verdicts: BTreeMap<&'static str, u64>,
    /// Dead letters per reason code.
    pub dead_letters: BTreeMap<&'static str, u64>,
    /// Events holding data above their declared tier.
    pub tier_mismatches: u64,
    /// Events held for the reorder window (`on_gap: hold`).
    pub held: u64,
    /// Held events released, by why (`in_order`, `bound`, `end_of_input`).
    pub released: BTreeMap<&'static str, u64>,
    /// Entities in the version store at the end.
    pub entities: usize,
}

impl Summary {
    /// The summary as a plain-text table.
    pub fn table(&self) -> String {
        let mut rows = Vec::new();
        let mut row = |k: &str, v: u64| rows.push((k.to_owned(), v));
        row("records read", self.consumed);
        for tier in Tier::ALL {
            row(
                &format!("-> {tier}"),
                self.produced.get(&tier).copied().unwrap_or(0),
            );
        }
        row("-> dead letter", self.dead_letters.values().sum());
        for (k, v) in &self.verdicts {
            row(&format!("order: {k}"), *v);
        }
        if self.held > 0 {
            row("held for reordering", self.held);
            for (k, v) in &self.released {
                row(&format!("released: {k}"), *v);
            }
        }
        row("declared-tier mismatches", self.tier_mismatches);
        for (k, v) in &self.dead_letters {
            row(&format!("dead letter: {k}"), *v);
        }
        row("entities tracked", self.entities as u64);
        aligned(&rows)
    }
}

/// Summary rows as a table: names padded to the longest, counts
/// right-aligned, so the columns line up whatever the reason codes.
pub(crate) fn aligned(rows: &[(String, u64)]) -> String {
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let digits = rows
        .iter()
        .map(|(_, v)| v.to_string().len())
        .max()
        .unwrap_or(1);
    rows.iter()
        .map(|(k, v)| format!("  {k:<width$}  {v:>digits$}\n"))
        .collect()
}

struct Sinks {
    /// Per tier ([`Tier::index`]).
    tiers: Vec<BufWriter<File>>,
    dead: BufWriter<File>,
}

/// Decodes produced values back to JSON for the output files, with the
/// derived schemas from the registry (which proves they were registered).
#[derive(Default)]
pub(crate) struct Renderer {
    compiled: HashMap<u32, CompiledSchema>,
}

impl Renderer {
    pub(crate) fn value(&mut self, registry: &mut dyn SchemaLookup, bytes: &[u8]) -> Result<Value> {
        if bytes.first() == Some(&b'{') {
            return Ok(serde_json::from_slice(bytes)?);
        }
        let id = u32::from_be_bytes(bytes.get(1..5).context("short frame")?.try_into()?);
        if let std::collections::hash_map::Entry::Vacant(e) = self.compiled.entry(id) {
            let text = registry
                .schema_by_id(id)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let schema = CompiledSchema::compile(&text, &Default::default())?;
            e.insert(schema);
        }
        let schema = &self.compiled[&id];
        let d = binary::decode(schema, &bytes[5..])?;
        Ok(sjson::render(schema, schema.root(), &d))
    }
}

pub(crate) fn headers_json(r: &OutRecord) -> Value {
    Value::Object(
        r.headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value::from(String::from_utf8_lossy(&v[..]).into_owned()),
                )
            })
            .collect(),
    )
}

pub(crate) fn bytes_json(b: Option<&[u8]>) -> Value {
    match b {
        None => Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => Value::from(s),
            Err(_) => json!({ "hex": hex::encode(b) }),
        },
    }
}

/// Reads records from `input` as if consumed from partition 0 of
/// `source_topic`, runs them through `engine`, and writes the
/// outputs to `out_dir` (`public.jsonl`, `internal.jsonl`,
/// `restricted.jsonl`, `dead-letter.jsonl`).
///
/// # Errors
/// I/O errors, a framed input that ends mid-record, or a registry error
/// (the file registry has none).
pub fn replay(
    engine: &mut Engine,
    registry: &mut dyn SchemaLookup,
    input: &mut dyn BufRead,
    source_topic: &str,
    format: InputFormat,
    out_dir: &Path,
    progress: &ProgressBar,
) -> Result<Summary> {
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let open = |name: &str| -> Result<BufWriter<File>> {
        let p = out_dir.join(name);
        Ok(BufWriter::new(
            File::create(&p).with_context(|| format!("creating {}", p.display()))?,
        ))
    };
    let mut sinks = Sinks {
        tiers: Vec::with_capacity(Tier::ALL.len()),
        dead: open("dead-letter.jsonl")?,
    };
    for tier in Tier::ALL {
        sinks.tiers.push(open(&format!("{tier}.jsonl"))?);
    }
    progress.set_style(
        ProgressStyle::with_template("{spinner} {bytes}/{total_bytes} {bar:30} {per_sec} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let format = match format {
        InputFormat::Auto => match input.fill_buf()?.first() {
            None | Some(b'{' | b' ' | b'\n' | b'\r' | b'\t') => InputFormat::Jsonl,
            Some(_) => InputFormat::Framed,
        },
        f => f,
    };
    let mut store = MemoryStore::default();
    let mut summary = Summary::default();
    let source_topic: Arc<str> = Arc::from(source_topic);
    let mut buf = Vec::new();
    let mut offset = 0i64;
    let mut held = Holdback::default();
    let mut steps = Vec::new();
    let mut out = Out {
        sinks,
        events: RecordEvents::default(),
        renderer: Renderer::default(),
        metrics: Metrics::default(),
    };
    loop {
        buf.clear();
        let n = match format {
            InputFormat::Framed => {
                let mut len = [0u8; 4];
                match input.read_exact(&mut len) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e.into()),
                }
                let len = u32::from_be_bytes(len) as usize;
                input
                    .take(len as u64)
                    .read_to_end(&mut buf)
                    .with_context(|| format!("record {offset}"))?;
                if buf.len() != len {
                    bail!("the framed input ends inside record {offset}");
                }
                len + 4
            }
            _ => {
                let n = input
                    .read_until(b'\n', &mut buf)
                    .with_context(|| format!("line {}", offset + 1))?;
                if n == 0 {
                    break;
                }
                while matches!(buf.last(), Some(b'\n' | b'\r')) {
                    buf.pop();
                }
                n
            }
        };
        progress.inc(n as u64);
        let source = Source {
            topic: source_topic.clone(),
            partition: 0,
            offset,
        };
        let raw = RawRecord {
            source: &source,
            key: None,
            value: Some(&buf),
            headers: RawHeaders::NONE,
        };
        summary.consumed += 1;
        let line_of = |e: &dyn std::fmt::Display| {
            // JSON Lines are numbered by line, framed inputs by record.
            match format {
                InputFormat::Framed => anyhow::anyhow!("record {offset}: {e}"),
                _ => anyhow::anyhow!("line {}: {e}", offset + 1),
            }
        };
        Reorder {
            engine: &mut *engine,
            store: &mut store,
            held: &mut held,
            registry: &mut *registry,
        }
        .process(&raw, None, None, &mut steps)
        .map_err(|e| line_of(&e))?;
        for refusal in engine.take_refusals() {
            out.events.derived_schema_refused(&out.metrics, &refusal);
        }
        for step in steps.drain(..) {
            write_step(step, &mut out, registry)?;
        }
        offset += 1;
    }
    // The end of the input ends every reorder window: what is still held
    // is emitted as gaps, oldest first.
    Reorder {
        engine: &mut *engine,
        store: &mut store,
        held: &mut held,
        registry: &mut *registry,
    }
    .release_all(&mut steps)
    .map_err(|e| anyhow::anyhow!("releasing held events at the end of the input: {e}"))?;
    for refusal in engine.take_refusals() {
        out.events.derived_schema_refused(&out.metrics, &refusal);
    }
    for step in steps.drain(..) {
        write_step(step, &mut out, registry)?;
    }
    let Out { sinks, events, .. } = &mut out;
    for w in &mut sinks.tiers {
        w.flush()?;
    }
    sinks.dead.flush()?;
    events.finish();
    let counts = events.counts();
    for tier in Tier::ALL {
        let n = counts.produced_to(tier);
        if n > 0 {
            summary.produced.insert(tier, n);
        }
    }
    summary.verdicts = counts.verdicts().collect();
    for reason in counts.dead_letters() {
        *summary.dead_letters.entry(reason.code()).or_default() += 1;
    }
    summary.tier_mismatches = counts.tier_mismatches();
    summary.held = counts.held();
    summary.released = counts.released().collect();
    summary.entities = store.len();
    progress.finish_and_clear();
    Ok(summary)
}

/// Where replay's steps go: the output files and the counts. Replay counts
/// in its summary; the metrics only take what the events count at once
/// (refused derived schemas).
struct Out {
    sinks: Sinks,
    events: RecordEvents,
    renderer: Renderer,
    metrics: Metrics,
}

/// Writes one step: its tier records or dead letter as JSON lines
/// (`offset` is the input record's, a released event's own), and counts
/// it.
fn write_step(step: Step, out: &mut Out, registry: &mut dyn SchemaLookup) -> Result<()> {
    let offset = step.source.offset;
    let at = At {
        topic: &step.source.topic,
        partition: step.source.partition,
        offset,
    };
    if let HeldChange::Released { how, .. } = step.held {
        out.events.released(at, how);
    }
    match step.outcome {
        Outcome::Routed(r) => {
            out.events.routed(at, &r);
            for rec in r.records {
                let tier = rec
                    .destination
                    .tier()
                    .context("a routed record without a tier")?;
                let value = out
                    .renderer
                    .value(registry, rec.value.as_deref().unwrap_or_default())?;
                let line = json!({
                    "offset": offset,
                    "topic": &*rec.topic,
                    "key": bytes_json(rec.key.as_deref()),
                    "headers": headers_json(&rec),
                    "value": value,
                });
                let w = &mut out.sinks.tiers[tier.index()];
                serde_json::to_writer(&mut *w, &line)?;
                w.write_all(b"\n")?;
            }
        }
        Outcome::Skipped(v) => out.events.skipped(at, v),
        Outcome::Held { .. } => out.events.held(at),
        Outcome::DeadLettered { record, rejection } => {
            out.events.dead_lettered(at, &rejection);
            let line = json!({
                "offset": offset,
                "topic": &*record.topic,
                "key": bytes_json(record.key.as_deref()),
                "headers": headers_json(&record),
                "value": bytes_json(record.value.as_deref()),
            });
            serde_json::to_writer(&mut out.sinks.dead, &line)?;
            out.sinks.dead.write_all(b"\n")?;
        }
    }
    Ok(())
}
