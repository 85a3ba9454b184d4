//! Fuzz target: The line framer, dropping and splitting over-long lines (`oracles::lines`).
//! Run it with `fuzz/run.sh MINUTES lines` or `cargo +nightly fuzz run lines` from the
//! repository root; failures are oracle panics, as in `tests/fuzz_corpus.rs`.
#![no_main]

#[path = "../oracles.rs"]
#[allow(dead_code)] // each target uses one oracle of the shared file
mod oracles;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracles::enforce(oracles::lines(data)));
