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

func TestSetAsideMovesCheckpointAndStoreKeepsDeadLettersAndJobsNotSeenEnd(t *testing.T) {
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
	job, err := store.BeginJob([]userpilot.Company{{CompanyID: "5", Metadata: userpilot.Metadata{"plan": json.RawMessage(`"in-a-job"`)}}})
	require.NoError(t, err)
	require.NoError(t, store.JobSubmitted(job, "job:1"))
	require.NoError(t, store.MarkSending([]string{"6"}))
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

	moved, jobs, err := d.SetAside("T")
	require.NoError(t, err)
	assert.Equal(t, []string{CheckpointFile, StoreFile}, moved)
	assert.Equal(t, 1, jobs, "the bulk job not seen end carries over")
	for _, name := range []string{CheckpointFile, StatusFile} {
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
	sending, err := store.Sending()
	require.NoError(t, err)
	assert.Empty(t, sending, "nothing is in doubt: every row is sent again anyway")
	kept, err := store.Jobs()
	require.NoError(t, err)
	require.Len(t, kept, 1, "the next run holds the job's companies until it ends")
	assert.Equal(t, job, kept[0].Key)
	assert.Equal(t, "job:1", kept[0].ID)
	next, err := store.BeginJob(nil)
	require.NoError(t, err)
	assert.Greater(t, next, job, "new jobs are numbered after the kept one")
	kept, err = store.Jobs()
	require.NoError(t, err)
	require.Len(t, kept, 2)
	assert.Equal(t, []userpilot.Company{{CompanyID: "5", Metadata: userpilot.Metadata{"plan": json.RawMessage(`"in-a-job"`)}}}, kept[0].Companies,
		"the kept job's body is read still, and the next job's went elsewhere")
	sum, err = SummarizeOutbox(t.TempDir())
	require.NoError(t, err)
	assert.Zero(t, sum.Companies, "no store owes nothing")
}
