//! Fuzz target `control`: see `ringdaq_tests::fuzz::control`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringdaq_tests::fuzz::control(data));
