//! Fuzz target `framed`: Confluent-framed Avro: the first byte chooses one of the registered writer
//! schemas (the evolving versions included; bit 7 chooses the strict
//! topology), the rest is the Avro body; the bytes are also offered as a raw
//! value.
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
    h.framed(data);
});
