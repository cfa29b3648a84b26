package replication

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/jackc/pglogrepl"
	"github.com/pgpilot/pgpilot/row"
)

// Decoding pgoutput messages into Relations and Changes, kept free of the
// connection so the stream and the fuzz test run the same code.

// decodeMessage parses one pgoutput message (an XLogData payload) other
// than a row (see decodeRow): Relation, Begin, Commit, Truncate and the
// rest. pglogrepl trusts the lengths inside a message: on a malformed one
// it indexes past the end (a panic) or allocates whatever a count claims.
// Framing is checked first and any panic becomes an error, so a damaged
// stream stops with a message instead of crashing the daemon.
func decodeMessage(data []byte) (m pglogrepl.Message, err error) {
	if len(data) == 0 {
		return nil, errors.New("decode pgoutput message: empty")
	}
	if isRow(data) {
		return nil, fmt.Errorf("decode pgoutput message: a %q message is a row: decodeRow reads it", data[0])
	}
	if err := checkFraming(data); err != nil {
		return nil, fmt.Errorf("decode pgoutput message: malformed %q message of %d bytes: %w", data[0], len(data), err)
	}
	defer func() {
		if r := recover(); r != nil {
			m, err = nil, fmt.Errorf("decode pgoutput message: malformed %q message of %d bytes: %v", data[0], len(data), r)
		}
	}()
	m, err = pglogrepl.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("decode pgoutput message: %w", err)
	}
	return m, nil
}

// decodeBegin reads a Begin message as pglogrepl does (the final LSN, the
// commit time, the xid), into a value rather than an object of its own.
func decodeBegin(data []byte) (pglogrepl.BeginMessage, error) {
	var m pglogrepl.BeginMessage
	if len(data) < 21 {
		return m, fmt.Errorf("decode pgoutput message: malformed 'B' message of %d bytes: want 21", len(data))
	}
	m.FinalLSN = pglogrepl.LSN(binary.BigEndian.Uint64(data[1:]))
	m.CommitTime = pgTime(data[9:])
	m.Xid = binary.BigEndian.Uint32(data[17:])
	return m, nil
}

// decodeCommit reads a Commit message as pglogrepl does (the flags, the
// commit's LSN, the transaction's end, the commit time).
func decodeCommit(data []byte) (pglogrepl.CommitMessage, error) {
	var m pglogrepl.CommitMessage
	if len(data) < 26 {
		return m, fmt.Errorf("decode pgoutput message: malformed 'C' message of %d bytes: want 26", len(data))
	}
	m.Flags = data[1]
	m.CommitLSN = pglogrepl.LSN(binary.BigEndian.Uint64(data[2:]))
	m.TransactionEndLSN = pglogrepl.LSN(binary.BigEndian.Uint64(data[10:]))
	m.CommitTime = pgTime(data[18:])
	return m, nil
}

// pgTime is a Postgres timestamp (microseconds since 2000-01-01 UTC), as
// pglogrepl reads one.
func pgTime(b []byte) time.Time {
	const unixToY2K = 946_684_800 * 1_000_000 // microseconds
	return time.Unix(0, (unixToY2K+int64(binary.BigEndian.Uint64(b)))*1000)
}

// checkFraming checks that the relation count of a Truncate message fits
// the message.
func checkFraming(data []byte) error {
	if data[0] != 'T' {
		return nil
	}
	if len(data) < 6 {
		return errors.New("no relation count")
	}
	if n := binary.BigEndian.Uint32(data[1:]); uint64(n)*4 > uint64(len(data)-6) {
		return fmt.Errorf("claims %d relations", n)
	}
	return nil
}

// isRow reports whether data is an Insert, Update or Delete message.
func isRow(data []byte) bool {
	return len(data) > 0 && (data[0] == 'I' || data[0] == 'U' || data[0] == 'D')
}

// decodeRow reads an Insert, Update or Delete message (protocol version 1)
// straight into row values, checking every length and count against the
// message as it goes: the bytes are read once and copied once, into a's
// blocks (the connection reuses its buffer), with no message structs in
// between. Most of a change's cost was pglogrepl's decoding (an object per
// column, each value copied twice), so the stream reads rows itself.
func decodeRow(data []byte, a *arena) (r rowMessage, err error) {
	malformed := func(format string, args ...any) error {
		return fmt.Errorf("decode pgoutput message: malformed %q message of %d bytes: %s", data[0], len(data), fmt.Sprintf(format, args...))
	}
	if len(data) < 6 {
		return rowMessage{}, malformed("no relation id and tuple")
	}
	r.relation = binary.BigEndian.Uint32(data[1:])
	rest := data[5:]
	kind := rest[0]
	rest = rest[1:]
	switch data[0] {
	case 'I':
		r.op = row.Insert
		if kind != 'N' {
			return rowMessage{}, malformed("unexpected tuple kind %q", kind)
		}
	case 'U':
		r.op = row.Update
		switch kind {
		case 'K', 'O':
			if r.old, rest, err = decodeTuple(rest, a); err != nil {
				return rowMessage{}, malformed("old tuple: %v", err)
			}
			if len(rest) == 0 || rest[0] != 'N' {
				return rowMessage{}, malformed("no new tuple")
			}
			rest = rest[1:]
		case 'N':
		default:
			return rowMessage{}, malformed("unexpected tuple kind %q", kind)
		}
	case 'D':
		r.op = row.Delete
		if kind != 'K' && kind != 'O' {
			return rowMessage{}, malformed("unexpected tuple kind %q", kind)
		}
	}
	if r.values, _, err = decodeTuple(rest, a); err != nil {
		return rowMessage{}, malformed("%v", err)
	}
	return r, nil
}

