package delivery

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/userpilot"
)

// A row mapped costs two allocations: its id and its packed fields. Every
// other byte is room kept from row to row; an allocation more per row (a
// third of a change's mapping allocations were the target of errors.As,
// on the heap whether or not the row had an error) is that much more for
// the collector in a catch-up.
func TestMappingARowAllocatesOnlyItsIDAndFields(t *testing.T) {
	x := &encoder{compile: func(*row.Relation) (Mapper, error) { return keyMapper{keys: []string{"name", "plan"}}, nil }}
	rel := &row.Relation{Table: row.Table{Schema: "public", Name: "companies"}}
	values := []row.Value{{Text: []byte("42")}, {Text: []byte("Acme")}, {Null: true}}
	_, id, key, md, mapErr, err := x.mapRow(rel, values) // compiles, and sizes the room
	require.NoError(t, err)
	require.NoError(t, mapErr)
	assert.Equal(t, "42", id)
	assert.Equal(t, "42", key)
	assert.Equal(t, userpilot.Metadata{"name": json.RawMessage(`"Acme"`), "plan": userpilot.Null}, x.keys.unpack(md))
	allocs := testing.AllocsPerRun(100, func() {
		_, _, _, _, _, _ = x.mapRow(rel, values)
	})
	assert.LessOrEqual(t, allocs, 2.0, "a row mapped allocates more than its id and its packed fields")
}
