package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/state"
)

func TestReplayOfSeveralCompaniesIsOneResyncSelectingThemAsText(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, requestCompanyResync(dir, "Id", []string{"7", `O'Brien\`}, false))
	jobs, err := state.QueuedResyncs(dir)
	require.NoError(t, err)
	require.Len(t, jobs, 1, "one request for all of them")
	assert.Equal(t, `"Id"::text IN (E'7', E'O''Brien\\')`, jobs[0].Where)
	assert.Empty(t, jobs[0].CompanyID)

	one := t.TempDir()
	require.NoError(t, requestCompanyResync(one, "id", []string{"7"}, false))
	jobs, err = state.QueuedResyncs(one)
	require.NoError(t, err)
	require.Len(t, jobs, 1)
	assert.Equal(t, "7", jobs[0].CompanyID, "one company: the same request as `resync --company`")
	assert.Empty(t, jobs[0].Where)
}

func TestOneLineKeepsValidUTF8(t *testing.T) {
	assert.Equal(t, "ab…", oneLine("ab\ncd", 10))
	assert.Equal(t, "é…", oneLine("éé", 3), "never half a rune")
	assert.Equal(t, "short", oneLine("short", 10))
}
