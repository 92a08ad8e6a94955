//! Fuzz target `assembly`: see `ringdaq_tests::fuzz::assembly`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringdaq_tests::fuzz::assembly(data));
