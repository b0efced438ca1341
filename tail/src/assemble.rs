//! Sans-IO transaction assembly: turns the binlog's events, already reduced to what matters
//! here, into the changes of *committed* transactions, in commit order, and says from where a
//! restart would rebuild the same state.
//!
//! The binlog holds a transaction only once it commits (row events between a BEGIN/GTID event
//! and its XID or COMMIT). Rows are buffered until that end and dropped on a ROLLBACK (written
//! only when a non-transactional table was touched). An XA transaction is written at
//! `XA PREPARE` and decided later by `XA COMMIT` / `XA ROLLBACK`, possibly after many other
//! transactions: its rows wait under its XID, and the resume point stays at or before its start
//! until it is decided, so a restart rebuilds the waiting set instead of losing it.

use crate::position::BinlogPosition;
use std::collections::HashMap;

/// One change for the journal: `(namespace, sjid)`.
pub type Change = (u64, u64);

/// What the binlog reader tells the assembler, in binlog order. `end` is the position just
/// after the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A transaction starts (MariaDB GTID event, MySQL `BEGIN` query, `XA START`).
    Begin,
    /// Changes of the journal table inside the current transaction.
    Rows(Vec<Change>),
    /// `XA END <xid>`: names the current transaction.
    XaEnd(String),
    /// The current transaction committed (XID event or `COMMIT` query).
    Commit {
        /// After the committing event.
        end: BinlogPosition,
    },
    /// The current transaction rolled back.
    Rollback {
        /// After the rolling-back event.
        end: BinlogPosition,
    },
    /// `XA PREPARE`: the current transaction waits for its decision.
    XaPrepare {
        /// After the prepare event.
        end: BinlogPosition,
    },
    /// `XA COMMIT <xid>` (two-phase): the prepared transaction's rows count now.
    XaCommit {
        /// The XID as written in the query.
        xid: String,
        /// After the decision event.
        end: BinlogPosition,
    },
    /// `XA ROLLBACK <xid>`: the prepared transaction's rows never happened.
    XaRollback {
        /// The XID as written in the query.
        xid: String,
        /// After the decision event.
        end: BinlogPosition,
    },
    /// An event outside any transaction (DDL, rotation): a boundary at `end`.
    Boundary {
        /// After the event, or the new file's first position after a rotation.
        end: BinlogPosition,
    },
}

/// A prepared XA transaction waiting for its decision.
#[derive(Debug)]
struct Prepared {
    /// Where its first event starts: resuming there reads it again.
    start: BinlogPosition,
    changes: Vec<Change>,
}

/// The assembler's state.
#[derive(Debug)]
pub struct Assembler {
    /// Last transaction boundary seen (end of the last closed transaction or outside event).
    boundary: BinlogPosition,
    /// Rows of the open transaction.
    open: Vec<Change>,
    /// Whether a transaction is open.
    in_transaction: bool,
    /// XID of the open transaction (from `XA END`).
    open_xid: Option<String>,
    /// Start of the open transaction.
    open_start: BinlogPosition,
    /// Prepared XA transactions by XID.
    prepared: HashMap<String, Prepared>,
    /// Committed changes not yet taken.
    ready: Vec<Change>,
    /// Transactions committed (and with rows for the table) since the start.
    committed_transactions: u64,
    /// XA decisions for an XID this assembler never saw prepared.
    unknown_xa_decisions: u64,
}

impl Assembler {
    /// An assembler resuming at `start`, a transaction boundary.
    #[must_use]
    pub fn new(start: BinlogPosition) -> Self {
        Assembler {
            boundary: start.clone(),
            open: Vec::new(),
            in_transaction: false,
            open_xid: None,
            open_start: start,
            prepared: HashMap::new(),
            ready: Vec::new(),
            committed_transactions: 0,
            unknown_xa_decisions: 0,
        }
    }

    /// Feeds one input.
    pub fn feed(&mut self, input: Input) {
        match input {
            Input::Begin => {
                // A BEGIN inside an open transaction means the previous one's end was not seen
                // (cannot happen in a well-formed binlog); its rows are dropped, never guessed.
                self.open.clear();
                self.open_xid = None;
                self.in_transaction = true;
                self.open_start = self.boundary.clone();
            }
            Input::Rows(changes) => self.open.extend(changes),
            Input::XaEnd(xid) => self.open_xid = Some(xid),
            Input::Commit { end } => {
                if !self.open.is_empty() {
                    self.committed_transactions += 1;
                }
                self.ready.append(&mut self.open);
                self.close(end);
            }
            Input::Rollback { end } => {
                self.open.clear();
                self.close(end);
            }
            Input::XaPrepare { end } => {
                let changes = std::mem::take(&mut self.open);
                match self.open_xid.take() {
                    Some(xid) => {
                        self.prepared.insert(
                            xid,
                            Prepared {
                                start: self.open_start.clone(),
                                changes,
                            },
                        );
                    }
                    None => {
                        tracing::warn!(%end, rows = changes.len(), "XA PREPARE without a preceding XA END; its rows are dropped");
                    }
                }
                self.close(end);
            }
            Input::XaCommit { xid, end } => {
                match self.prepared.remove(&xid) {
                    Some(p) => {
                        if !p.changes.is_empty() {
                            self.committed_transactions += 1;
                        }
                        self.ready.extend(p.changes);
                    }
                    None => self.unknown_xa_decisions += 1,
                }
                // `XA COMMIT ... ONE PHASE` is logged as an ordinary transaction (BEGIN, rows,
                // XID); a two-phase decision is its own small group.
                self.close(end);
            }
            Input::XaRollback { xid, end } => {
                if self.prepared.remove(&xid).is_none() {
                    self.unknown_xa_decisions += 1;
                }
                self.close(end);
            }
            Input::Boundary { end } => {
                if !self.in_transaction {
                    self.boundary = end;
                }
            }
        }
    }

