//! Payload format shared by `storage-crash-writer` and the storage crash
//! test: every payload is self-describing and self-checking, so a reader
//! that knows nothing else about a record can tell whether it is intact.
//!
//! ```text
//! { u64 id = task << 48 | (pid & 0xffff) << 32 | counter
//! | body: len pseudo-random in 0..=BODY_MAX, bytes derived from id
//! | u32 crc32(id ++ body) }
//! ```

/// Longest body; with the 12 bytes of id and checksum, records average
/// ~4 KiB and routinely cross 4 KiB block boundaries.
pub const BODY_MAX: u64 = 8000;
/// Bytes of a payload that are not body.
pub const OVERHEAD: usize = 12;

/// Config of the crash writer's log: small segments so kills often land
/// around segment rolls.
pub fn log_config() -> tern_storage::LogConfig {
    tern_storage::LogConfig {
        record_bytes_max: 64 << 10,
        segment_bytes_max: 1 << 20,
        ..tern_storage::LogConfig::default()
    }
}

/// The id of record `counter` of appender `task` in process `pid`.
pub fn id(task: u16, pid: u32, counter: u32) -> u64 {
    (task as u64) << 48 | ((pid & 0xffff) as u64) << 32 | counter as u64
}

/// The body every payload with this id carries.
fn body(id: u64) -> Vec<u8> {
    use rand::{Rng, RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(id);
    let mut out = vec![0; rng.gen_range(0..=BODY_MAX as usize)];
    rng.fill_bytes(&mut out);
    out
}

/// The full payload for `id`.
pub fn payload(id: u64) -> Vec<u8> {
    let mut out = id.to_le_bytes().to_vec();
    out.extend_from_slice(&body(id));
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a payload read back: its checksum and that its body is the one
/// its id determines. Returns the id.
pub fn verify(payload: &[u8]) -> Result<u64, String> {
    if payload.len() < OVERHEAD {
        return Err(format!("payload of {} bytes is too short", payload.len()));
    }
    let (data, trailer) = payload.split_at(payload.len() - 4);
    let stored = u32::from_le_bytes(trailer.try_into().expect("4"));
    let actual = crc32fast::hash(data);
    if stored != actual {
        return Err(format!(
            "self-checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"
        ));
    }
    let id = u64::from_le_bytes(data[..8].try_into().expect("8"));
    if data[8..] != body(id)[..] {
        return Err(format!("body does not match id {id:#018x}"));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_roundtrip_and_corruption() {
        let mut lens = Vec::new();
        for c in 0..200 {
            let p = payload(id(3, 4242, c));
            assert_eq!(verify(&p), Ok(id(3, 4242, c)));
            lens.push(p.len());
            let mut bad = p.clone();
            let at = c as usize % bad.len();
            bad[at] ^= 1;
            assert!(verify(&bad).is_err());
        }
        assert!(lens.iter().any(|&l| l > 4096) && lens.iter().any(|&l| l < 4096));
        assert!(verify(&[0; 11]).is_err());
    }
}