// decodeTuple reads one TupleData: a column count, then per column its
// kind and, for text (or binary), a length and the bytes.
func decodeTuple(b []byte, a *arena) ([]row.Value, []byte, error) {
	if len(b) < 2 {
		return nil, nil, errors.New("tuple without column count")
	}
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if n > len(b) {
		return nil, nil, fmt.Errorf("claims %d columns in %d bytes", n, len(b))
	}
	vals := a.values(n)
	for i := range vals {
		if len(b) < 1 {
			return nil, nil, fmt.Errorf("column %d of %d missing", i+1, n)
		}
		typ := b[0]
		b = b[1:]
		switch typ {
		case pglogrepl.TupleDataTypeNull:
			vals[i].Null = true
		case pglogrepl.TupleDataTypeToast:
			vals[i].Unchanged = true
		case pglogrepl.TupleDataTypeText, pglogrepl.TupleDataTypeBinary:
			if len(b) < 4 {
				return nil, nil, fmt.Errorf("column %d without length", i+1)
			}
			size := binary.BigEndian.Uint32(b)
			b = b[4:]
			if uint64(size) > uint64(len(b)) {
				return nil, nil, fmt.Errorf("column %d claims %d bytes, %d left", i+1, size, len(b))
			}
			vals[i].Text = a.copy(b[:size])
			b = b[size:]
		default:
			return nil, nil, fmt.Errorf("column %d of unknown kind %q", i+1, typ)
		}
	}
	return vals, b, nil
}

// arena is where a stream copies the values it reads: blocks that are
// handed out in slices and never reused, so a value stays valid for as
// long as anything holds it (a snapshot chunk may keep a streamed row) and
// a change costs no allocation of its own. A block lives until the last
// value in it is dropped; blocks are small beside a piece of a large
// transaction.
type arena struct {
	text []byte
	vals []row.Value
}

const (
	arenaText = 32 << 10
	// arenaValues is as many values as fit in just under 32 kB: a block
	// of memory holding pointers over 32,760 bytes is a large object, a
	// span of its own taken under the heap's lock (1,024 values were).
	arenaValues = (32<<10 - 8) / int(unsafe.Sizeof(row.Value{}))
)

// values returns n zero values.
func (a *arena) values(n int) []row.Value {
	if n == 0 {
		return []row.Value{}
	}
	if cap(a.vals)-len(a.vals) < n {
		if n > arenaValues/4 {
			return make([]row.Value, n)
		}
		a.vals = make([]row.Value, 0, arenaValues)
	}
	i := len(a.vals)
	a.vals = a.vals[:i+n]
	return a.vals[i : i+n : i+n]
}

// copy returns a copy of b.
func (a *arena) copy(b []byte) []byte {
	if cap(a.text)-len(a.text) < len(b) {
		if len(b) > arenaText/4 {
			return append(make([]byte, 0, len(b)), b...)
		}
		a.text = make([]byte, 0, arenaText)
	}
	i := len(a.text)
	a.text = append(a.text, b...)
	return a.text[i : i+len(b) : i+len(b)]
}

// ColumnTypes resolves a column's type for decoding (see TypeResolver,
// the one the stream uses) and names it for messages.
type ColumnTypes interface {
	Resolve(ctx context.Context, oid uint32) (uint32, error)
	Name(ctx context.Context, oid uint32, typmod int32) (string, error)
}

// decodeRelation describes a table from a pgoutput Relation message.
func decodeRelation(ctx context.Context, m *pglogrepl.RelationMessage, types ColumnTypes) (*row.Relation, error) {
	rel := &row.Relation{ID: m.RelationID, Table: row.Table{Schema: m.Namespace, Name: m.RelationName}}
	for _, c := range m.Columns {
		oid, err := types.Resolve(ctx, c.DataType)
		if err != nil {
			return nil, fmt.Errorf("describe %s column %q: %w", rel.Table, c.Name, err)
		}
		name, err := types.Name(ctx, c.DataType, c.TypeModifier)
		if err != nil {
			return nil, fmt.Errorf("describe %s column %q: %w", rel.Table, c.Name, err)
		}
		rel.Columns = append(rel.Columns, row.Column{Name: c.Name, TypeOID: oid, TypeName: name})
	}
	return rel, nil
}

// rowMessage is what a pgoutput Insert, Update or Delete message carries: the new
// row of an INSERT or UPDATE, the old replica identity of a DELETE, and the
// old replica identity of an UPDATE when Postgres sent one (the key
// changed, or REPLICA IDENTITY FULL).
type rowMessage struct {
	op       row.Op
	relation uint32
	values   []row.Value
	old      []row.Value
}

// change is r as a Change of rel.
func (r rowMessage) change(rel *row.Relation) row.Change {
	return row.Change{Op: r.op, Relation: rel, Values: r.values, Old: r.old}
}
