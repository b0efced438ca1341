//! The messages of the distributed path (DESIGN.md "Data flow"), between the journal, relays and
//! gateways over NATS. Like frames, they are plain bytes in and out.
//!
//! ```text
//!  herald.journal.<p>.<ns>   metaserver → JetStream   body: SJID, 8 bytes big-endian
//!  herald.fanout.<p>         relay → core NATS        FanoutBatch {epoch, seq, [(ns, sjid)]}
//!  herald.latest.<p>         request/reply            LatestRequest [ns] → LatestReply [(ns, sjid)]
//! ```
//! `p = ns % partitions`. A relay stamps every batch with its `epoch` (random per process) and a
//! `seq` per partition that goes up by one, so a subscriber can tell a gap (core NATS is
//! at-most-once) or a new relay, and resync the partition through `herald.latest.<p>`.
//!
//! Wire format (all integers LEB128 varints): a batch is `0x01 epoch seq count (ns sjid)*`; a
//! latest request is `0x01 count ns*`; a reply is `0x01 epoch count (ns sjid)*`. The leading byte
//! is a format version; decoders refuse any other.

use crate::frame::FrameError;
use crate::varint;

/// Format version byte of every message here.
const V1: u8 = 0x01;
/// Default number of partitions (PROTOCOL.md "Publishing").
pub const DEFAULT_PARTITIONS: u64 = 64;
/// Name of the JetStream stream holding the journal.
pub const JOURNAL_STREAM: &str = "HERALD_JOURNAL";
/// Largest NATS payload a batch or reply is kept under (the server default is 1 MiB).
pub const MAX_MESSAGE: usize = 512 * 1024;
/// Most `(ns, sjid)` pairs per batch or reply, so that one stays under [`MAX_MESSAGE`].
pub const MAX_PAIRS_PER_MESSAGE: usize = (MAX_MESSAGE - 32) / 20;

/// One fan-out message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutBatch {
    /// Random id of the publishing relay process.
    pub epoch: u64,
    /// Position in this relay's stream for this partition: 1, 2, 3, …
    pub seq: u64,
    /// Raised `(ns, sjid)` entries.
    pub changes: Vec<(u64, u64)>,
}

/// A request for the latest SJIDs of some namespaces of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestRequest {
    /// The namespaces.
    pub ns: Vec<u64>,
}

/// The answer to a [`LatestRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestReply {
    /// Epoch of the answering relay.
    pub epoch: u64,
    /// `(ns, latest)` for every namespace asked (0 when never published).
    pub entries: Vec<(u64, u64)>,
}

/// The partition of `ns`.
#[must_use]
pub fn partition(ns: u64, partitions: u64) -> u64 {
    ns % partitions.max(1)
}

/// `herald.journal.<p>.<ns>`.
#[must_use]
pub fn journal_subject(ns: u64, partitions: u64) -> String {
    format!("herald.journal.{}.{ns}", partition(ns, partitions))
}

/// `(p, ns)` from a journal subject, if it is one.
#[must_use]
pub fn parse_journal_subject(subject: &str) -> Option<(u64, u64)> {
    let rest = subject.strip_prefix("herald.journal.")?;
    let (p, ns) = rest.split_once('.')?;
    Some((
        crate::claims::parse_decimal(p)?,
        crate::claims::parse_decimal(ns)?,
    ))
}

/// `herald.fanout.<p>`.
#[must_use]
pub fn fanout_subject(p: u64) -> String {
    format!("herald.fanout.{p}")
}

/// `herald.latest.<p>`.
#[must_use]
pub fn latest_subject(p: u64) -> String {
    format!("herald.latest.{p}")
}

/// The partition of a `herald.fanout.<p>` or `herald.latest.<p>` subject.
#[must_use]
pub fn subject_partition(subject: &str) -> Option<u64> {
    let p = subject
        .strip_prefix("herald.fanout.")
        .or_else(|| subject.strip_prefix("herald.latest."))?;
    crate::claims::parse_decimal(p)
}

/// The journal message body: the SJID as 8 bytes, big-endian.
#[must_use]
pub fn journal_body(sjid: u64) -> [u8; 8] {
    sjid.to_be_bytes()
}

/// The SJID of a journal message body; `None` for any body that is not exactly 8 bytes.
#[must_use]
pub fn parse_journal_body(body: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(body).ok().map(u64::from_be_bytes)
}

/// The `Nats-Msg-Id` header value for de-duplication: `<ns>:<sjid>`.
#[must_use]
pub fn msg_id(ns: u64, sjid: u64) -> String {
    format!("{ns}:{sjid}")
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn version(&mut self) -> Result<(), FrameError> {
        match self.0.split_first() {
            None => Err(FrameError::Empty),
            Some((&V1, rest)) => {
                self.0 = rest;
                Ok(())
            }
            Some((&other, _)) => Err(FrameError::UnknownType(other)),
        }
    }

    fn varint(&mut self) -> Result<u64, FrameError> {
        let (v, n) = varint::decode(self.0)?;
        self.0 = &self.0[n..];
        Ok(v)
    }

    fn count(&mut self, min_item: usize) -> Result<usize, FrameError> {
        let n = self.varint()?;
        if n > (self.0.len() / min_item) as u64 {
            return Err(FrameError::LengthPastFrame);
        }
        Ok(n as usize)
    }

    fn pairs(&mut self) -> Result<Vec<(u64, u64)>, FrameError> {
        let n = self.count(2)?;
        (0..n)
            .map(|_| Ok((self.varint()?, self.varint()?)))
            .collect()
    }

    fn finish(self) -> Result<(), FrameError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(FrameError::TrailingBytes)
        }
    }
}

