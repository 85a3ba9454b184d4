//! Fuzz target: The `proxy --ftp` line parsers (`oracles::ftp_line`).
//! Run it with `fuzz/run.sh MINUTES ftp_line` or `cargo +nightly fuzz run ftp_line` from the
//! repository root; failures are oracle panics, as in `tests/fuzz_corpus.rs`.
#![no_main]

#[path = "../oracles.rs"]
#[allow(dead_code)] // each target uses one oracle of the shared file
mod oracles;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracles::enforce(oracles::ftp_line(data)));
