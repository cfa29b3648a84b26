package snapshot

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
)

// The recent transactions keep the newest changes within their bound and
// let the oldest go, through any sequence of transactions and bounds: the
// same as letting go by a scan from the oldest (a model of it here).
func TestRecentKeepsTheNewestChangesWithinItsBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var r recent
	var model []kept // what a scan from the oldest keeps
	modelChanges := 0
	for i := range 6_000 {
		if rng.IntN(500) == 0 {
			r.bound = []int{0, recentIdle, 50}[rng.IntN(3)]
		}
		bound := r.bound
		if bound == 0 {
			bound = recentChanges
		}
		n := []int{0, 1, 3, 100, 250, 3000}[rng.IntN(6)]
		txn := row.Transaction{Xid: uint32(i + 1), Changes: make([]row.Change, n)}
		r.add(txn)

		k := kept{xid: txn.Xid, changes: txn.Changes}
		if len(k.changes) > bound {
			k.changes, k.lost = nil, true
		}
		model = append(model, k)
		modelChanges += len(k.changes)
		if len(model) > recentTxns {
			modelChanges -= len(model[0].changes)
			model = model[1:]
		}
		for j := 0; modelChanges > bound; j++ {
			modelChanges -= len(model[j].changes)
			model[j].changes, model[j].lost = nil, true
		}

		require.Equal(t, modelChanges, r.changes, "after transaction %d", i)
		require.Len(t, r.txns, len(model))
		if i%7 != 0 {
			continue
		}
		for j := range model {
			if model[j].lost != r.txns[j].lost || len(model[j].changes) != len(r.txns[j].changes) {
				t.Fatalf("after transaction %d: kept %d is lost %v with %d changes, want lost %v with %d",
					i, j, r.txns[j].lost, len(r.txns[j].changes), model[j].lost, len(model[j].changes))
			}
		}
	}
}

// A snapshot a chunk is read in lets go of exactly the kept transactions
// it sees, lost or not; the others stay as they were, in order, and the
// count of changes held follows.
func TestRecentForgetsWhatASnapshotSees(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var r recent
	r.bound = 50
	for i := range 200 {
		r.add(row.Transaction{Xid: uint32(1000 + i), Changes: make([]row.Change, rng.IntN(4))})
	}
	before := slices.Clone(r.txns)
	require.True(t, before[0].lost, "the oldest were let go for the bound")
	snap := replication.Snapshot{Xmin: 1100, Xmax: 1150, Xip: []uint64{1120, 1121, 1149}}
	r.forget(snap)
	var want []kept
	changes := 0
	for _, k := range before {
		if !snap.Sees(k.xid) {
			want = append(want, k)
			changes += len(k.changes)
		}
	}
	require.Equal(t, len(want), len(r.txns))
	for i := range want {
		require.Equal(t, want[i].xid, r.txns[i].xid)
		require.Equal(t, want[i].lost, r.txns[i].lost)
		require.Len(t, r.txns[i].changes, len(want[i].changes))
	}
	require.Equal(t, changes, r.changes)
	require.Equal(t, 3+50, len(r.txns), "1120, 1121, 1149 and all from 1150 on")
	// Adding goes on within the bound.
	for i := range 100 {
		r.add(row.Transaction{Xid: uint32(1200 + i), Changes: make([]row.Change, 2)})
		require.LessOrEqual(t, r.changes, 50)
	}
}
