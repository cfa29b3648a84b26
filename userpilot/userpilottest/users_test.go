package userpilottest_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

func identifyUser(t *testing.T, s *userpilottest.Server, body string) answer {
	t.Helper()
	return send(t, http.MethodPost, s.URL()+"/v1/identify", validHeaders(), body)
}

func submitUsers(t *testing.T, s *userpilottest.Server, body string) (answer, string) {
	t.Helper()
	got := send(t, http.MethodPost, s.URL()+"/v1/users/bulk_identify", validHeaders(), body)
	var job struct {
		JobID string `json:"job_id"`
	}
	if got.status == 202 {
		require.NoError(t, json.Unmarshal([]byte(got.body), &job))
	}
	return got, job.JobID
}

// TestIdentifyUserTakesTheCompanyAsEitherPublishedKey: company.id (the
// guide's, the SDK's) and company.company_id (the OpenAPI document's) both
// name the user's company; keys beside the id are the company's
// properties; a company Userpilot did not have is created with its id.
func TestIdentifyUserTakesTheCompanyAsEitherPublishedKey(t *testing.T) {
	t.Parallel()
	s := newStandin(t, userpilottest.Options{})
	got := identifyUser(t, s, `{"user_id": "u1", "metadata": {"name": "Ana Lima", "email": "ana@example.org", "created_at": "2024-03-01T09:30:00Z", "seats": 3}, "company": {"id": "acct_8841"}}`)
	require.Equal(t, 202, got.status, got.body)
	assert.JSONEq(t, `{}`, got.body)
	got = identifyUser(t, s, `{"user_id": "u2", "company": {"company_id": "acct_9", "plan": "pro"}}`)
	require.Equal(t, 202, got.status, got.body)
	got = identifyUser(t, s, `{"user_id": "u3"}`)
	require.Equal(t, 202, got.status, got.body)

	assert.Equal(t, map[string]userpilottest.User{
		"u1": {Company: "acct_8841", Metadata: map[string]any{"name": "Ana Lima", "email": "ana@example.org", "created_at": "2024-03-01T09:30:00Z", "seats": json.Number("3")}},
		"u2": {Company: "acct_9", Metadata: map[string]any{}},
		"u3": {Metadata: map[string]any{}},
	}, s.Users())
	assert.Equal(t, map[string]map[string]any{"acct_8841": {}, "acct_9": {"plan": "pro"}}, s.Companies(),
		"a company named by a user exists with its id (and the properties sent beside it) until its own identify")
	assert.Equal(t, 3, s.IdentifyUserRequests())
	assert.Equal(t, 0, s.IdentifyRequests(), "companies' count is companies'")
	assert.Equal(t, 3, s.AcceptedUsers())
	assert.Equal(t, 0, s.Accepted())
	require.Len(t, s.AppliedUsers(), 3)
	assert.Equal(t, userpilottest.AppliedUser{Kind: "identify", UserID: "u2", Company: "acct_9"}, s.AppliedUsers()[1])
	assert.Equal(t, []string{"u1"}, s.Requests()[0].UserIDs)
}

