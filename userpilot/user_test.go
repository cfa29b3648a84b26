package userpilot_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/userpilot"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

var ana = userpilot.User{UserID: "u_1029", CompanyID: "acct_8841", Metadata: userpilottest.Metadata(map[string]any{
	"name": "Ana Lima", "email": "ana@example.org", "created_at": "2024-03-01T09:30:00Z", "seats": json.Number("3"), "gone": nil,
})}

// TestUserBodyIsTheDocumentedIdentify: {user_id, metadata, company: {id}},
// company left out for a user without one (never null), metadata an
// object even when empty; JSONSize is its length; what MarshalJSON writes
// reads back, and company_id (the OpenAPI reading) is read too.
func TestUserBodyIsTheDocumentedIdentify(t *testing.T) {
	tests := []struct {
		u    userpilot.User
		want string
	}{
		{ana, `{"user_id":"u_1029","metadata":{"created_at":"2024-03-01T09:30:00Z","email":"ana@example.org","gone":null,"name":"Ana Lima","seats":3},"company":{"id":"acct_8841"}}`},
		{userpilot.User{UserID: "7"}, `{"user_id":"7","metadata":{}}`},
		{userpilot.User{UserID: `q"<&>`, CompanyID: "Ünï", Metadata: userpilot.Metadata{"k": json.RawMessage(`1`)}}, `{"user_id":"q\"\u003c\u0026\u003e","metadata":{"k":1},"company":{"id":"Ünï"}}`},
	}
	for _, tt := range tests {
		body := tt.u.AppendJSON(nil)
		assert.Equal(t, tt.want, string(body))
		assert.Equal(t, len(body), tt.u.JSONSize())
		var back userpilot.User
		require.NoError(t, json.Unmarshal(body, &back))
		if len(tt.u.Metadata) == 0 {
			back.Metadata = nil
		}
		assert.Equal(t, tt.u, back)
	}
	var openAPI userpilot.User
	require.NoError(t, json.Unmarshal([]byte(`{"user_id":"1","company":{"company_id":"9"}}`), &openAPI))
	assert.Equal(t, "9", openAPI.CompanyID)
}

// TestIdentifyUserSendsTheUserWithItsCompany, to /v1/identify, with the
// headers the page requires; a user without a company is sent without
// one, and the stand-in keeps its company.
func TestIdentifyUserSendsTheUserWithItsCompany(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	c, _ := newClient(t, s, nil)
	ctx := testContext(t, 3*time.Second)
	require.NoError(t, c.IdentifyUser(ctx, ana))
	require.NoError(t, c.IdentifyUser(ctx, userpilot.User{UserID: ana.UserID, Metadata: userpilottest.Metadata(map[string]any{"seats": json.Number("4")})}))

	reqs := s.Requests()
	require.Len(t, reqs, 2)
	assert.Equal(t, "/v1/identify", reqs[0].Path)
	assert.Equal(t, []string{"2020-09-22"}, reqs[0].Header.Values("X-API-Version"))
	assert.Equal(t, []string{"u_1029"}, reqs[0].UserIDs)
	u, ok := s.User("u_1029")
	require.True(t, ok)
	assert.Equal(t, "acct_8841", u.Company, "identified without a company, the user keeps its own")
	assert.Equal(t, json.Number("4"), u.Metadata["seats"])
	assert.Equal(t, "", s.AppliedUsers()[1].Company)

	err := c.IdentifyUser(ctx, userpilot.User{})
	var rej *userpilot.RejectedError
	require.ErrorAs(t, err, &rej)
	assert.Len(t, s.Requests(), 2, "an empty user_id is refused before it is sent")

	s.RejectUser("bad", 400)
	err = c.IdentifyUser(ctx, userpilot.User{UserID: "bad"})
	require.ErrorAs(t, err, &rej)
	assert.Equal(t, 400, rej.Status)
}

// TestUsersAndCompaniesShareTheRealTimeBudget: one client, one limiter:
// at 2 requests/s, a company and a user identify in turn take as long as
// as many of either.
func TestUsersAndCompaniesShareTheRealTimeBudget(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{RateLimit: 2})
	c, _ := newClient(t, s, func(o *userpilot.Options) { o.RateLimit = 2 })
	ctx := testContext(t, 10*time.Second)
	start := time.Now()
	for i := range 3 {
		require.NoError(t, c.IdentifyCompany(ctx, userpilot.Company{CompanyID: fmt.Sprint(i)}))
		require.NoError(t, c.IdentifyUser(ctx, userpilot.User{UserID: fmt.Sprint(i)}))
	}
	assert.GreaterOrEqual(t, time.Since(start), 2*time.Second, "six calls at 2/s, after a burst of one")
	for _, r := range s.Requests() {
		assert.NotEqual(t, 429, r.Status, "the client spaced both kinds to the one budget")
	}
}

