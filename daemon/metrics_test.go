package daemon

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/metrics"
	"github.com/pgpilot/pgpilot/row"
)

// gathered reads one sample of a metric (labels as name, value pairs).
func gathered(t *testing.T, m *metrics.Metrics, name string, labels ...string) float64 {
	t.Helper()
	families, err := m.Registry().Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	samples:
		for _, s := range f.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range s.GetLabel() {
					found = found || l.GetName() == labels[i] && l.GetValue() == labels[i+1]
				}
				if !found {
					continue samples
				}
			}
			if s.GetCounter() != nil {
				return s.GetCounter().GetValue()
			}
			return s.GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s%v absent", name, labels)
	return 0
}

// Each kind of Transaction reaches metrics as what it is: a chunk's rows
// are not changes, a marker holds none, and only a transaction to deliver
// counts in the lag.
func TestMetricsHearEachKindOfTransactionAsWhatItIs(t *testing.T) {
	m := metrics.New(metrics.Options{})
	rec := readRecorder{m}
	ch := func(op row.Op) row.Change { return row.Change{Op: op} }
	rec.Took(row.Transaction{Kind: row.Chunk, Changes: []row.Change{ch(row.Insert), ch(row.Insert), ch(row.Insert)}})
	rec.Took(row.Transaction{Kind: row.Piece, CommitLSN: 0x100, Changes: []row.Change{ch(row.Insert), ch(row.Update)}})
	rec.Took(row.Transaction{Kind: row.Commit, CommitLSN: 0x100, EndLSN: 0x110, Changes: []row.Change{ch(row.Update)}})
	rec.Took(row.Transaction{Kind: row.Commit, CommitLSN: 0x200, EndLSN: 0x210, Changes: []row.Change{ch(row.Delete), ch(row.Truncate)}})
	rec.Took(row.Transaction{Kind: row.Marker, EndLSN: 0x300})

	for op, want := range map[string]float64{"insert": 1, "update": 2, "delete": 1, "truncate": 1} {
		assert.Equal(t, want, gathered(t, m, "pgpilot_changes_read_total", "op", op), op)
	}
	assert.Equal(t, 3.0, gathered(t, m, "pgpilot_snapshot_rows_read_total"))

	m.Checkpointed(0x300)
	assert.Zero(t, gathered(t, m, "pgpilot_replication_lag_seconds"), "everything taken in is checkpointed")
	rec.Took(row.Transaction{Kind: row.Commit, CommitLSN: 0x400, EndLSN: 0x410, Changes: []row.Change{ch(row.Update)}})
	m.Checkpointed(0x300)
	rec.Took(row.Transaction{Kind: row.Chunk, Changes: []row.Change{ch(row.Insert)}})
	rec.Took(row.Transaction{Kind: row.Marker, EndLSN: 0x500})
	m.Checkpointed(0x410)
	assert.Zero(t, gathered(t, m, "pgpilot_replication_lag_seconds"), "a chunk or a marker is no transaction waiting to be checkpointed")
}
