package main

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/state"
)

func TestReplayOfSeveralCompaniesIsOneResyncSelectingThemAsText(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, requestCompanyResync(dir, "Id", []string{"7", `O'Brien\`}))
	d, err := state.Open(dir)
	require.NoError(t, err)
	defer d.Close()
	job, ok, err := d.PendingResync()
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, `"Id"::text IN (E'7', E'O''Brien\\')`, job.Where)
	assert.Empty(t, job.CompanyID)

	one := filepath.Join(t.TempDir())
	require.NoError(t, requestCompanyResync(one, "id", []string{"7"}))
	d1, err := state.Open(one)
	require.NoError(t, err)
	defer d1.Close()
	job, _, err = d1.PendingResync()
	require.NoError(t, err)
	assert.Equal(t, state.Snapshot{CompanyID: "7"}, job, "one company: the same request as `resync --company`")
}

func TestOneLineKeepsValidUTF8(t *testing.T) {
	assert.Equal(t, "ab…", oneLine("ab\ncd", 10))
	assert.Equal(t, "é…", oneLine("éé", 3), "never half a rune")
	assert.Equal(t, "short", oneLine("short", 10))
}
