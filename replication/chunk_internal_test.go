package replication

import (
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/assert"
)

func TestRecordBoundaryMatchesTheWalsendersForm(t *testing.T) {
	const block, segment = 8192, 16 << 20
	tests := []struct{ in, want pglogrepl.LSN }{
		{0x1000018 + 0x2000, 0x1000000 + 0x2000}, // just past a page header
		{0x1000028, 0x1000000},                   // just past a segment's long header
		{0x1002030, 0x1002030},                   // mid-page: as is
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, recordBoundary(tt.in, block, segment), tt.in.String())
	}
}

func TestCheckConditionRefusesWhatWouldReshapeTheChunkQuery(t *testing.T) {
	tests := []struct {
		where string
		ok    bool
	}{
		{"plan = 'pro'", true},
		{"plan = 'a -- b; c /* d ) ('", true},
		{`"odd -- name;" = 1`, true},
		{"notes = $$it's -- fine; )$$ OR notes = $x$;$x$", true},
		{`name = E'it\'s -- fine'`, true},
		{"(id > 0 AND (plan = 'pro'))", true},
		{"id = $1", true}, // Postgres refuses it itself
		{"id > 0 -- every row", false},
		{"id > 0 /* every row */", false},
		{"id > 0; DELETE FROM companies", false},
		{"id > 0) OR (true", false},
		{"(id > 0", false},
		{"plan = 'pro", false},
		{"notes = $$open", false},
	}
	for _, tt := range tests {
		err := CheckCondition(tt.where)
		if tt.ok {
			assert.NoError(t, err, tt.where)
		} else {
			assert.ErrorIs(t, err, ErrCondition, tt.where)
		}
	}
}