// TestIdentifyUserRefusesWhatIsNotPublished: the stand-in takes users
// strictly: each body below is refused with 400 and the documented error
// shape, and nothing is applied.
func TestIdentifyUserRefusesWhatIsNotPublished(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, body, says string }{
		{"company null", `{"user_id": "u", "company": null}`, "leave company out"},
		{"company a string", `{"user_id": "u", "company": "acct"}`, "company must be an object"},
		{"company without an id", `{"user_id": "u", "company": {"name": "Globex"}}`, "company has no id"},
		{"company with both ids", `{"user_id": "u", "company": {"id": "a", "company_id": "a"}}`, "both id and company_id"},
		{"company id a number", `{"user_id": "u", "company": {"id": 42}}`, "non-empty JSON string"},
		{"company id empty", `{"user_id": "u", "company": {"id": ""}}`, "non-empty JSON string"},
		{"company property not primitive", `{"user_id": "u", "company": {"id": "a", "tags": ["x"]}}`, `company property "tags"`},
		{"flat company_id in real time", `{"user_id": "u", "company_id": "a"}`, `unknown field "company_id"`},
		{"no user_id", `{"metadata": {}}`, "user_id is required"},
		{"empty user_id", `{"user_id": ""}`, "user_id must be a non-empty JSON string"},
		{"numeric user_id", `{"user_id": 7}`, "user_id must be a non-empty JSON string"},
		{"metadata not an object", `{"user_id": "u", "metadata": []}`, "metadata must be a JSON object"},
		{"metadata not primitive", `{"user_id": "u", "metadata": {"a": {"b": 1}}}`, `metadata "a" must be a string`},
		{"name not a string", `{"user_id": "u", "metadata": {"name": 3}}`, `metadata "name" is a reserved user property`},
		{"email not a string", `{"user_id": "u", "metadata": {"email": true}}`, `metadata "email" is a reserved user property`},
		{"created_at not a date", `{"user_id": "u", "metadata": {"created_at": "yesterday"}}`, `metadata "created_at" is a reserved user property: an ISO 8601 date`},
		{"created_at a number", `{"user_id": "u", "metadata": {"created_at": 1709285400}}`, `an ISO 8601 date`},
		{"signed_up_at not a date", `{"user_id": "u", "metadata": {"signed_up_at": "1/3/2024"}}`, `an ISO 8601 date`},
		{"both created_at and signed_up_at", `{"user_id": "u", "metadata": {"created_at": "2024-03-01", "signed_up_at": "2024-03-01"}}`, "an alias of created_at"},
		{"first_seen_at", `{"user_id": "u", "metadata": {"first_seen_at": "2024-03-01"}}`, "is Userpilot's own"},
		{"last_seen_at", `{"user_id": "u", "metadata": {"last_seen_at": null}}`, "is Userpilot's own"},
	}
	s := newStandin(t, userpilottest.Options{})
	for _, tt := range tests {
		got := identifyUser(t, s, tt.body)
		assert.Equal(t, 400, got.status, "%s: %s", tt.name, got.body)
		assert.Contains(t, got.body, `"errors"`, tt.name)
		assert.Contains(t, message(t, got), tt.says, tt.name)
	}
	// What the reserved keys do take.
	require.Equal(t, 202, identifyUser(t, s, `{"user_id": "ok", "metadata": {"name": null, "email": "a@b.c", "created_at": "2024-03-01", "role": "admin"}}`).status)
	require.Equal(t, 202, identifyUser(t, s, `{"user_id": "ok2", "metadata": {"signed_up_at": "2024-03-01T09:30:00.5+01:00"}}`).status)
	assert.Len(t, s.Users(), 2)
	assert.Empty(t, s.Companies())

	h := validHeaders()
	h.Del("X-Api-Version")
	assert.Equal(t, 400, send(t, http.MethodPost, s.URL()+"/v1/identify", h, `{"user_id": "u"}`).status, "the identify-user page requires X-API-Version")
	h = validHeaders()
	h.Set("Authorization", "Token wrong")
	assert.Equal(t, 401, send(t, http.MethodPost, s.URL()+"/v1/identify", h, `{"user_id": "u"}`).status)
	assert.Equal(t, 405, send(t, http.MethodGet, s.URL()+"/v1/identify", validHeaders(), ``).status)
}

// TestAUserMovesToTheCompanyItIsIdentifiedWith: one company at a time; a
// user identified without one keeps the one it has; metadata merges and
// null clears.
func TestAUserMovesToTheCompanyItIsIdentifiedWith(t *testing.T) {
	t.Parallel()
	s := newStandin(t, userpilottest.Options{})
	for _, body := range []string{
		`{"user_id": "u", "metadata": {"role": "agent", "team": "a"}, "company": {"id": "1"}}`,
		`{"user_id": "u", "metadata": {"role": "admin"}, "company": {"id": "2"}}`,
		`{"user_id": "u", "metadata": {"team": null}}`,
	} {
		require.Equal(t, 202, identifyUser(t, s, body).status)
	}
	u, ok := s.User("u")
	require.True(t, ok)
	assert.Equal(t, userpilottest.User{Company: "2", Metadata: map[string]any{"role": "admin", "team": nil}}, u)
	_, ok = s.User("nobody")
	assert.False(t, ok)
}

func userBulkBody(records ...string) string { return `{"users": [` + strings.Join(records, ",") + `]}` }

