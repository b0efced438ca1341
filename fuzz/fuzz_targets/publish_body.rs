//! Any bytes as a `POST /v1/publish` body: `publish::parse` never panics, accepts no SJID 0, and
//! a batch that parses re-encodes to bytes that parse to the same batch.
#![no_main]

use herald_proto::publish;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(changes) = publish::parse(data) {
        assert!(changes.iter().all(|&(_, sjid)| sjid > 0));
        assert_eq!(publish::parse(&publish::encode(&changes)), Ok(changes));
    }
});
