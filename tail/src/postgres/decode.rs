//! Sans-IO decoding of the `pgoutput` messages (protocol version 1, text values) that matter
//! here: Relation (which relation id is the journal table, and where its two columns are),
//! Insert and Update of that table. Begin and Commit arrive as events of their own
//! (pgwire-replication parses them); everything else (Delete, Truncate, Type, Origin, other
//! tables) is ignored.
//!
//! What a row announces: an INSERT its `(ns, sjid)`; an UPDATE its new `(ns, sjid)`, unless the
//! old row is known (`REPLICA IDENTITY FULL` sends it) and the update did not raise the SJID.
//! Without the old row every update's new value is announced: it is a committed value, and the
//! journal merges by max, so announcing one that did not raise anything changes nothing.

use crate::assemble::Change;
use crate::metrics as m;
use std::collections::HashMap;

/// Where the journal table's columns are in its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct JournalRelation {
    ns: usize,
    sjid: usize,
}

/// Decoder state: the relations announced on this stream.
#[derive(Debug)]
pub struct Decoder {
    schema: String,
    table: String,
    ns_column: String,
    sjid_column: String,
    /// Relation id → column positions, for the journal table only.
    journal: HashMap<u32, JournalRelation>,
}

/// A malformed message: the stream cannot be trusted past it.
#[derive(Debug, thiserror::Error)]
#[error("pgoutput: {0}")]
pub struct DecodeError(String);

/// A value of one column of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Null,
    /// An unchanged TOASTed value (never an integer; listed for completeness).
    Unchanged,
    Text(Vec<u8>),
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError(format!(
                "truncated message ({n} bytes wanted, {} left)",
                self.0.len()
            )));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn cstr(&mut self) -> Result<String, DecodeError> {
        let end = self
            .0
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| DecodeError("unterminated string".into()))?;
        let s = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = &self.0[end + 1..];
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Value>, DecodeError> {
        let n = self.u16()?;
        let mut values = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            values.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' | b'b' => {
                    let len = self.u32()? as usize;
                    Value::Text(self.take(len)?.to_vec())
                }
                other => {
                    return Err(DecodeError(format!(
                        "unknown tuple value kind {:?}",
                        char::from(other)
                    )));
                }
            });
        }
        Ok(values)
    }
}

impl Decoder {
    /// A decoder for the journal table `schema.table` and its two columns.
    #[must_use]
    pub fn new(schema: &str, table: &str, ns_column: &str, sjid_column: &str) -> Self {
        Decoder {
            schema: schema.to_owned(),
            table: table.to_owned(),
            ns_column: ns_column.to_owned(),
            sjid_column: sjid_column.to_owned(),
            journal: HashMap::new(),
        }
    }

