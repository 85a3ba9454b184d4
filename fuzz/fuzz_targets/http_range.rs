//! Fuzz target: The HTTP `Range` parser against a file length taken from the input (`oracles::http_range`).
//! Run it with `fuzz/run.sh MINUTES http_range` or `cargo +nightly fuzz run http_range` from the
//! repository root; failures are oracle panics, as in `tests/fuzz_corpus.rs`.
#![no_main]

#[path = "../oracles.rs"]
#[allow(dead_code)] // each target uses one oracle of the shared file
mod oracles;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracles::enforce(oracles::http_range(data)));
