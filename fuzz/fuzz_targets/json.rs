//! Fuzz target `json`: Canonical JSON events (or any bytes) as the record value, under the default
//! topology and its strict variant; seeded from samples/events.jsonl with
//! schema_version 1..3.
//! The set-up and every invariant are in `fuzz/harness.rs`.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

static HARNESS: OnceLock<harness::Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let h = HARNESS
        .get_or_init(|| harness::Harness::new(&Path::new(env!("CARGO_MANIFEST_DIR")).join("..")));
    h.json(data);
});
