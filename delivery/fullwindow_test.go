package delivery

import (
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/row"
)

// With memory full, a job is sized for a backlog without end: full while
// bulk is the faster path (or nothing is measured), bulk's share while the
// real-time path is faster, and none when that share is below MinBulk.
func TestAFullWindowSizesTheJobFromTheMeasuredRates(t *testing.T) {
	tests := []struct {
		name         string
		window       int
		realtime     float64
		bulk         bulkEstimate
		wantInTheJob int
	}{
		{"bulk faster: the job takes all it can", 500, 10, bulkEstimate{rate: 1000, overhead: time.Second, jobs: 3}, 500},
		{"nothing measured yet: as before, a full job", 500, 400, bulkEstimate{rate: 20, overhead: 10 * time.Second}, 500},
		{"real time faster: bulk's share", 5000, 400, bulkEstimate{rate: 50, overhead: time.Second, jobs: 3}, 5000 * 50 / 450},
		{"real time faster, share below MinBulk: no job", 500, 400, bulkEstimate{rate: 50, overhead: time.Second, jobs: 3}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := New(Options{MaxPending: tt.window, RealtimeRate: tt.realtime, MinBulk: 100,
				Mapping: func(*row.Relation) (Mapper, error) { return sevenKeys{}, nil }})
			addCompanies(t, p, tt.window)
			require.True(t, p.full())
			p.est = tt.bulk
			batch, _, err := p.takeBulk(time.Now())
			require.NoError(t, err)
			assert.Len(t, batch, tt.wantInTheJob)
		})
	}
}

// companiesRel is a companies table of the seven mapped types.
var companiesRel = &row.Relation{Table: row.Table{Schema: "public", Name: "companies"}, Columns: []row.Column{
	{Name: "id", TypeOID: pgtype.Int8OID}, {Name: "name", TypeOID: pgtype.TextOID}, {Name: "plan", TypeOID: pgtype.TextOID},
	{Name: "seats", TypeOID: pgtype.Int4OID}, {Name: "monthly_spend", TypeOID: pgtype.NumericOID}, {Name: "trial", TypeOID: pgtype.BoolOID},
	{Name: "created_at", TypeOID: pgtype.TimestamptzOID}, {Name: "notes", TypeOID: pgtype.TextOID},
}}

// addCompanies adds companies 1..n to p, one transaction each.
func addCompanies(t *testing.T, p *Pipeline, n int) {
	t.Helper()
	for i := range n {
		id := strconv.Itoa(1 + i)
		vals := []row.Value{{Text: []byte(id)}, {Text: []byte("c")}, {Text: []byte("pro")}, {Text: []byte("1")},
			{Text: []byte("1.5")}, {Text: []byte("t")}, {Text: []byte("2024-01-01 00:00:00+00")}, {Null: true}}
		require.NoError(t, p.add(row.Transaction{Kind: row.Commit, CommitLSN: pglogrepl.LSN(10 * i), EndLSN: pglogrepl.LSN(10*i + 5),
			Changes: []row.Change{{Op: row.Insert, Relation: companiesRel, Values: vals}}}))
	}
}