    fn close(&mut self, end: BinlogPosition) {
        self.in_transaction = false;
        self.open_xid = None;
        self.boundary = end;
    }

    /// Takes the committed changes, in commit order.
    pub fn take_ready(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.ready)
    }

    /// Committed changes waiting to be taken.
    #[must_use]
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Whether a transaction is open (between its start and its end).
    #[must_use]
    pub fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    /// Where a restart must resume to rebuild this state once everything taken so far is
    /// acknowledged: the last boundary, or the start of the oldest undecided XA transaction.
    #[must_use]
    pub fn resume_point(&self) -> BinlogPosition {
        self.prepared
            .values()
            .map(|p| &p.start)
            .chain(std::iter::once(&self.boundary))
            .min()
            .cloned()
            .unwrap_or_else(|| self.boundary.clone())
    }

    /// XA transactions prepared and not yet decided.
    #[must_use]
    pub fn prepared_len(&self) -> usize {
        self.prepared.len()
    }

    /// Transactions with journal rows committed since the start.
    #[must_use]
    pub fn committed_transactions(&self) -> u64 {
        self.committed_transactions
    }

    /// XA decisions whose XID was prepared before this assembler's start.
    #[must_use]
    pub fn unknown_xa_decisions(&self) -> u64 {
        self.unknown_xa_decisions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(pos: u64) -> BinlogPosition {
        BinlogPosition::new("mb.000001", pos)
    }

    #[test]
    fn commit_releases_rollback_drops() {
        let mut a = Assembler::new(at(4));
        a.feed(Input::Begin);
        a.feed(Input::Rows(vec![(1, 1), (2, 5)]));
        assert!(a.take_ready().is_empty(), "nothing before the commit");
        assert_eq!(a.resume_point(), at(4));
        a.feed(Input::Commit { end: at(100) });
        assert_eq!(a.take_ready(), vec![(1, 1), (2, 5)]);
        a.feed(Input::Begin);
        a.feed(Input::Rows(vec![(3, 9)]));
        a.feed(Input::Rollback { end: at(200) });
        assert!(a.take_ready().is_empty());
        assert_eq!(a.resume_point(), at(200));
    }

    #[test]
    fn xa_waits_for_its_decision_and_holds_the_resume_point() {
        let mut a = Assembler::new(at(4));
        a.feed(Input::Begin);
        a.feed(Input::Rows(vec![(7, 70)]));
        a.feed(Input::XaEnd("X'31',X'',1".into()));
        a.feed(Input::XaPrepare { end: at(50) });
        a.feed(Input::Begin);
        a.feed(Input::Rows(vec![(8, 80)]));
        a.feed(Input::XaEnd("X'32',X'',1".into()));
        a.feed(Input::XaPrepare { end: at(90) });
        // Another transaction commits meanwhile: announced at once.
        a.feed(Input::Begin);
        a.feed(Input::Rows(vec![(9, 90)]));
        a.feed(Input::Commit { end: at(120) });
        assert_eq!(a.take_ready(), vec![(9, 90)]);
        assert_eq!(a.resume_point(), at(4), "held at the oldest prepared start");
        a.feed(Input::Begin);
        a.feed(Input::XaRollback {
            xid: "X'32',X'',1".into(),
            end: at(150),
        });
        a.feed(Input::Begin);
        a.feed(Input::XaCommit {
            xid: "X'31',X'',1".into(),
            end: at(180),
        });
        assert_eq!(a.take_ready(), vec![(7, 70)]);
        assert_eq!(a.resume_point(), at(180));
        assert_eq!(a.prepared_len(), 0);
    }

    #[test]
    fn boundaries_inside_a_transaction_do_not_move_the_resume_point() {
        let mut a = Assembler::new(at(4));
        a.feed(Input::Begin);
        a.feed(Input::Boundary { end: at(30) });
        assert_eq!(a.resume_point(), at(4));
        a.feed(Input::Commit { end: at(40) });
        a.feed(Input::Boundary {
            end: BinlogPosition::new("mb.000002", 4),
        });
        assert_eq!(a.resume_point(), BinlogPosition::new("mb.000002", 4));
    }
}
