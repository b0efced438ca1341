//! Any bytes into `frame::decode_client`: never a panic, and a frame that decodes re-encodes
//! (minimally, so never longer than its input) to bytes that decode to the same frame.
#![no_main]

use herald_proto::frame::decode_client;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode_client(data) {
        Ok(frame) => {
            let bytes = frame.to_vec();
            // Non-minimal varints may shrink; nothing may grow, so the re-encoding fits the limit.
            assert!(bytes.len() <= data.len(), "re-encoding grew: {frame:?}");
            assert_eq!(decode_client(&bytes), Ok(frame));
            if bytes.len() == data.len() {
                // Same length means every varint was minimal: the encoding is canonical.
                assert_eq!(bytes, data);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
