//! Fuzz target: The HTTP request-head parser and the target normaliser (`oracles::http_request`).
//! Run it with `fuzz/run.sh MINUTES http_request` or `cargo +nightly fuzz run http_request` from the
//! repository root; failures are oracle panics, as in `tests/fuzz_corpus.rs`.
#![no_main]

#[path = "../oracles.rs"]
#[allow(dead_code)] // each target uses one oracle of the shared file
mod oracles;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracles::enforce(oracles::http_request(data)));
