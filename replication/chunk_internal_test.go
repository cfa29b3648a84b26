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
