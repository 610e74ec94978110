//! Fuzz target `adapter`: A producer's own JSON events (or any bytes) on each adapter topology
//! (auth-identity, user-catalogue, user-service), each with its schema folder.
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
    h.adapter(data);
});