    /// Decodes one `pgoutput` message, appending the change it announces to `out`.
    pub fn feed(&mut self, msg: &[u8], out: &mut Vec<Change>) -> Result<(), DecodeError> {
        let mut r = Reader(msg);
        let tag = match r.u8() {
            Ok(t) => t,
            Err(_) => return Ok(()),
        };
        match tag {
            b'R' => self.relation(&mut r),
            b'I' => {
                let rel = r.u32()?;
                let Some(&j) = self.journal.get(&rel) else {
                    return Ok(());
                };
                expect(r.u8()?, b'N')?;
                let new = r.tuple()?;
                metrics::counter!(m::ROWS).increment(1);
                if let Some(change) = change_of(&new, j) {
                    out.push(change);
                }
                Ok(())
            }
            b'U' => {
                let rel = r.u32()?;
                let Some(&j) = self.journal.get(&rel) else {
                    return Ok(());
                };
                let mut kind = r.u8()?;
                let mut old = None;
                if kind == b'K' || kind == b'O' {
                    let tuple = r.tuple()?;
                    if kind == b'O' {
                        old = Some(tuple);
                    }
                    kind = r.u8()?;
                }
                expect(kind, b'N')?;
                let new = r.tuple()?;
                metrics::counter!(m::ROWS).increment(1);
                let Some(change) = change_of(&new, j) else {
                    return Ok(());
                };
                // With the old row (REPLICA IDENTITY FULL): only a raise of the namespace's SJID.
                let raised = match old.as_ref().and_then(|o| change_of_quiet(o, j)) {
                    Some((old_ns, old_sjid)) => old_ns != change.0 || change.1 > old_sjid,
                    None => true,
                };
                if raised {
                    out.push(change);
                }
                Ok(())
            }
            b'D' => {
                if self.journal.contains_key(&r.u32()?) {
                    metrics::counter!(m::ROWS).increment(1);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn relation(&mut self, r: &mut Reader<'_>) -> Result<(), DecodeError> {
        let id = r.u32()?;
        let schema = r.cstr()?;
        let name = r.cstr()?;
        let _replident = r.u8()?;
        let n = r.u16()?;
        let mut ns = None;
        let mut sjid = None;
        for i in 0..usize::from(n) {
            let _flags = r.u8()?;
            let column = r.cstr()?;
            let _type_oid = r.u32()?;
            let _typmod = r.u32()?;
            if column == self.ns_column {
                ns = Some(i);
            }
            if column == self.sjid_column {
                sjid = Some(i);
            }
        }
        if schema == self.schema && name == self.table {
            match (ns, sjid) {
                (Some(ns), Some(sjid)) => {
                    self.journal.insert(id, JournalRelation { ns, sjid });
                }
                _ => {
                    return Err(DecodeError(format!(
                        "the journal table {schema}.{name} arrived without column {} or {} (altered while tailing?)",
                        self.ns_column, self.sjid_column
                    )));
                }
            }
        } else {
            self.journal.remove(&id);
        }
        Ok(())
    }
}

fn expect(got: u8, want: u8) -> Result<(), DecodeError> {
    if got == want {
        Ok(())
    } else {
        Err(DecodeError(format!(
            "expected tuple marker {:?}, got {:?}",
            char::from(want),
            char::from(got)
        )))
    }
}

/// The `(ns, sjid)` of a row, counting a row whose values are not unsigned 64-bit integers.
fn change_of(row: &[Value], j: JournalRelation) -> Option<Change> {
    let change = change_of_quiet(row, j);
    if change.is_none() {
        metrics::counter!(m::ROWS_SKIPPED).increment(1);
    }
    change
}

fn change_of_quiet(row: &[Value], j: JournalRelation) -> Option<Change> {
    let value = |i: usize| match row.get(i)? {
        Value::Text(t) => parse_u64(t),
        Value::Null | Value::Unchanged => None,
    };
    Some((value(j.ns)?, value(j.sjid)?))
}

/// A `bigint` or `numeric` rendered as text: digits only (a negative or fractional value is no
/// SJID); `numeric` with scale 0 renders without a decimal point.
#[must_use]
pub fn parse_u64(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn relation(id: u32, schema: &str, table: &str, columns: &[&str]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&id.to_be_bytes());
        cstr(&mut m, schema);
        cstr(&mut m, table);
        m.push(b'd');
        m.extend_from_slice(&(columns.len() as u16).to_be_bytes());
        for c in columns {
            m.push(0);
            cstr(&mut m, c);
            m.extend_from_slice(&20u32.to_be_bytes());
            m.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        m
    }

    fn tuple(m: &mut Vec<u8>, values: &[Option<&str>]) {
        m.extend_from_slice(&(values.len() as u16).to_be_bytes());
        for v in values {
            match v {
                None => m.push(b'n'),
                Some(t) => {
                    m.push(b't');
                    m.extend_from_slice(&(t.len() as u32).to_be_bytes());
                    m.extend_from_slice(t.as_bytes());
                }
            }
        }
    }

    fn insert(id: u32, values: &[Option<&str>]) -> Vec<u8> {
        let mut m = vec![b'I'];
        m.extend_from_slice(&id.to_be_bytes());
        m.push(b'N');
        tuple(&mut m, values);
        m
    }

    fn update(id: u32, old: Option<&[Option<&str>]>, new: &[Option<&str>]) -> Vec<u8> {
        let mut m = vec![b'U'];
        m.extend_from_slice(&id.to_be_bytes());
        if let Some(old) = old {
            m.push(b'O');
            tuple(&mut m, old);
        }
        m.push(b'N');
        tuple(&mut m, new);
        m
    }

    #[test]
    fn inserts_and_raising_updates_of_the_journal_table_only() {
        let mut d = Decoder::new("public", "server_file_journal", "ns_id", "sj_id");
        let mut out = Vec::new();
        let cols = ["id", "sj_id", "ns_id"];
        d.feed(
            &relation(7, "public", "server_file_journal", &cols),
            &mut out,
        )
        .unwrap();
        d.feed(&relation(8, "public", "other", &cols), &mut out)
            .unwrap();
        d.feed(
            &insert(7, &[Some("1"), Some("18446744073709551615"), Some("3")]),
            &mut out,
        )
        .unwrap();
        d.feed(&insert(8, &[Some("1"), Some("5"), Some("3")]), &mut out)
            .unwrap();
        // Negative or NULL: not an SJID.
        d.feed(&insert(7, &[Some("2"), Some("-1"), Some("3")]), &mut out)
            .unwrap();
        d.feed(&insert(7, &[Some("2"), None, Some("3")]), &mut out)
            .unwrap();
        // Without the old row: announced. With it: only when the SJID rises.
        d.feed(
            &update(7, None, &[Some("1"), Some("4"), Some("3")]),
            &mut out,
        )
        .unwrap();
        let old: &[Option<&str>] = &[Some("1"), Some("9"), Some("3")];
        d.feed(
            &update(7, Some(old), &[Some("1"), Some("8"), Some("3")]),
            &mut out,
        )
        .unwrap();
        d.feed(
            &update(7, Some(old), &[Some("1"), Some("10"), Some("3")]),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, vec![(3, u64::MAX), (3, 4), (3, 10)]);
    }

    #[test]
    fn a_truncated_message_is_an_error() {
        let mut d = Decoder::new("public", "t", "ns_id", "sj_id");
        let mut out = Vec::new();
        d.feed(&relation(1, "public", "t", &["ns_id", "sj_id"]), &mut out)
            .unwrap();
        let mut m = insert(1, &[Some("1"), Some("2")]);
        m.truncate(m.len() - 1);
        assert!(d.feed(&m, &mut out).is_err());
        let missing = relation(1, "public", "t", &["ns_id"]);
        assert!(d.feed(&missing, &mut out).is_err());
    }
}