// TestBulkIdentifyUsersWritesAFlatCompanyID: the users' bulk body,
// {"users":[{"user_id","company_id","metadata"}]}, company_id left out for
// a user without one, submitted to /v1/users/bulk_identify; a job of
// users makes a job of companies wait (ErrJobRunning) and the reverse.
func TestBulkIdentifyUsersWritesAFlatCompanyID(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	c, _ := newClient(t, s, nil)
	ctx := testContext(t, 3*time.Second)
	users := []userpilot.User{ana, {UserID: "solo", Metadata: userpilottest.Metadata(map[string]any{"role": "admin"})}}

	var body userpilot.BulkBody
	for _, u := range users {
		body.AddUser(u)
	}
	assert.Equal(t, `{"users":[`+
		`{"user_id":"u_1029","company_id":"acct_8841","metadata":{"created_at":"2024-03-01T09:30:00Z","email":"ana@example.org","gone":null,"name":"Ana Lima","seats":3}},`+
		`{"user_id":"solo","metadata":{"role":"admin"}}]}`, string(body.JSON()))
	assert.True(t, body.Users())
	assert.Equal(t, len(body.JSON()), body.Size())

	job, err := c.BulkIdentifyUsers(ctx, users)
	require.NoError(t, err)
	assert.Equal(t, "/v1/users/bulk_identify", s.Requests()[0].Path)
	_, err = c.BulkIdentifyCompanies(ctx, bulkCompanies(1))
	require.ErrorIs(t, err, userpilot.ErrJobRunning, "one job at a time, users and companies together")
	polled, err := c.BackgroundJob(ctx, job.ID)
	require.NoError(t, err)
	require.Equal(t, userpilot.JobCompleted, polled.Status)
	assert.Equal(t, map[string]userpilottest.User{
		"u_1029": {Company: "acct_8841", Metadata: ana.Metadata.Values()},
		"solo":   {Metadata: map[string]any{"role": "admin"}},
	}, s.Users())

	_, err = c.BulkIdentifyCompanies(ctx, bulkCompanies(1))
	require.NoError(t, err)
	_, err = c.BulkIdentifyUsers(ctx, users)
	require.ErrorIs(t, err, userpilot.ErrJobRunning)

	_, err = c.BulkIdentifyUsers(ctx, []userpilot.User{{UserID: "x"}, {}})
	var rej *userpilot.RejectedError
	require.ErrorAs(t, err, &rej)
	assert.ErrorContains(t, err, "bulk identify 2 users: record 1")
	assert.ErrorContains(t, err, "user_id is empty")
}

// TestUserBodyFromMembersIsTheBodyFromAUser: a user added from its
// metadata's members written by the caller (AddUserMembersWithin, as
// delivery writes packed metadata) is the user AddUserWithin writes; the
// limit leaves the body as it was; a body holds companies or users, never
// both.
func TestUserBodyFromMembersIsTheBodyFromAUser(t *testing.T) {
	var fromUsers, fromMembers userpilot.BulkBody
	for _, u := range []userpilot.User{ana, {UserID: "solo"}, {UserID: "b", CompanyID: "c", Metadata: userpilot.Metadata{"k": json.RawMessage(`"v"`)}}} {
		require.True(t, fromUsers.AddUserWithin(u, 0))
		var members []byte
		for k, v := range u.Metadata {
			if len(members) > 0 {
				members = append(members, ',')
			}
			members = append(append(members, userpilot.MetadataKey(k)...), v...)
		}
		before := string(fromMembers.JSON())
		size := fromUsers.Size()
		assert.False(t, fromMembers.AddUserMembersWithin(u.UserID, u.CompanyID, members, size-1), "one byte past the limit")
		assert.Equal(t, before, string(fromMembers.JSON()))
		require.True(t, fromMembers.AddUserMembersWithin(u.UserID, u.CompanyID, members, size))
		assert.JSONEq(t, string(fromUsers.JSON()), string(fromMembers.JSON()))
	}
	assert.Equal(t, 3, fromMembers.Len())
	assert.Panics(t, func() { fromMembers.Add(userpilot.Company{CompanyID: "1"}) })
	var companies userpilot.BulkBody
	companies.Add(userpilot.Company{CompanyID: "1"})
	assert.False(t, companies.Users())
	assert.Panics(t, func() { companies.AddUser(ana) })

	companies.Reuse(companies.Release())
	companies.AddUser(ana)
	assert.True(t, companies.Users(), "an emptied body takes either kind")
}

// TestDeleteUsersSharesTheSpacingWithDeletesOfCompanies: one delete
// request every 2 s, whichever kind: the client spaces them, so Userpilot
// refuses none.
func TestDeleteUsersSharesTheSpacingWithDeletesOfCompanies(t *testing.T) {
	srv := userpilottest.NewServer(userpilottest.Options{APIKey: "k"})
	defer srv.Close()
	c, err := userpilot.New(userpilot.Options{Endpoint: srv.URL(), APIKey: "k", MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, c.DeleteCompanies(context.Background(), []string{"1"}))
	require.NoError(t, c.DeleteUsers(context.Background(), []string{"u1", "u2"}))
	reqs := srv.Requests()
	require.Len(t, reqs, 2, "no request refused and retried")
	assert.Equal(t, "/v1/users", reqs[1].Path)
	assert.GreaterOrEqual(t, reqs[1].Time.Sub(reqs[0].Time), 2*time.Second)
	assert.Equal(t, []string{"u1", "u2"}, srv.DeletedUsers())
	assert.Equal(t, []string{"1"}, srv.Deleted())
}
