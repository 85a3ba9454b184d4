//! Fuzz target: The chat reader's telnet filter, fed in several chunkings (`oracles::telnet`).
//! Run it with `fuzz/run.sh MINUTES telnet` or `cargo +nightly fuzz run telnet` from the
//! repository root; failures are oracle panics, as in `tests/fuzz_corpus.rs`.
#![no_main]

#[path = "../oracles.rs"]
#[allow(dead_code)] // each target uses one oracle of the shared file
mod oracles;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracles::enforce(oracles::telnet(data)));
