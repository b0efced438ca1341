//! Binlog events → [`Input`]s of the assembler: which events start and end transactions (MySQL
//! and MariaDB write them differently), which row events belong to the journal table, and what
//! changes their rows make.

use super::preflight::ServerFacts;
use crate::assemble::{Assembler, Change, Input};
use crate::config::MysqlConfig;
use crate::metrics as m;
use crate::position::BinlogPosition;
use mysql_async::binlog::EventType;
use mysql_async::binlog::events::{
    Event, EventData, OptionalMetadataField, RowsEventData, TableMapEvent,
};
use mysql_async::binlog::row::BinlogRow;
use mysql_async::binlog::value::BinlogValue;
use mysql_async::consts::ColumnType;
use std::collections::HashMap;

/// MariaDB's GTID event: starts every event group (replaces `BEGIN`).
const MARIADB_GTID_EVENT: u8 = 162;
/// MariaDB GTID flag: the group has no terminating COMMIT/XID (DDL, non-transactional).
const FL_STANDALONE: u8 = 1;

/// Where the two journal columns are in a table's row images, and how wide they are.
#[derive(Debug, Clone, Copy)]
struct JournalColumns {
    ns: usize,
    sjid: usize,
    ns_mask: u64,
    sjid_mask: u64,
}

/// The decoder's state across events.
pub struct Decoder {
    database: String,
    table: String,
    ns_column: String,
    sjid_column: String,
    /// Column positions from `information_schema`, used when table maps carry no names.
    schema: (usize, usize, usize),
    /// Current binlog file (from rotate events).
    file: String,
    /// Per table id: the journal columns, or `None` for any other table.
    tables: HashMap<u64, Option<JournalColumns>>,
    /// The open group started with a standalone GTID: the next query closes it.
    standalone: bool,
    /// A format description event has been read. Before it (the stream's opening fake rotate)
    /// the reader does not know the checksum, and event bodies end with its 4 bytes.
    seen_format: bool,
}

impl Decoder {
    /// A decoder for the configured table, starting in `file`.
    #[must_use]
    pub fn new(cfg: &MysqlConfig, facts: &ServerFacts, file: String) -> Self {
        Decoder {
            database: cfg.database.clone(),
            table: cfg.table.clone(),
            ns_column: cfg.ns_column.clone(),
            sjid_column: cfg.sjid_column.clone(),
            schema: (facts.ns_index, facts.sjid_index, facts.columns),
            file,
            tables: HashMap::new(),
            standalone: false,
            seen_format: false,
        }
    }

    fn at(&self, event: &Event) -> BinlogPosition {
        BinlogPosition::new(self.file.clone(), u64::from(event.header().log_pos()))
    }