fn put_pairs(pairs: &[(u64, u64)], out: &mut Vec<u8>) {
    varint::encode(pairs.len() as u64, out);
    for &(a, b) in pairs {
        varint::encode(a, out);
        varint::encode(b, out);
    }
}

impl FanoutBatch {
    /// Encodes the batch.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.changes.len() * 8);
        out.push(V1);
        varint::encode(self.epoch, &mut out);
        varint::encode(self.seq, &mut out);
        put_pairs(&self.changes, &mut out);
        out
    }

    /// Decodes a batch.
    pub fn decode(buf: &[u8]) -> Result<Self, FrameError> {
        let mut r = Reader(buf);
        r.version()?;
        let batch = FanoutBatch {
            epoch: r.varint()?,
            seq: r.varint()?,
            changes: r.pairs()?,
        };
        r.finish()?;
        Ok(batch)
    }
}

impl LatestRequest {
    /// Encodes the request.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.ns.len() * 5);
        out.push(V1);
        varint::encode(self.ns.len() as u64, &mut out);
        for &ns in &self.ns {
            varint::encode(ns, &mut out);
        }
        out
    }

    /// Decodes a request.
    pub fn decode(buf: &[u8]) -> Result<Self, FrameError> {
        let mut r = Reader(buf);
        r.version()?;
        let n = r.count(1)?;
        let ns = (0..n).map(|_| r.varint()).collect::<Result<_, _>>()?;
        r.finish()?;
        Ok(LatestRequest { ns })
    }
}

impl LatestReply {
    /// Encodes the reply.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.entries.len() * 8);
        out.push(V1);
        varint::encode(self.epoch, &mut out);
        put_pairs(&self.entries, &mut out);
        out
    }

    /// Decodes a reply.
    pub fn decode(buf: &[u8]) -> Result<Self, FrameError> {
        let mut r = Reader(buf);
        r.version()?;
        let reply = LatestReply {
            epoch: r.varint()?,
            entries: r.pairs()?,
        };
        r.finish()?;
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn subjects_and_bodies() {
        assert_eq!(journal_subject(130, 64), "herald.journal.2.130");
        assert_eq!(
            parse_journal_subject("herald.journal.2.130"),
            Some((2, 130))
        );
        assert_eq!(parse_journal_subject("herald.journal.2.x"), None);
        assert_eq!(parse_journal_subject("herald.journal.2"), None);
        assert_eq!(subject_partition("herald.fanout.17"), Some(17));
        assert_eq!(subject_partition("herald.latest.3"), Some(3));
        assert_eq!(parse_journal_body(&journal_body(42)), Some(42));
        assert_eq!(parse_journal_body(b"42"), None);
        assert_eq!(msg_id(7, 9), "7:9");
        assert_eq!(partition(5, 0), 0);
    }

    #[test]
    fn refuses_bad_input() {
        assert_eq!(FanoutBatch::decode(&[]), Err(FrameError::Empty));
        assert_eq!(
            FanoutBatch::decode(&[2, 0, 0, 0]),
            Err(FrameError::UnknownType(2))
        );
        assert_eq!(
            FanoutBatch::decode(&[1, 0, 0, 5, 1]),
            Err(FrameError::LengthPastFrame)
        );
        assert_eq!(
            LatestRequest::decode(&[1, 0, 9]),
            Err(FrameError::TrailingBytes)
        );
        assert_eq!(
            LatestReply::decode(&[1, 0x80]),
            Err(FrameError::TruncatedVarint)
        );
    }

    proptest! {
        #[test]
        fn round_trips(epoch: u64, seq: u64, changes in proptest::collection::vec(any::<(u64, u64)>(), 0..100)) {
            let b = FanoutBatch { epoch, seq, changes: changes.clone() };
            prop_assert_eq!(FanoutBatch::decode(&b.encode()), Ok(b));
            let r = LatestReply { epoch, entries: changes.clone() };
            prop_assert_eq!(LatestReply::decode(&r.encode()), Ok(r));
            let q = LatestRequest { ns: changes.iter().map(|c| c.0).collect() };
            prop_assert_eq!(LatestRequest::decode(&q.encode()), Ok(q));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(b) = FanoutBatch::decode(&bytes) {
                prop_assert_eq!(FanoutBatch::decode(&b.encode()), Ok(b));
            }
            if let Ok(q) = LatestRequest::decode(&bytes) {
                prop_assert_eq!(LatestRequest::decode(&q.encode()), Ok(q));
            }
            if let Ok(r) = LatestReply::decode(&bytes) {
                prop_assert_eq!(LatestReply::decode(&r.encode()), Ok(r));
            }
        }
    }
}
