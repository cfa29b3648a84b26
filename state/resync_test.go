package state

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestResyncRequestsQueueInOrderAndNoneIsLost: a request never replaces
// one not taken yet, requests are taken oldest first, and taking one
// removes only that one, even when another was written between reading
// the queue and removing the request.
func TestResyncRequestsQueueInOrderAndNoneIsLost(t *testing.T) {
	d, err := Open(t.TempDir())
	require.NoError(t, err)
	defer d.Close()

	first, err := RequestResync(d.Path(), Snapshot{CompanyID: "7"})
	require.NoError(t, err)
	second, err := RequestResync(d.Path(), Snapshot{Where: "id < 10"})
	require.NoError(t, err)
	assert.NotEqual(t, first.ID, second.ID)

	job, ok, err := d.PendingResync()
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, first.ID, job.ID, "oldest first")
	assert.Equal(t, "7", job.CompanyID)
	// Written after the daemon read the queue, before it removed what it took.
	third, err := RequestResync(d.Path(), Snapshot{CompanyID: "9"})
	require.NoError(t, err)
	require.NoError(t, d.TakeResync(job.ID))

	queue, err := QueuedResyncs(d.Path())
	require.NoError(t, err)
	var ids []string
	for _, j := range queue {
		ids = append(ids, j.ID)
	}
	assert.Equal(t, []string{second.ID, third.ID}, ids, "the rest wait, in order")
	assert.Equal(t, "id < 10", queue[0].Where)
}

func TestLegacyResyncRequestIsTakenFirst(t *testing.T) {
	d, err := Open(t.TempDir())
	require.NoError(t, err)
	defer d.Close()
	_, err = RequestResync(d.Path(), Snapshot{CompanyID: "1"})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(d.Path(), LegacyResyncFile), []byte(`{"company_id": "0"}`), 0o600))
	job, ok, err := d.PendingResync()
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, LegacyResyncID, job.ID)
	assert.Equal(t, "0", job.CompanyID)
	require.NoError(t, d.TakeResync(job.ID))
	assert.NoFileExists(t, filepath.Join(d.Path(), LegacyResyncFile))
	job, _, _ = d.PendingResync()
	assert.Equal(t, "1", job.CompanyID)
}

func TestUnreadableResyncRequestHoldsNoOtherBack(t *testing.T) {
	d, err := Open(t.TempDir())
	require.NoError(t, err)
	defer d.Close()
	require.NoError(t, os.MkdirAll(filepath.Join(d.Path(), ResyncDir), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(d.Path(), ResyncDir, "resync-0-bad.json"), []byte(`{`), 0o600))
	good, err := RequestResync(d.Path(), Snapshot{CompanyID: "1"})
	require.NoError(t, err)
	job, ok, err := d.PendingResync()
	assert.ErrorContains(t, err, "resync-0-bad.json")
	require.True(t, ok)
	assert.Equal(t, good.ID, job.ID)
}