    /// Decodes one event into `assembler`. `stream` holds the table maps seen so far.
    pub fn feed(
        &mut self,
        event: &Event,
        stream: &mysql_async::BinlogStream,
        assembler: &mut Assembler,
    ) -> anyhow::Result<()> {
        let header = event.header();
        let timestamp = header.timestamp();
        if header.event_type_raw() == EventType::HEARTBEAT_EVENT as u8 {
            metrics::gauge!(m::LAG_SECONDS).set(0.0);
            return Ok(());
        }
        if timestamp > 0 && header.log_pos() > 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            metrics::gauge!(m::LAG_SECONDS).set(now.saturating_sub(u64::from(timestamp)) as f64);
        }
        if header.event_type_raw() == MARIADB_GTID_EVENT {
            let flags = event.data().get(12).copied().unwrap_or(0);
            self.standalone = flags & FL_STANDALONE != 0;
            self.tables.clear();
            assembler.feed(Input::Begin);
            return Ok(());
        }
        let Some(data) = event.read_data()? else {
            return Ok(());
        };
        match data {
            EventData::FormatDescriptionEvent(_) => self.seen_format = true,
            EventData::RotateEvent(rotate) => {
                self.file = rotate_file_name(rotate.name_raw(), self.seen_format);
                assembler.feed(Input::Boundary {
                    end: BinlogPosition::new(self.file.clone(), rotate.position()),
                });
            }
            EventData::XidEvent(_) => assembler.feed(Input::Commit {
                end: self.at(event),
            }),
            EventData::XaPrepareLogEvent(_) => assembler.feed(Input::XaPrepare {
                end: self.at(event),
            }),
            EventData::QueryEvent(query) => {
                let text = query.query();
                self.query(text.trim(), self.at(event), assembler);
            }
            EventData::TableMapEvent(tme) => {
                let columns = self.journal_columns(&tme)?;
                self.tables.insert(tme.table_id(), columns);
            }
            EventData::RowsEvent(rows) => {
                let Some(Some(columns)) = self.tables.get(&rows.table_id()).copied() else {
                    return Ok(());
                };
                let tme = stream
                    .get_tme(rows.table_id())
                    .ok_or_else(|| anyhow::anyhow!("rows event without its table map"))?;
                let changes = changes_of(&rows, tme, columns)?;
                assembler.feed(Input::Rows(changes));
            }
            _ => {}
        }
        Ok(())
    }

    /// Transaction control and DDL, from a query event's text.
    fn query(&mut self, text: &str, end: BinlogPosition, assembler: &mut Assembler) {
        let upper = text
            .get(..text.len().min(24))
            .unwrap_or("")
            .to_ascii_uppercase();
        let rest = |verb: &str| text.get(verb.len()..).unwrap_or("").trim().to_owned();
        if upper == "BEGIN" || upper.starts_with("XA START") {
            // Table maps are repeated in every transaction: forget the previous ones, so the
            // map stays small however many table ids the server hands out.
            self.tables.clear();
            assembler.feed(Input::Begin);
        } else if upper == "COMMIT" {
            assembler.feed(Input::Commit { end });
        } else if upper == "ROLLBACK" {
            assembler.feed(Input::Rollback { end });
        } else if upper.starts_with("XA END") {
            assembler.feed(Input::XaEnd(rest("XA END")));
        } else if upper.starts_with("XA COMMIT") {
            let xid = rest("XA COMMIT");
            match xid.strip_suffix("ONE PHASE") {
                // One phase: the open transaction itself commits.
                Some(_) => assembler.feed(Input::Commit { end }),
                None => assembler.feed(Input::XaCommit { xid, end }),
            }
        } else if upper.starts_with("XA ROLLBACK") {
            assembler.feed(Input::XaRollback {
                xid: rest("XA ROLLBACK"),
                end,
            });
        } else if std::mem::take(&mut self.standalone) {
            // DDL and other self-contained statements: their GTID opened a group that this
            // query is all of.
            assembler.feed(Input::Commit { end });
        } else {
            assembler.feed(Input::Boundary { end });
        }
    }

    /// The journal columns of `tme`'s table, or `None` for another table.
    fn journal_columns(&self, tme: &TableMapEvent<'_>) -> anyhow::Result<Option<JournalColumns>> {
        if tme.database_name() != self.database.as_str() || tme.table_name() != self.table.as_str()
        {
            return Ok(None);
        }
        // Column names travel with the table map under binlog_row_metadata=FULL; then a
        // column added or moved since the start is still found. Otherwise the positions read
        // from information_schema at connect time are used, if the column count still agrees.
        let mut names = None;
        for field in tme.iter_optional_meta() {
            if let Ok(OptionalMetadataField::ColumnName(cols)) = field {
                names = Some(
                    cols.iter_names()
                        .filter_map(Result::ok)
                        .map(|n| n.name().into_owned())
                        .collect::<Vec<_>>(),
                );
            }
        }
        let (ns, sjid) = match names {
            Some(names) => {
                let find = |want: &str| names.iter().position(|n| n.eq_ignore_ascii_case(want));
                match (find(&self.ns_column), find(&self.sjid_column)) {
                    (Some(ns), Some(sj)) => (ns, sj),
                    _ => anyhow::bail!(
                        "the binlog's table map of {}.{} lacks column {} or {} (columns: {})",
                        self.database,
                        self.table,
                        self.ns_column,
                        self.sjid_column,
                        names.join(", ")
                    ),
                }
            }
            None => {
                let (ns, sj, count) = self.schema;
                anyhow::ensure!(
                    tme.columns_count() as usize == count,
                    "the binlog's table map of {}.{} has {} columns, the table had {count} when the tailer connected; set binlog_row_metadata=FULL so column names travel with the binlog, then restart the tailer",
                    self.database,
                    self.table,
                    tme.columns_count()
                );
                (ns, sj)
            }
        };
        Ok(Some(JournalColumns {
            ns,
            sjid,
            ns_mask: width_mask(tme, ns),
            sjid_mask: width_mask(tme, sjid),
        }))
    }
}

