//! Replays the checked-in fuzz seed corpus through the same entry points
//! the cargo-fuzz targets use, so `cargo test` exercises them.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        run(&bytes);
        // Every prefix too: receivers must cope with any cut.
        for cut in 0..bytes.len() {
            run(&bytes[..cut]);
        }
        n += 1;
    }
    assert!(n >= 5, "{target}: only {n} seeds");
}

#[test]
fn server_input_corpus() {
    replay("server_input", tern_smtp::fuzzing::server_input);
}

#[test]
fn client_reply_corpus() {
    replay("client_reply", tern_smtp::fuzzing::client_reply);
}
