//! Fuzz target: The PROXY v1/v2 parser and encoder (`oracles::proxy_header`).
//! Run it with `fuzz/run.sh MINUTES proxy_header` or `cargo +nightly fuzz run proxy_header` from the
//! repository root; failures are oracle panics, as in `tests/fuzz_corpus.rs`.
#![no_main]

#[path = "../oracles.rs"]
#[allow(dead_code)] // each target uses one oracle of the shared file
mod oracles;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracles::enforce(oracles::proxy_header(data)));
