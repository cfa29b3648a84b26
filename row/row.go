// Package row is the one home of what flows from Postgres into pgpilot: a
// table's description (Table, Column, Relation), one column's value as
// Postgres printed it (Value), a row change (Change) and the unit of
// delivery and checkpointing that carries changes (Transaction).
//
// Replication and the snapshot make these values; mapping reads them;
// delivery orders and checkpoints them. It imports no other pgpilot
// package, so every stage can share it without a cycle, and no stage
// converts one stage's row into another's.
package row

import (
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// Table names a table.
type Table struct {
	Schema, Name string
}

// String is the table as an operator would write it.
func (t Table) String() string { return t.Schema + "." + t.Name }

// Quoted is the table as a safely quoted SQL identifier.
func (t Table) Quoted() string { return pgx.Identifier{t.Schema, t.Name}.Sanitize() }

// Column is one column of a table.
type Column struct {
	Name string
	// TypeOID is the type to decode the column's text with: a domain is
	// resolved to its base type, and enums and other string-category types
	// (citext) to text, so the decoder only meets types it knows.
	TypeOID uint32
	// TypeName is the declared type as format_type prints it, for messages
	// (e.g. "numeric(38,10)", "jsonb").
	TypeName string
}

// Relation is a table as described by the stream (or the snapshot). A new
// Relation value is made whenever Postgres describes the table again, so a
// consumer can tell a schema change by pointer inequality.
type Relation struct {
	ID uint32
	// Kind says what the rows are: a table's, or a company's related
	// values.
	Kind    RelationKind
	Table   Table // the table, for TableRows
	Columns []Column
	// Keys, when not nil, narrows what a row of this description sets:
	// the rows of a snapshot job that backfills a mapping change are read
	// under a description of their own.
	Keys *KeySet
}

// RelationKind is what the rows of a Relation are.
type RelationKind uint8

const (
	// TableRows are a table's rows: streamed, or read by a snapshot.
	TableRows RelationKind = iota
	// RelatedValues are companies' related values, each row re-read by
	// the related stage for one company: its id, then one column per
	// metadata key, named as the key and typed as Postgres planned it.
	RelatedValues
)

// KeySet is what a backfill after a mapping change sends of each row:
// the current values of the keys Set (added or changed), and null for
// the keys Clear (dropped from the mapping).
type KeySet struct {
	Set, Clear []string
}

// Value is one column's value as Postgres sent it: text in the type's
// output format (the sessions use DateStyle=ISO, TimeZone=UTC,
// extra_float_digits=3, IntervalStyle=postgres), NULL, or "unchanged" for a
// TOASTed value an UPDATE did not touch (Postgres does not resend it, so
// its current value is unknown here: a mapped key for it is left out of
// the payload, never sent as null).
type Value struct {
	Text      []byte // valid when !Null && !Unchanged
	Null      bool
	Unchanged bool
}

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

// Kind says what a Transaction is, so that no consumer has to tell it from
// which of its positions are zero.
type Kind uint8

// Transaction kinds.
const (
	// Commit is a committed transaction, or the last piece of a large one:
	// EndLSN may be checkpointed once it and everything before it is
	// delivered.
	Commit Kind = iota + 1
	// Piece is a part of a large transaction that is still arriving (every
	// part but the last): it moves no position; CommitLSN says which
	// transaction it belongs to.
	Piece
	// Marker carries only a position (a keepalive's, or a transaction on
	// other tables'): with nothing undelivered before it, EndLSN may be
	// checkpointed, so a quiet table never holds WAL back.
	Marker
	// Chunk is a piece of a snapshot (the initial sync or a re-sync): rows
	// read from the table, not changes; it moves no position but may carry
	// a Mark.
	Chunk
)

func (k Kind) String() string {
	switch k {
	case Commit:
		return "commit"
	case Piece:
		return "piece"
	case Marker:
		return "marker"
	case Chunk:
		return "chunk"
	}
	return "unknown"
}

// Transaction is the unit of delivery and of checkpointing.
type Transaction struct {
	Kind       Kind
	CommitLSN  pglogrepl.LSN // Commit and Piece: where the commit record starts
	EndLSN     pglogrepl.LSN // Commit and Marker: the position it lets be checkpointed
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
	// Charge is what the stream took from its Budget for the changes; the
	// consumer that takes them in releases it.
	Charge Charge
}
