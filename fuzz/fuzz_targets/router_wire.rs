#![no_main]
// The body is zccl_fuzz::router_wire (fuzz/src/lib.rs), which tests/fuzz_corpus.rs
// also replays over the committed corpus on stable.
libfuzzer_sys::fuzz_target!(|data: &[u8]| zccl_fuzz::router_wire(data));
