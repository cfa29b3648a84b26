package state_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/state"
)

func TestResolutionsResolveOnlyTheDeadLettersBeforeThem(t *testing.T) {
	path := t.TempDir()
	d, err := state.Open(path)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	for _, id := range []string{"1", "2", "1", ""} {
		require.NoError(t, d.AppendDeadLetter(state.DeadLetter{CompanyID: id, Status: 400, Reason: "rejected by Userpilot"}))
	}
	n, err := state.CountDeadLetters(path)
	require.NoError(t, err)
	assert.Equal(t, 4, n)

	require.NoError(t, state.AppendResolutions(path, []state.Resolution{{Op: state.Replayed, CompanyID: "1"}, {Op: state.Dropped, CompanyID: ""}}))
	// Set aside again after the replay: outstanding again.
	require.NoError(t, d.AppendDeadLetter(state.DeadLetter{CompanyID: "1", Status: 422, Reason: "rejected by Userpilot"}))

	dls, err := state.ReadDeadLetters(path)
	require.NoError(t, err)
	var got []string
	for _, dl := range dls.Outstanding {
		got = append(got, dl.CompanyID+"/"+string(rune('0'+dl.Status/100)))
	}
	assert.Equal(t, []string{"2/4", "1/4"}, got)
	assert.Equal(t, 422, dls.Outstanding[1].Status, "the dead letter after the replay")
	assert.Equal(t, 3, dls.Resolved)
	n, err = state.CountDeadLetters(path)
	require.NoError(t, err)
	assert.Equal(t, 2, n, "status counts only outstanding dead letters")

	assert.Error(t, state.AppendResolutions(path, []state.Resolution{{Op: "forgotten", CompanyID: "2"}}))
}

func TestResolutionAfterATornLineIsNotSwallowed(t *testing.T) {
	path := t.TempDir()
	file := filepath.Join(path, state.DeadLetterFile)
	require.NoError(t, os.WriteFile(file, []byte(`{"company_id":"1","status":400,"reason":"r"}`+"\n"+`{"company_id":"2","sta`), 0o600))
	require.NoError(t, state.AppendResolutions(path, []state.Resolution{{Op: state.Dropped, CompanyID: "1"}}))
	dls, err := state.ReadDeadLetters(path)
	require.NoError(t, err)
	assert.Empty(t, dls.Outstanding)
	assert.Equal(t, 1, dls.Unreadable, "the torn line is skipped, not the resolution after it")
}
