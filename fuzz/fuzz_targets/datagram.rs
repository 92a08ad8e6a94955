//! Fuzz target `datagram`: see `ringdaq_tests::fuzz::datagram`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringdaq_tests::fuzz::datagram(data));
