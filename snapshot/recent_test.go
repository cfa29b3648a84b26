package snapshot

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

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
