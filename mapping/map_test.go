package mapping

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/userpilot"
)

// TestMapIsIdentifyWithoutAMap: Map gives, key by key in Keys' order, what
// Identify puts in its map (a key the row leaves out is nil, NULL is
// null), the same errors and the same company id with them, also when its
// room is reused from the row before (as delivery does).
func TestMapIsIdentifyWithoutAMap(t *testing.T) {
	cols := []row.Column{
		{Name: "id", TypeOID: pgtype.Int8OID}, {Name: "name", TypeOID: pgtype.TextOID}, {Name: "seats", TypeOID: pgtype.Int4OID},
		{Name: "spend", TypeOID: pgtype.NumericOID}, {Name: "trial", TypeOID: pgtype.BoolOID}, {Name: "at", TypeOID: pgtype.TimestamptzOID},
	}
	m, err := Compile(Companies{CompanyID: "id", Metadata: []Field{
		{Key: "name", Column: "name"}, {Key: "seats", Column: "seats"}, {Key: "spend", Column: "spend"},
		{Key: "trial", Column: "trial"}, {Key: "created_at", Column: "at"}, {Key: "seats_text", Column: "seats", Type: TypeString},
	}}, "t", cols)
	require.NoError(t, err)
	assert.Equal(t, []string{"name", "seats", "spend", "trial", "created_at", "seats_text"}, m.Keys())

	text := func(s string) row.Value { return row.Value{Text: []byte(s)} }
	null, toast := row.Value{Null: true}, row.Value{Unchanged: true}
	tests := []struct {
		name    string
		values  []row.Value
		wantErr bool
	}{
		{"every key", []row.Value{text("1"), text("Globex"), text("42"), text("1523447.0400000000"), text("t"), text("2024-03-01 09:30:00.5+00")}, false},
		{"nulls", []row.Value{text("2"), null, null, text("-0.5"), null, null}, false},
		{"unchanged TOAST left out", []row.Value{text("3"), toast, text("7"), toast, text("f"), text("2024-03-01 00:00:00+00")}, false},
		{"text that needs escapes, the long way", []row.Value{text("4"), text("R&D <EU> \"Ünï\"\n"), text("007"), text("NaN"), text("t"), text("infinity")}, false},
		{"a long value grows the room", []row.Value{text("5"), text(string(make([]byte, 5000))), text("1"), text("2"), text("t"), null}, false},
		{"bad value: the id is kept", []row.Value{text("6"), text("x"), text("not a number"), text("1"), text("t"), null}, true},
		{"no id", []row.Value{null, text("x"), text("1"), text("1"), text("t"), null}, true},
		{"wrong number of values", []row.Value{text("7")}, true},
	}
	var buf []byte // reused from row to row, as delivery does
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, wantErr := m.Identify(tt.values)
			vals := make([]json.RawMessage, len(m.Keys()))
			for i := range vals {
				vals[i] = json.RawMessage("stale") // from an earlier row: overwritten
			}
			id, out, err := m.Map(tt.values, buf[:0], vals)
			buf = out
			if tt.wantErr {
				require.Error(t, err)
				assert.Equal(t, wantErr.Error(), err.Error())
				var re, wantRe *RowError
				assert.Equal(t, errors.As(wantErr, &wantRe), errors.As(err, &re), "a *RowError where Identify gives one")
				assert.Equal(t, want.CompanyID, id)
				return
			}
			require.NoError(t, wantErr)
			require.NoError(t, err)
			assert.Equal(t, want.CompanyID, id)
			got := userpilot.Metadata{}
			for i, k := range m.Keys() {
				if vals[i] != nil {
					got[k] = vals[i]
				}
			}
			assert.Equal(t, want.Metadata, got)
		})
	}
}
