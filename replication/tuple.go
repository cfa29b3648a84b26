package replication

import (
	"encoding/binary"
	"fmt"
)

// Row messages (Insert, Update, Delete) are most of a stream, so they are
// decoded here, once, straight from the connection's buffer into Values:
// pglogrepl.Parse would allocate a message, a tuple and, per column, a
// struct and a copy of its bytes, which the stream would then copy again.
// Here a row costs two allocations (its Values and one buffer holding all
// its columns' text), and a row of another table costs none.
//
// The layout is pgoutput's, protocol version 1:
//
//	Insert: 'I' relid:int32 'N' tuple
//	Update: 'U' relid:int32 [('K'|'O') old-tuple] 'N' tuple
//	Delete: 'D' relid:int32 ('K'|'O') old-tuple
//	tuple:  ncols:int16 { 'n' | 'u' | ('t'|'b') len:int32 bytes[len] }

// rowMessage locates the tuple of a row message that the stream keeps: the
// new row of an Insert or Update, the old key (or old row) of a Delete.
// It reads the message's header only.
func rowMessage(data []byte) (op Op, relID uint32, tuple []byte, err error) {
	if len(data) < 6 {
		return 0, 0, nil, fmt.Errorf("row message of %d bytes is too short", len(data))
	}
	relID = binary.BigEndian.Uint32(data[1:5])
	kind, rest := data[5], data[6:]
	switch data[0] {
	case 'I':
		if kind != 'N' {
			return 0, 0, nil, fmt.Errorf("insert message: tuple type %q, want 'N'", kind)
		}
		return Insert, relID, rest, nil
	case 'U':
		if kind == 'K' || kind == 'O' {
			// The old key or row, sent when the key changed or under
			// REPLICA IDENTITY FULL: skipped, the new row is what is mirrored.
			n, _, err := tupleLen(rest)
			if err != nil {
				return 0, 0, nil, fmt.Errorf("update message: old tuple: %w", err)
			}
			if n >= len(rest) {
				return 0, 0, nil, fmt.Errorf("update message: no new tuple after the old one")
			}
			kind, rest = rest[n], rest[n+1:]
		}
		if kind != 'N' {
			return 0, 0, nil, fmt.Errorf("update message: tuple type %q, want 'N'", kind)
		}
		return Update, relID, rest, nil
	case 'D':
		if kind != 'K' && kind != 'O' {
			return 0, 0, nil, fmt.Errorf("delete message: tuple type %q, want 'K' or 'O'", kind)
		}
		return Delete, relID, rest, nil
	}
	return 0, 0, nil, fmt.Errorf("message type %q is not a row message", data[0])
}

// tupleLen is the length in bytes of the tuple at the start of data, and
// how many of them are column values.
func tupleLen(data []byte) (n, text int, err error) {
	if len(data) < 2 {
		return 0, 0, fmt.Errorf("tuple of %d bytes is too short", len(data))
	}
	ncols := int(binary.BigEndian.Uint16(data))
	pos := 2
	for i := range ncols {
		if pos >= len(data) {
			return 0, 0, fmt.Errorf("tuple ends before column %d of %d", i+1, ncols)
		}
		kind := data[pos]
		pos++
		switch kind {
		case 'n', 'u':
		case 't', 'b':
			if len(data)-pos < 4 {
				return 0, 0, fmt.Errorf("tuple ends inside the length of column %d", i+1)
			}
			l := int(binary.BigEndian.Uint32(data[pos:]))
			pos += 4
			if l < 0 || l > len(data)-pos {
				return 0, 0, fmt.Errorf("column %d claims %d bytes, %d left", i+1, l, len(data)-pos)
			}
			pos += l
			text += l
		default:
			return 0, 0, fmt.Errorf("column %d has unknown kind %q", i+1, kind)
		}
	}
	return pos, text, nil
}

// tupleValues decodes the tuple at the start of data into Values that own
// their bytes (data is the connection's read buffer, which the next
// receive reuses). Every column's text shares one allocation; each Text is
// capped at its own length, so appending to one never overwrites the next.
// An empty text is nil, as is the text of a NULL or unchanged value.
func tupleValues(data []byte) ([]Value, error) {
	n, text, err := tupleLen(data)
	if err != nil {
		return nil, err
	}
	data = data[:n]
	vals := make([]Value, binary.BigEndian.Uint16(data))
	var buf []byte
	if text > 0 {
		buf = make([]byte, 0, text)
	}
	pos := 2
	for i := range vals {
		kind := data[pos]
		pos++
		switch kind {
		case 'n':
			vals[i].Null = true
		case 'u':
			vals[i].Unchanged = true
		default: // 't' or 'b', checked by tupleLen
			l := int(binary.BigEndian.Uint32(data[pos:]))
			pos += 4
			if l > 0 {
				start := len(buf)
				buf = append(buf, data[pos:pos+l]...)
				vals[i].Text = buf[start:len(buf):len(buf)]
			}
			pos += l
		}
	}
	return vals, nil
}
