//! Any bytes into the distributed-path decoders (`FanoutBatch`, `LatestRequest`, `LatestReply`):
//! never a panic, and whatever decodes re-encodes to bytes that decode to the same value.
#![no_main]

use herald_proto::fanout::{FanoutBatch, LatestReply, LatestRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = FanoutBatch::decode(data) {
        assert!(b.encode().len() <= data.len());
        assert_eq!(FanoutBatch::decode(&b.encode()), Ok(b));
    }
    if let Ok(q) = LatestRequest::decode(data) {
        assert_eq!(LatestRequest::decode(&q.encode()), Ok(q));
    }
    if let Ok(r) = LatestReply::decode(data) {
        assert_eq!(LatestReply::decode(&r.encode()), Ok(r));
    }
});