// TestBulkUsersTakeAFlatCompanyID: a bulk job of users names each user's
// company as a flat company_id (left out: no company); records apply when
// the job completes; anything else is refused.
func TestBulkUsersTakeAFlatCompanyID(t *testing.T) {
	t.Parallel()
	s := newStandin(t, userpilottest.Options{})
	got, id := submitUsers(t, s, userBulkBody(
		`{"user_id": "u1", "company_id": "1", "metadata": {"name": "Ana"}}`,
		`{"user_id": "u2"}`,
		`{"user_id": "u3", "company_id": "2"}`))
	require.Equal(t, 202, got.status, got.body)
	assert.Empty(t, s.Users(), "accepted is not applied")
	_, st := poll(t, s, id)
	require.Equal(t, "completed", st.Status)
	assert.Equal(t, 3, st.TotalRows)
	assert.Equal(t, map[string]userpilottest.User{
		"u1": {Company: "1", Metadata: map[string]any{"name": "Ana"}},
		"u2": {Metadata: map[string]any{}},
		"u3": {Company: "2", Metadata: map[string]any{}},
	}, s.Users())
	assert.Equal(t, "bulk identify", s.AppliedUsers()[0].Kind)
	assert.Equal(t, 0, s.IdentifyUserRequests(), "bulk is not real-time identify")

	refused := []struct{ name, body, says string }{
		{"company_id null", userBulkBody(`{"user_id": "u", "company_id": null}`), "company_id is null"},
		{"company as an object", userBulkBody(`{"user_id": "u", "company": {"id": "1"}}`), `unknown field "company"`},
		{"company_id an object", userBulkBody(`{"user_id": "u", "company_id": {"id": "1"}}`), "flat, not an object"},
		{"company_id empty", userBulkBody(`{"user_id": "u", "company_id": ""}`), "non-empty JSON string"},
		{"no user_id", userBulkBody(`{"company_id": "1"}`), "user_id is required"},
		{"reserved key", userBulkBody(`{"user_id": "u", "metadata": {"created_at": 5}}`), "an ISO 8601 date"},
		{"companies at the users endpoint", `{"companies": [{"company_id": "1"}]}`, `unknown field "companies"`},
		{"empty", userBulkBody(), "users must not be empty"},
	}
	for _, tt := range refused {
		got, _ := submitUsers(t, s, tt.body)
		assert.Equal(t, 400, got.status, "%s: %s", tt.name, got.body)
		assert.Contains(t, message(t, got), tt.says, tt.name)
	}
	records := make([]string, 10_001)
	for i := range records {
		records[i] = fmt.Sprintf(`{"user_id": "%d"}`, i)
	}
	got, _ = submitUsers(t, s, userBulkBody(records...))
	assert.Equal(t, 413, got.status)
	assert.Len(t, s.Users(), 3)
}

// TestOneBulkJobAtATimeAcrossUsersAndCompanies: a job of either kind
// running makes a submission of the other 409.
func TestOneBulkJobAtATimeAcrossUsersAndCompanies(t *testing.T) {
	t.Parallel()
	s := newStandin(t, userpilottest.Options{})
	got, companies := submit(t, s, bulkBody("a"))
	require.Equal(t, 202, got.status)
	got, _ = submitUsers(t, s, userBulkBody(`{"user_id": "u"}`))
	assert.Equal(t, 409, got.status, "a companies job runs")

	_, st := poll(t, s, companies)
	require.Equal(t, "completed", st.Status)
	got, users := submitUsers(t, s, userBulkBody(`{"user_id": "u"}`))
	require.Equal(t, 202, got.status)
	got, _ = submit(t, s, bulkBody("b"))
	assert.Equal(t, 409, got.status, "a users job runs")
	_, st = poll(t, s, users)
	require.Equal(t, "completed", st.Status)
	got, _ = submit(t, s, bulkBody("b"))
	assert.Equal(t, 202, got.status)
}

// TestRealTimeBudgetIsSharedByUsersAndCompanies: one budget per API key.
func TestRealTimeBudgetIsSharedByUsersAndCompanies(t *testing.T) {
	t.Parallel()
	// 0.5/s: the second request in a row is always over budget.
	s := newStandin(t, userpilottest.Options{RateLimit: 0.5})
	require.Equal(t, 202, identify(t, s, `{"company_id": "1"}`).status)
	assert.Equal(t, 429, identifyUser(t, s, `{"user_id": "u"}`).status)

	s = newStandin(t, userpilottest.Options{RateLimit: 0.5})
	require.Equal(t, 202, identifyUser(t, s, `{"user_id": "u"}`).status)
	assert.Equal(t, 429, identify(t, s, `{"company_id": "1"}`).status)
}

