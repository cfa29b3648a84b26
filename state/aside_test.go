package state

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/userpilot"
)

func TestSetAsideMovesCheckpointAndStoreAndKeepsDeadLetters(t *testing.T) {
	d, err := Open(t.TempDir())
	require.NoError(t, err)
	defer d.Close()
	require.NoError(t, d.SaveCheckpoint(Checkpoint{LSN: 1, InitialSync: InitialSyncDone}))
	store, err := d.OpenStore()
	require.NoError(t, err)
	require.NoError(t, store.Record([]userpilot.Company{{CompanyID: "1", Metadata: userpilot.Metadata{"plan": json.RawMessage(`"pro"`)}}}))
	require.NoError(t, store.WriteOutbox([]OutboxRecord{
		{CompanyID: "2", Metadata: userpilot.Metadata{"plan": json.RawMessage(`"owed"`)}, LSN: 9},
		{CompanyID: "3", Delete: true, LSN: 10},
	}, nil))
	require.NoError(t, store.Close())
	require.NoError(t, d.AppendDeadLetter(DeadLetter{CompanyID: "4", Status: 400}))
	require.NoError(t, d.WriteStatus(Status{Mode: ModeOutbox, OutboxCompanies: 2}))

	sum, err := SummarizeOutbox(d.Path())
	require.NoError(t, err)
	assert.Equal(t, OutboxSummary{Companies: 2, Deletes: 1, IDs: []string{"2", "3"}}, sum)
	require.NoError(t, ExportOutbox(d.Path(), "outbox.x.jsonl"))
	raw, err := os.ReadFile(filepath.Join(d.Path(), "outbox.x.jsonl"))
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	require.Len(t, lines, 2)
	assert.Contains(t, lines[0], `"company_id":"2"`)
	assert.Contains(t, lines[0], `"m":{"plan":"owed"}`)
	assert.Contains(t, lines[1], `"delete":true`)

	moved, err := d.SetAside("T")
	require.NoError(t, err)
	assert.Equal(t, []string{CheckpointFile, StoreFile}, moved)
	for _, name := range []string{CheckpointFile, StoreFile, StatusFile} {
		assert.NoFileExists(t, filepath.Join(d.Path(), name))
	}
	assert.FileExists(t, filepath.Join(d.Path(), StoreFile+".torn-down-T"))
	assert.FileExists(t, filepath.Join(d.Path(), CheckpointFile+".torn-down-T"))
	n, err := CountDeadLetters(d.Path())
	require.NoError(t, err)
	assert.Equal(t, 1, n, "dead letters stay")

	store, err = d.OpenStore()
	require.NoError(t, err)
	defer store.Close()
	unchanged, err := store.Unchanged("1", userpilot.Metadata{"plan": json.RawMessage(`"pro"`)})
	require.NoError(t, err)
	assert.False(t, unchanged, "a fresh store knows nothing: the next run sends every row")
	owed, err := store.Outbox()
	require.NoError(t, err)
	assert.Empty(t, owed, "and owes nothing stale")
	sum, err = SummarizeOutbox(t.TempDir())
	require.NoError(t, err)
	assert.Zero(t, sum.Companies, "no store owes nothing")
}
