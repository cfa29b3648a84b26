package state

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// limitFileSize makes writes past n bytes of a file fail (EFBIG) as a full
// volume would (ENOSPC): the write takes what fits and fails. Go ignores
// SIGXFSZ, so the write returns the error. Not parallel: the limit is the
// process's.
func limitFileSize(t *testing.T, n uint64) (restore func()) {
	t.Helper()
	var old syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old))
	require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: n, Max: old.Max}))
	restored := false
	restore = func() {
		if !restored {
			restored = true
			require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old))
		}
	}
	t.Cleanup(restore)
	return restore
}

// TestDeadLetterCutOffByAFullVolumeLeavesNoFragment: a dead letter whose
// write runs out of room fails and leaves the file as it was, so the next
// one (once there is room) is a whole line of its own and every record is
// read back; a fragment that could not be cut off (or a crash left) is one
// line skipped, never glued to the record after it.
func TestDeadLetterCutOffByAFullVolumeLeavesNoFragment(t *testing.T) {
	d, err := Open(t.TempDir())
	require.NoError(t, err)
	defer d.Close()
	path := filepath.Join(d.Path(), DeadLetterFile)
	require.NoError(t, d.AppendDeadLetter(DeadLetter{CompanyID: "before", Status: 400, Reason: "rejected"}))
	before, err := os.ReadFile(path)
	require.NoError(t, err)

	restore := limitFileSize(t, uint64(len(before))+20)
	err = d.AppendDeadLetter(DeadLetter{CompanyID: "while-full", Status: 0, Reason: "not mapped"})
	require.ErrorIs(t, err, syscall.EFBIG, "the failed write is the caller's error: it keeps the checkpoint before the record")
	after, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, string(before), string(after), "no part of the record stays in the file")
	restore()

	require.NoError(t, d.AppendDeadLetter(DeadLetter{CompanyID: "while-full", Status: 0, Reason: "not mapped"}))
	dls, err := ReadDeadLetters(d.Path())
	require.NoError(t, err)
	assert.Zero(t, dls.Unreadable)
	require.Len(t, dls.Outstanding, 2)
	assert.Equal(t, "while-full", dls.Outstanding[1].CompanyID, "written whole once there is room")

	// A fragment left behind (a crash mid-write).
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = f.WriteString(`{"time":"2025-01-01T00:00:00Z","lsn":"0/1","comp`)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	require.NoError(t, d.AppendDeadLetter(DeadLetter{CompanyID: "after-fragment", Status: 400}))
	require.NoError(t, AppendResolutions(d.Path(), []Resolution{{Op: Dropped, CompanyID: "before"}}))
	dls, err = ReadDeadLetters(d.Path())
	require.NoError(t, err)
	assert.Equal(t, 1, dls.Unreadable, "the fragment is one line, skipped")
	assert.Equal(t, 1, dls.Resolved)
	var ids []string
	for _, dl := range dls.Outstanding {
		ids = append(ids, dl.CompanyID)
	}
	assert.Equal(t, []string{"while-full", "after-fragment"}, ids, "the record after the fragment is read")
}

// TestResolutionCutOffByAFullVolumeLeavesNoFragment: `pgpilot deadletters
// drop` appends as the daemon does: all or nothing.
func TestResolutionCutOffByAFullVolumeLeavesNoFragment(t *testing.T) {
	d, err := Open(t.TempDir())
	require.NoError(t, err)
	defer d.Close()
	path := filepath.Join(d.Path(), DeadLetterFile)
	require.NoError(t, d.AppendDeadLetter(DeadLetter{CompanyID: "a", Status: 400}))
	before, err := os.ReadFile(path)
	require.NoError(t, err)
	restore := limitFileSize(t, uint64(len(before))+10)
	require.Error(t, AppendResolutions(d.Path(), []Resolution{{Op: Dropped, CompanyID: "a"}}))
	restore()
	after, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, string(before), string(after))
	require.NoError(t, d.AppendDeadLetter(DeadLetter{CompanyID: "b", Status: 400}))
	dls, err := ReadDeadLetters(d.Path())
	require.NoError(t, err)
	assert.Zero(t, dls.Unreadable)
	assert.Len(t, dls.Outstanding, 2)
}
