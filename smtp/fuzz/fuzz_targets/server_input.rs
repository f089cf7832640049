#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tern_smtp::fuzzing::server_input(data));
