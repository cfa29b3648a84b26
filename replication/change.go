package replication

import (
	"time"

	"github.com/jackc/pglogrepl"
)

// Op is the kind of a row change.
type Op uint8

// Row change kinds.
const (
	Insert Op = iota + 1
	Update
	Delete
	Truncate
)

func (o Op) String() string {
	switch o {
	case Insert:
		return "insert"
	case Update:
		return "update"
	case Delete:
		return "delete"
	case Truncate:
		return "truncate"
	}
	return "unknown"
}

// Value is one column's value as Postgres sent it: text in the type's output
// format, NULL, or "unchanged" for a TOASTed value an UPDATE did not touch
// (Postgres does not resend it, so its current value is unknown here).
type Value struct {
	Text      []byte
	Null      bool
	Unchanged bool
}

// Relation is a table as described by the stream (or the snapshot). A new
// Relation value is made whenever Postgres describes the table again, so a
// consumer can tell a schema change by pointer inequality.
type Relation struct {
	ID      uint32
	Table   Table
	Columns []Column
}

// Change is one row change. Values is positional, one per Relation column:
// the new row for inserts and updates, the old key (or old row under
// REPLICA IDENTITY FULL) for deletes, nil for truncates.
type Change struct {
	Op       Op
	Relation *Relation
	Values   []Value
	// Old is, for an update, the old key when the update changed it, or the
	// old row under REPLICA IDENTITY FULL; nil otherwise (positional too).
	Old []Value
}

// Transaction is the unit of delivery and of checkpointing. EndLSN may be
// checkpointed once every change in it, and in every earlier Transaction,
// has been delivered. A Transaction without changes is a position marker
// (from a keepalive, or a transaction on other tables); one with EndLSN 0
// is a piece of the initial snapshot, which moves no position.
//
// A large transaction comes in pieces: every piece but the last has EndLSN
// 0, and the last carries the transaction's EndLSN.
type Transaction struct {
	CommitLSN  pglogrepl.LSN
	EndLSN     pglogrepl.LSN
	CommitTime time.Time
	// Xid is the transaction's id, as pgoutput's BEGIN carries it (32 bits).
	Xid     uint32
	Changes []Change
	// Resend asks for its rows to be delivered even where Userpilot is
	// believed to hold them already (a re-sync).
	Resend bool
	// Mark, when set, is handed back to the consumer's checkpoint once this
	// Transaction and everything before it is delivered: a snapshot chunk
	// records its progress so.
	Mark any

	chunked bool // pieces of it were sent already
}
