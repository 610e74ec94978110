//! privacy-router: validates raw domain events against their Avro schemas,
//! strips PII by privacy tier, and fans every event out to a public, an
//! internal and a restricted topic, keyed by `entity_id`, after checking per
//! entity that `entity_version` arrives in order.
//!
//! The modules in flow order:
//!
//! | stage | module | what |
//! |---|---|---|
//! | types | [`record`] | raw records, decoded values, tiers, reasons, outputs and outcomes |
//! | adapt | [`adapt`] | a producer's own JSON event → the canonical envelope |
//! | schema | [`schema`], [`classify`] | registry lookup, subject naming; writer schema → compiled, classified nodes |
//! | decode | [`schema::binary`], [`schema::json`] | Confluent-framed Avro or JSON → value |
//! | validate | [`validate`] | field rules (event type, UUIDs, entity id, versions, cents and counts, timestamps), stable reason codes |
//! | order | [`order`] | per-entity version verdicts, the version store |
//! | project | [`project`] | derived tier schemas, projected bodies, pseudonyms |
//! | route | [`route`] | tier records (topic, key, headers), dead letters |
//! | chain | [`pipeline`] | the pure entry point: one raw record → outcome |
//!
//! At the edges: [`config`] (topology files → the engine's configuration),
//! [`registry`] (schema sources: the Confluent REST API, the file registry),
//! [`runtime`] (the Kafka processor: consumer group, transactions,
//! changelog-backed state),
//! [`telemetry`] (metrics, health, named log events), [`demo`] (the runtime
//! on an embedded mock cluster), [`replay`] (the file-driven runner),
//! [`sample`] (realistic events), [`inspect`] (`check`, `describe` and
//! `privacy-report`: what a topology and its schemas will do, worked out
//! without running them), and [`cli`].

pub mod adapt;
pub mod classify;
pub mod cli;
pub mod config;
pub mod demo;
pub mod inspect;
pub mod order;
pub mod pipeline;
pub mod project;
pub mod record;
pub mod registry;
pub mod reorder;
pub mod replay;
pub mod route;
pub mod runtime;
pub mod sample;
pub mod schema;
pub mod telemetry;
pub mod validate;