/// The file name of a rotate event. A server's artificial rotate events (at the start of a
/// stream, and when it moves to the next file after a crash left the previous one without a
/// rotate event) can reach the reader while it assumes no checksum, so the name ends with the
/// event's 4 CRC bytes. Binlog names end in `.<digits>`: a name that does not, while the name
/// without its last 4 bytes does, had them; when both do (4 CRC bytes that are all digits),
/// whether a format description was seen decides.
fn rotate_file_name(raw: &[u8], seen_format: bool) -> String {
    fn numbered(name: &[u8]) -> bool {
        match name.iter().rposition(|&b| b == b'.') {
            Some(dot) => dot + 1 < name.len() && name[dot + 1..].iter().all(u8::is_ascii_digit),
            None => false,
        }
    }
    let stripped = &raw[..raw.len().saturating_sub(4)];
    let name = match (numbered(raw), numbered(stripped)) {
        (false, true) => stripped,
        (true, true) if !seen_format => stripped,
        _ => raw,
    };
    String::from_utf8_lossy(name).into_owned()
}

/// Mask of a column's integer width: row events carry an unsigned `INT` as the signed value of
/// its bits when the table map has no signedness metadata.
fn width_mask(tme: &TableMapEvent<'_>, index: usize) -> u64 {
    match tme.get_column_type(index) {
        Ok(Some(ColumnType::MYSQL_TYPE_TINY)) => 0xff,
        Ok(Some(ColumnType::MYSQL_TYPE_SHORT)) => 0xffff,
        Ok(Some(ColumnType::MYSQL_TYPE_INT24)) => 0xff_ffff,
        Ok(Some(ColumnType::MYSQL_TYPE_LONG)) => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// The changes of one rows event: every inserted row; an updated row whose SJID rose; nothing
/// for a deleted row.
fn changes_of(
    rows: &RowsEventData<'_>,
    tme: &TableMapEvent<'_>,
    columns: JournalColumns,
) -> anyhow::Result<Vec<Change>> {
    let mut changes = Vec::new();
    let is_delete = matches!(
        rows,
        RowsEventData::DeleteRowsEvent(_) | RowsEventData::DeleteRowsEventV1(_)
    );
    let mut read = 0u64;
    for row in rows.rows(tme) {
        let (before, after) = row?;
        read += 1;
        if is_delete {
            continue;
        }
        let Some(after) = after else { continue };
        let Some((ns, sjid)) = pair(&after, columns) else {
            metrics::counter!(m::ROWS_SKIPPED).increment(1);
            continue;
        };
        let raised = match before.as_ref().and_then(|b| pair(b, columns)) {
            Some((_, old)) => sjid > old,
            None => true,
        };
        if raised && sjid > 0 {
            changes.push((ns, sjid));
        }
    }
    metrics::counter!(m::ROWS).increment(read);
    Ok(changes)
}

fn pair(row: &BinlogRow, c: JournalColumns) -> Option<(u64, u64)> {
    Some((
        unsigned(row.as_ref(c.ns)?)? & c.ns_mask,
        unsigned(row.as_ref(c.sjid)?)? & c.sjid_mask,
    ))
}

fn unsigned(value: &BinlogValue<'_>) -> Option<u64> {
    match value {
        BinlogValue::Value(mysql_async::Value::UInt(u)) => Some(*u),
        BinlogValue::Value(mysql_async::Value::Int(i)) => Some(*i as u64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::rotate_file_name;

    #[test]
    fn rotate_names_lose_a_trailing_checksum() {
        assert_eq!(rotate_file_name(b"mb.000002", true), "mb.000002");
        assert_eq!(
            rotate_file_name(b"mb.000002\x26\xf1\x9a\x07", true),
            "mb.000002"
        );
        assert_eq!(
            rotate_file_name(b"mb.000002\x26\xf1\x9a\x07", false),
            "mb.000002"
        );
        assert_eq!(rotate_file_name(b"mb.0000021234", false), "mb.000002");
        assert_eq!(rotate_file_name(b"mb.0000021234", true), "mb.0000021234");
    }
}