// TestDeleteUsersSharesTheTwoSecondSpacing: DELETE /v1/users schedules
// users, and one delete request every 2 s counts both kinds.
func TestDeleteUsersSharesTheTwoSecondSpacing(t *testing.T) {
	t.Parallel()
	h := http.Header{"Authorization": {"Token " + key}, "Content-Type": {"application/json"}, "X-Api-Version": {"2020-09-22"}}
	s := newStandin(t, userpilottest.Options{})
	got := send(t, http.MethodDelete, s.URL()+"/v1/users", h, `{"users": ["u1", "u2"]}`)
	require.Equal(t, 202, got.status, got.body)
	assert.JSONEq(t, `{"message": "2 users scheduled for deletion"}`, got.body)
	assert.Equal(t, 429, send(t, http.MethodDelete, s.URL()+"/v1/companies", h, `{"companies": ["1"]}`).status)
	assert.Equal(t, []string{"u1", "u2"}, s.DeletedUsers())
	assert.Empty(t, s.Deleted())

	s = newStandin(t, userpilottest.Options{})
	require.Equal(t, 202, send(t, http.MethodDelete, s.URL()+"/v1/companies", h, `{"companies": ["1"]}`).status)
	assert.Equal(t, 429, send(t, http.MethodDelete, s.URL()+"/v1/users", h, `{"users": ["u1"]}`).status)

	for _, body := range []string{`{"users": []}`, `{"users": [7]}`, `{"companies": ["1"]}`, `{"users": ["u"], "force": true}`} {
		s := newStandin(t, userpilottest.Options{})
		assert.Equal(t, 400, send(t, http.MethodDelete, s.URL()+"/v1/users", h, body).status, body)
	}
	s = newStandin(t, userpilottest.Options{})
	s.RejectUserDeletion("bad", 400)
	got = send(t, http.MethodDelete, s.URL()+"/v1/users", h, `{"users": ["u", "bad"]}`)
	assert.Equal(t, 400, got.status)
	assert.Contains(t, message(t, got), `"bad"`)
	assert.Empty(t, s.DeletedUsers())
}

// TestRejectUserAnswersStatusAndNeverApplies, in real time and in bulk.
func TestRejectUserAnswersStatusAndNeverApplies(t *testing.T) {
	t.Parallel()
	s := newStandin(t, userpilottest.Options{})
	s.RejectUser("bad", 422)
	assert.Equal(t, 422, identifyUser(t, s, `{"user_id": "bad"}`).status)
	got, _ := submitUsers(t, s, userBulkBody(`{"user_id": "good"}`, `{"user_id": "bad"}`))
	assert.Equal(t, 422, got.status)
	assert.Empty(t, s.Users())
	s.RejectUser("bad", 0)
	assert.Equal(t, 202, identifyUser(t, s, `{"user_id": "bad"}`).status)
}

// TestFaultsAndWipeCoverUsers: an outage injected on identify hits users'
// identify too (one account, one API), and a wiped workspace has no users.
func TestFaultsAndWipeCoverUsers(t *testing.T) {
	t.Parallel()
	s := newStandin(t, userpilottest.Options{})
	s.SetFault(&userpilottest.Fault{Status: 503})
	assert.Equal(t, 503, identifyUser(t, s, `{"user_id": "u"}`).status)
	s.SetFault(nil)
	require.Equal(t, 202, identifyUser(t, s, `{"user_id": "u", "company": {"id": "1"}}`).status)
	s.Wipe()
	assert.Empty(t, s.Users())
	assert.Empty(t, s.Companies())
}

func newStandin(t *testing.T, opts userpilottest.Options) *userpilottest.Server {
	t.Helper()
	opts.APIKey = key
	s := userpilottest.NewServer(opts)
	t.Cleanup(s.Close)
	return s
}

// message is the documented error body's message.
func message(t *testing.T, a answer) string {
	t.Helper()
	var body struct {
		Errors []struct {
			Message string `json:"message"`
		} `json:"errors"`
	}
	require.NoError(t, json.Unmarshal([]byte(a.body), &body), a.body)
	require.Len(t, body.Errors, 1, a.body)
	return body.Errors[0].Message
}
