package replication

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/pgpilot/pgpilot/row"
)

// Decoding pgoutput messages into Relations and Changes, kept free of the
// connection so the stream and the fuzz test run the same code.

// decodeMessage parses one pgoutput message (an XLogData payload).
// pglogrepl trusts the lengths inside a message: on a malformed one it
// indexes past the end (a panic) or, for a row, allocates whatever a column
// length or relation count claims (up to 16 GiB). Framing is checked first and any panic
// becomes an error, so a damaged stream stops with a message instead of
// crashing the daemon.
func decodeMessage(data []byte) (m pglogrepl.Message, err error) {
	if len(data) == 0 {
		return nil, errors.New("decode pgoutput message: empty")
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

// checkFraming checks that the lengths and counts inside a Truncate,
// Insert, Update or Delete message (protocol version 1) fit the message.
func checkFraming(data []byte) error {
	switch data[0] {
	case 'T':
		if len(data) < 6 {
			return errors.New("no relation count")
		}
		if n := binary.BigEndian.Uint32(data[1:]); uint64(n)*4 > uint64(len(data)-6) {
			return fmt.Errorf("claims %d relations", n)
		}
		return nil
	case 'I', 'U', 'D':
	default:
		return nil
	}
	rest := data[1:]
	if len(rest) < 4 {
		return errors.New("no relation id")
	}
	rest = rest[4:]
	for len(rest) > 0 {
		kind := rest[0] // 'K', 'O' or 'N', each followed by a tuple
		if kind != 'K' && kind != 'O' && kind != 'N' {
			return fmt.Errorf("unexpected tuple kind %q", kind)
		}
		if len(rest) < 3 {
			return errors.New("tuple without column count")
		}
		n := int(binary.BigEndian.Uint16(rest[1:]))
		rest = rest[3:]
		for i := range n {
			if len(rest) < 1 {
				return fmt.Errorf("column %d of %d missing", i+1, n)
			}
			typ := rest[0]
			rest = rest[1:]
			if typ != pglogrepl.TupleDataTypeText && typ != pglogrepl.TupleDataTypeBinary {
				continue
			}
			if len(rest) < 4 {
				return fmt.Errorf("column %d without length", i+1)
			}
			size := binary.BigEndian.Uint32(rest)
			rest = rest[4:]
			if uint64(size) > uint64(len(rest)) {
				return fmt.Errorf("column %d claims %d bytes, %d left", i+1, size, len(rest))
			}
			rest = rest[size:]
		}
		if kind == 'N' || data[0] == 'D' {
			return nil
		}
	}
	return errors.New("no new tuple")
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
	tuple    *pglogrepl.TupleData
	old      *pglogrepl.TupleData
}

// rowOf returns the row m carries; ok is false for other messages.
func rowOf(m pglogrepl.Message) (r rowMessage, ok bool) {
	switch m := m.(type) {
	case *pglogrepl.InsertMessage:
		return rowMessage{op: row.Insert, relation: m.RelationID, tuple: m.Tuple}, true
	case *pglogrepl.UpdateMessage:
		return rowMessage{op: row.Update, relation: m.RelationID, tuple: m.NewTuple, old: m.OldTuple}, true
	case *pglogrepl.DeleteMessage:
		return rowMessage{op: row.Delete, relation: m.RelationID, tuple: m.OldTuple}, true
	}
	return rowMessage{}, false
}

// change is r as a Change of rel, its values copied out of the message
// (whose bytes the connection's next receive reuses).
func (r rowMessage) change(rel *row.Relation) row.Change {
	ch := row.Change{Op: r.op, Relation: rel, Values: tupleValues(r.tuple)}
	if r.old != nil {
		ch.Old = tupleValues(r.old)
	}
	return ch
}

func tupleValues(t *pglogrepl.TupleData) []row.Value {
	if t == nil {
		return nil
	}
	// The values' bytes are copied into one buffer: one allocation per
	// tuple rather than per value.
	size := 0
	for _, c := range t.Columns {
		size += len(c.Data)
	}
	buf := make([]byte, 0, size)
	vals := make([]row.Value, len(t.Columns))
	for i, c := range t.Columns {
		switch c.DataType {
		case pglogrepl.TupleDataTypeNull:
			vals[i].Null = true
		case pglogrepl.TupleDataTypeToast:
			vals[i].Unchanged = true
		default:
			if len(c.Data) == 0 {
				continue // an empty value's Text stays nil, as before
			}
			start := len(buf)
			buf = append(buf, c.Data...)
			vals[i].Text = buf[start:len(buf):len(buf)]
		}
	}
	return vals
}
