//! The command line: commands, flags (with environment fallbacks for runtime
//! knobs and secrets), and what each command does at start-up.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::ProgressBar;

use crate::config::Topology;
use crate::pipeline::Engine;
use crate::project::Hasher;
use crate::registry::file::{self, FileRegistry};
use crate::replay::{replay, InputFormat};
use crate::sample::{self, Format, Options};

/// Routes raw domain events into public, internal and restricted topics with
/// PII removed by privacy tier.
#[derive(Debug, Parser)]
#[command(name = "privacy-router", version, about, long_about = None)]
#[command(after_help = "Examples:
  PRIVACY_ROUTER_HASH_KEY=demo-key-not-for-production privacy-router replay samples/events.jsonl
  privacy-router sample --count 200000 --format framed > events.bin")]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PRIVACY_ROUTER_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a file of events through the engine and write what each tier
    /// topic and the dead-letter topic would receive.
    #[command(after_help = "Examples:
  PRIVACY_ROUTER_HASH_KEY=demo-key-not-for-production privacy-router replay samples/events.jsonl --out replay-out
  privacy-router sample --format framed | PRIVACY_ROUTER_HASH_KEY=... privacy-router replay - --format framed")]
    Replay(ReplayArgs),
    /// Write realistic sample events generated from the schemas.
    #[command(after_help = "Examples:
  privacy-router sample --count 300 > samples/events.jsonl
  privacy-router sample --count 200000 --no-anomalies --format framed -o load.bin")]
    Sample(SampleArgs),
}

/// Where schemas and the topology come from.
#[derive(Debug, Args)]
pub struct Common {
    /// Topology file.
    #[arg(
        long,
        default_value = "topology/default.yaml",
        env = "PRIVACY_ROUTER_TOPOLOGY"
    )]
    pub topology: PathBuf,
    /// Folder of Avro schemas for the file-backed registry.
    #[arg(long, default_value = "avro", env = "PRIVACY_ROUTER_SCHEMAS")]
    pub schemas: PathBuf,
}

/// The secret key of pseudonyms.
#[derive(Debug, Args)]
pub struct Secrets {
    /// Secret key (at least 16 bytes) for `redact: hash` pseudonyms. Prefer
    /// the environment variable: flags show up in process listings.
    #[arg(long, env = "PRIVACY_ROUTER_HASH_KEY", hide_env_values = true)]
    pub hash_key: Option<String>,
}

/// `replay` flags.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Input file, or `-` for standard input.
    #[arg(default_value = "samples/events.jsonl")]
    pub input: PathBuf,
    /// Input layout.
    #[arg(long, value_enum, default_value_t = InputFormat::Auto)]
    pub format: InputFormat,
    /// Output folder.
    #[arg(long, default_value = "replay-out")]
    pub out: PathBuf,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub secrets: Secrets,
}

/// Output layout of `sample`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SampleFormat {
    /// JSON lines.
    Jsonl,
    /// Length-prefixed Confluent-framed Avro (ids of the file registry).
    Framed,
}

/// `sample` flags.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// How many records.
    #[arg(long, default_value_t = 300)]
    pub count: usize,
    /// Seed; the same seed gives the same records.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Entities per entity type.
    #[arg(long, default_value_t = 40)]
    pub entities: usize,
    /// Only valid, in-order events.
    #[arg(long)]
    pub no_anomalies: bool,
    /// Output layout.
    #[arg(long, value_enum, default_value_t = SampleFormat::Jsonl)]
    pub format: SampleFormat,
    /// Output file; standard output when omitted.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// Sets up `tracing` on standard error.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Loads and validates the topology.
