package main

import (
	"bytes"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// TestUsageNamesTheReadEndpoint: -h says how to read what the stand-in
// holds, and that a cleared value shows as null.
func TestUsageNamesTheReadEndpoint(t *testing.T) {
	var out bytes.Buffer
	flag.CommandLine.SetOutput(&out)
	t.Cleanup(func() { flag.CommandLine.SetOutput(nil) })
	usage()
	assert.Contains(t, out.String(), "GET    /_standin/companies")
	assert.Contains(t, out.String(), "cleared with null shows as null")
}

// TestUsageNamesTheUsersEndpoints: -h lists users' endpoints, the shared
// limits, and how to read the users it holds.
func TestUsageNamesTheUsersEndpoints(t *testing.T) {
	var out bytes.Buffer
	flag.CommandLine.SetOutput(&out)
	t.Cleanup(func() { flag.CommandLine.SetOutput(nil) })
	usage()
	for _, want := range []string{"POST   /v1/identify", "POST   /v1/users/bulk_identify", "DELETE /v1/users", "GET    /_standin/users", "one company at a time"} {
		assert.Contains(t, out.String(), want)
	}
}

// TestReadEndpointsShowUsersWithTheirCompany: GET /_standin/users is
// every user, its company (null for none) and metadata.
func TestReadEndpointsShowUsersWithTheirCompany(t *testing.T) {
	standin := userpilottest.NewHandler(userpilottest.Options{APIKey: "k"})
	srv := httptest.NewServer(routes(standin))
	t.Cleanup(srv.Close)
	for _, body := range []string{`{"user_id":"u1","metadata":{"name":"Ana"},"company":{"id":"7"}}`, `{"user_id":"u2","metadata":{}}`} {
		req, err := http.NewRequest(http.MethodPost, srv.URL+"/v1/identify", strings.NewReader(body))
		require.NoError(t, err)
		req.Header = http.Header{"Authorization": {"Token k"}, "Content-Type": {"application/json"}, "Accept": {"application/json"}, "X-Api-Version": {userpilottest.APIVersion}}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, 202, resp.StatusCode)
	}
	resp, err := http.Get(srv.URL + "/_standin/users")
	require.NoError(t, err)
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.JSONEq(t, `{"u1": {"company": "7", "metadata": {"name": "Ana"}}, "u2": {"company": null, "metadata": {}}}`, string(got))

	resp, err = http.Get(srv.URL + "/_standin/companies")
	require.NoError(t, err)
	defer resp.Body.Close()
	got, err = io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.JSONEq(t, `{"7": {}}`, string(got), "the company a user named, with its id alone")
}