///
/// # Errors
/// Every problem of the topology file.
pub fn load_topology(path: &Path) -> Result<Topology> {
    Topology::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Builds the hasher from the secret, if one is set.
///
/// # Errors
/// A key shorter than the minimum.
pub fn hasher(secrets: &Secrets) -> Result<Option<Hasher>> {
    match secrets.hash_key.as_deref().filter(|k| !k.is_empty()) {
        None => Ok(None),
        Some(k) => Ok(Some(
            Hasher::new(k.as_bytes()).context("PRIVACY_ROUTER_HASH_KEY / --hash-key")?,
        )),
    }
}

/// Loads the file registry and checks every schema against the engine's
/// rules, reporting every problem at once. Refuses to start when a schema
/// asks for hashing and no key is set.
///
/// # Errors
/// The folder cannot be read, or schemas cannot be used.
pub fn load_file_registry(
    dir: &Path,
    topology: &Topology,
    engine: &Engine,
) -> Result<FileRegistry> {
    let reg = file::load(dir, &topology.engine.subjects, &topology.spec.input.topics)
        .with_context(|| format!("loading schemas from {}", dir.display()))?;
    let mut problems: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &reg.events {
        if let Err(r) = engine.check_schema(&e.text) {
            problems
                .entry(r.detail)
                .or_default()
                .push(e.path.display().to_string());
        }
    }
    if !problems.is_empty() {
        let lines: Vec<String> = problems
            .iter()
            .map(|(why, files)| match files.as_slice() {
                [one] => format!("  - {one}: {why}"),
                [first, rest @ ..] => format!("  - {first} and {} more: {why}", rest.len()),
                [] => String::new(),
            })
            .collect();
        bail!(
            "schemas in {} cannot be used:\n{}\n(set PRIVACY_ROUTER_HASH_KEY for schemas that ask for `redact: hash`)",
            dir.display(),
            lines.join("\n")
        );
    }
    Ok(reg)
}

/// Runs a parsed command line.
///
/// # Errors
/// Start-up problems and I/O errors, with context.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Replay(args) => run_replay(args),
        Command::Sample(args) => run_sample(args),
    }
}

fn run_replay(args: ReplayArgs) -> Result<()> {
    let topology = load_topology(&args.common.topology)?;
    let mut engine = Engine::new(topology.engine.clone(), hasher(&args.secrets)?);
    let mut reg = load_file_registry(&args.common.schemas, &topology, &engine)?.registry;
    let (mut input, len): (Box<dyn BufRead>, Option<u64>) = if args.input == Path::new("-") {
        (Box::new(BufReader::new(io::stdin())), None)
    } else {
        let f =
            File::open(&args.input).with_context(|| format!("opening {}", args.input.display()))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(BufReader::with_capacity(1 << 16, f)), len)
    };
    let progress = match len {
        Some(n) if n > 4 << 20 && io::stderr().is_terminal() => ProgressBar::new(n),
        _ => ProgressBar::hidden(),
    };
    let topic = topology.spec.input.topics[0].clone();
    let summary = replay(
        &mut engine,
        &mut reg,
        &mut input,
        &topic,
        args.format,
        &args.out,
        &progress,
    )?;
    eprintln!(
        "privacy-router replay of {}:\n{}",
        args.input.display(),
        summary.table()
    );
    eprintln!(
        "Wrote {0}/public.jsonl, {0}/internal.jsonl, {0}/restricted.jsonl and {0}/dead-letter.jsonl.",
        args.out.display()
    );
    Ok(())
}

fn run_sample(args: SampleArgs) -> Result<()> {
    let topology = load_topology(&args.common.topology)?;
    let reg = file::load(
        &args.common.schemas,
        &topology.engine.subjects,
        &topology.spec.input.topics,
    )
    .with_context(|| format!("loading schemas from {}", args.common.schemas.display()))?;
    let format = match args.format {
        SampleFormat::Jsonl => Format::Jsonl,
        SampleFormat::Framed => Format::Framed,
    };
    let mut g = sample::Generator::new(
        &reg,
        Options {
            seed: args.seed,
            entities: args.entities,
            anomalies: !args.no_anomalies,
            format,
        },
    );
    let mut out: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(BufWriter::new(
            File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(io::stdout().lock())),
    };
    for _ in 0..args.count {
        let rec = g.next_record();
        match format {
            Format::Jsonl => {
                out.write_all(&rec)?;
                out.write_all(b"\n")?;
            }
            Format::Framed => {
                out.write_all(&(rec.len() as u32).to_be_bytes())?;
                out.write_all(&rec)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}
