package userpilottest_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

const key = "test-key-123"

// validHeaders are what a correct client sends.
func validHeaders() http.Header {
	return http.Header{
		"Authorization": {"Token " + key},
		"Content-Type":  {"application/json"},
		"Accept":        {"application/json, text/plain, */*"},
		"X-Api-Version": {"2020-09-22"},
	}
}

type answer struct {
	status int
	header http.Header
	body   string
}

func send(t *testing.T, method, u string, header http.Header, body string) answer {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	require.NoError(t, err)
	req.Header = header
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return answer{status: resp.StatusCode, header: resp.Header, body: string(data)}
}

func identify(t *testing.T, s *userpilottest.Server, body string) answer {
	t.Helper()
	return send(t, http.MethodPost, s.URL()+"/v1/companies/identify", validHeaders(), body)
}

func TestIdentifyValidationAnswersDocumentedStatus(t *testing.T) {
	t.Parallel()
	const ok = `{"company_id": "4711", "metadata": {"name": "Globex", "seats": 42, "trial": false, "churned_at": null}}`
	without := func(name string) func(http.Header) {
		return func(h http.Header) { h.Del(name) }
	}
	with := func(name, value string) func(http.Header) {
		return func(h http.Header) { h.Set(name, value) }
	}
	tests := []struct {
		name   string
		method string
		path   string
		header func(http.Header)
		body   string
		want   int
	}{
		{name: "valid", body: ok, want: 202},
		{name: "valid without metadata", body: `{"company_id": "4711"}`, want: 202},
		{name: "valid with empty metadata", body: `{"company_id": "4711", "metadata": {}}`, want: 202},
		{name: "content type with charset", header: with("Content-Type", "application/json; charset=utf-8"), body: ok, want: 202},
		{name: "accept any", header: with("Accept", "*/*"), body: ok, want: 202},
		{name: "wrong method", method: http.MethodGet, body: ok, want: 405},
		{name: "unknown path", path: "/v1/companies/identifyy", body: ok, want: 404},
		{name: "missing authorization", header: without("Authorization"), body: ok, want: 401},
		{name: "wrong key", header: with("Authorization", "Token nope"), body: ok, want: 401},
		{name: "bearer scheme", header: with("Authorization", "Bearer "+key), body: ok, want: 401},
		{name: "missing content type", header: without("Content-Type"), body: ok, want: 400},
		{name: "text content type", header: with("Content-Type", "text/plain"), body: ok, want: 400},
		{name: "missing accept", header: without("Accept"), body: ok, want: 400},
		{name: "accept without json", header: with("Accept", "text/html"), body: ok, want: 400},
		{name: "missing api version", header: without("X-Api-Version"), body: ok, want: 400},
		{name: "wrong api version", header: with("X-Api-Version", "2024-01-01"), body: ok, want: 400},
		{name: "empty body", body: ``, want: 400},
		{name: "invalid json", body: `{"company_id": "4711"`, want: 400},
		{name: "array body", body: `[{"company_id": "4711"}]`, want: 400},
		{name: "null body", body: `null`, want: 400},
		{name: "data after object", body: `{"company_id": "4711"} {}`, want: 400},
		{name: "missing company_id", body: `{"metadata": {}}`, want: 400},
		{name: "numeric company_id", body: `{"company_id": 4711}`, want: 400},
		{name: "empty company_id", body: `{"company_id": ""}`, want: 400},
		{name: "unknown field", body: `{"company_id": "4711", "name": "Globex"}`, want: 400},
		{name: "null metadata", body: `{"company_id": "4711", "metadata": null}`, want: 400},
		{name: "array metadata", body: `{"company_id": "4711", "metadata": []}`, want: 400},
		{name: "string metadata", body: `{"company_id": "4711", "metadata": "x"}`, want: 400},
		{name: "object metadata value", body: `{"company_id": "4711", "metadata": {"address": {"city": "Bonn"}}}`, want: 400},
		{name: "array metadata value", body: `{"company_id": "4711", "metadata": {"tags": ["a"]}}`, want: 400},
	}
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key})
	t.Cleanup(s.Close)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := validHeaders()
			if tt.header != nil {
				tt.header(h)
			}
			got := send(t, cmpOr(tt.method, http.MethodPost), s.URL()+cmpOr(tt.path, "/v1/companies/identify"), h, tt.body)
			assert.Equal(t, tt.want, got.status, got.body)
			if tt.want >= 400 && tt.want != 405 {
				var body struct {
					Errors []struct {
						Error     string `json:"error"`
						ErrorCode string `json:"error_code"`
						Message   string `json:"message"`
					} `json:"errors"`
				}
				require.NoError(t, json.Unmarshal([]byte(got.body), &body), got.body)
				require.Len(t, body.Errors, 1)
				assert.NotEmpty(t, body.Errors[0].ErrorCode)
				assert.NotEmpty(t, body.Errors[0].Message)
			}
		})
	}
}

func cmpOr(v, fallback string) string {
	if v == "" {
		return fallback
	}
	return v
}

func TestIdentifySuccessAnswersConfiguredStatusWithEmptyObject(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		configured, want int
	}{{0, 202}, {200, 200}, {202, 202}} {
		s := userpilottest.NewServer(userpilottest.Options{APIKey: key, SuccessStatus: tt.configured})
		got := identify(t, s, `{"company_id": "1"}`)
		s.Close()
		assert.Equal(t, tt.want, got.status)
		assert.JSONEq(t, `{}`, got.body)
	}
}

func TestIdentifyMergesMetadataAndNullClearsTheValue(t *testing.T) {
	t.Parallel()
	var lines []string
	var mu sync.Mutex
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key, Logf: func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, fmt.Sprintf(format, args...))
	}})
	t.Cleanup(s.Close)

	require.Equal(t, 202, identify(t, s, `{"company_id": "4711", "metadata": {"name": "Globex", "plan": "pro", "seats": 42}}`).status)
	require.Equal(t, 202, identify(t, s, `{"company_id": "4711", "metadata": {"plan": "enterprise", "seats": null, "trial": false}}`).status)
	require.Equal(t, 202, identify(t, s, `{"company_id": "4712"}`).status)

	got, ok := s.Company("4711")
	require.True(t, ok)
	assert.Equal(t, map[string]any{"name": "Globex", "plan": "enterprise", "seats": nil, "trial": false}, got)
	assert.Equal(t, map[string]map[string]any{
		"4711": {"name": "Globex", "plan": "enterprise", "seats": nil, "trial": false},
		"4712": {},
	}, s.Companies())
	_, ok = s.Company("nope")
	assert.False(t, ok)
	assert.Equal(t, 3, s.Accepted())
	assert.Equal(t, 3, s.IdentifyRequests())

	// Companies is a copy: changing it changes nothing on the server.
	s.Companies()["4711"]["name"] = "changed"
	got, _ = s.Company("4711")
	assert.Equal(t, "Globex", got["name"])

	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []string{
		`identify company_id=4711 metadata={"name":"Globex","plan":"pro","seats":42}`,
		`identify company_id=4711 metadata={"plan":"enterprise","seats":null,"trial":false}`,
		`identify company_id=4712 metadata={}`,
	}, lines)
}

func TestIdentifyKeepsNumbersAsSent(t *testing.T) {
	t.Parallel()
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key})
	t.Cleanup(s.Close)
	require.Equal(t, 202, identify(t, s, `{"company_id": "1", "metadata": {"spend": 12345678901234567890.50}}`).status)
	got, _ := s.Company("1")
	assert.Equal(t, json.Number("12345678901234567890.50"), got["spend"])
}

func TestRequestsRecordsWhatArrivedAndTheAnswer(t *testing.T) {
	t.Parallel()
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key})
	t.Cleanup(s.Close)
	identify(t, s, `{"company_id": "4711"}`)
	identify(t, s, `{"company_id": 1}`)

	reqs := s.Requests()
	require.Len(t, reqs, 2)
	assert.Equal(t, http.MethodPost, reqs[0].Method)
	assert.Equal(t, "/v1/companies/identify", reqs[0].Path)
	assert.Equal(t, 202, reqs[0].Status)
	assert.Equal(t, []string{"4711"}, reqs[0].CompanyIDs)
	assert.Equal(t, "Token "+key, reqs[0].Header.Get("Authorization"))
	assert.False(t, reqs[0].Time.IsZero())
	assert.Equal(t, 400, reqs[1].Status)
	assert.Empty(t, reqs[1].CompanyIDs)
}

func TestRejectCompanyAnswersStatusAndNeverApplies(t *testing.T) {
	t.Parallel()
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key})
	t.Cleanup(s.Close)
	s.RejectCompany("bad", 422)

	got := identify(t, s, `{"company_id": "bad", "metadata": {"a": 1}}`)
	assert.Equal(t, 422, got.status)
	assert.Contains(t, got.body, `"errors"`)
	assert.Equal(t, 202, identify(t, s, `{"company_id": "good"}`).status)

	bulk := send(t, http.MethodPost, s.URL()+"/v1/companies/bulk_identify", validHeaders(),
		`{"companies": [{"company_id": "good"}, {"company_id": "bad"}]}`)
	assert.Equal(t, 422, bulk.status)

	_, ok := s.Company("bad")
	assert.False(t, ok)
	assert.Equal(t, 1, s.Accepted())
}

func TestFaultsPlayInOrderThenNormalService(t *testing.T) {
	t.Parallel()
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key})
	t.Cleanup(s.Close)
	s.FailNext(2, userpilottest.Fault{Status: 503})
	s.FailNext(1, userpilottest.Fault{Status: 500, Apply: true})
	s.FailNext(1, userpilottest.Fault{Status: 429, RetryAfter: "7"})

	assert.Equal(t, 503, identify(t, s, `{"company_id": "1"}`).status)
	assert.Equal(t, 503, identify(t, s, `{"company_id": "1"}`).status)
	_, applied := s.Company("1")
	assert.False(t, applied, "a plain fault applies nothing")

	assert.Equal(t, 500, identify(t, s, `{"company_id": "1", "metadata": {"a": "b"}}`).status)
	got, applied := s.Company("1")
	assert.True(t, applied, "Apply applies before answering the fault")
	assert.Equal(t, map[string]any{"a": "b"}, got)

	limited := identify(t, s, `{"company_id": "1"}`)
	assert.Equal(t, 429, limited.status)
	assert.Equal(t, "7", limited.header.Get("Retry-After"))

	assert.Equal(t, 202, identify(t, s, `{"company_id": "1"}`).status)
	assert.Equal(t, 5, s.IdentifyRequests())
	assert.Equal(t, 2, s.Accepted())
}

func TestSetFaultHitsEveryIdentifyUntilCleared(t *testing.T) {
	t.Parallel()
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key})
	t.Cleanup(s.Close)
	s.SetFault(&userpilottest.Fault{Status: 502})
	for range 3 {
		assert.Equal(t, 502, identify(t, s, `{"company_id": "1"}`).status)
	}
	s.SetFault(nil)
	assert.Equal(t, 202, identify(t, s, `{"company_id": "1"}`).status)
}

func TestResetFaultDropsConnectionWithoutAnswer(t *testing.T) {
	t.Parallel()
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key})
	t.Cleanup(s.Close)
	s.FailNext(1, userpilottest.Fault{Reset: true})

	req, err := http.NewRequest(http.MethodPost, s.URL()+"/v1/companies/identify", strings.NewReader(`{"company_id": "1"}`))
	require.NoError(t, err)
	req.Header = validHeaders()
	_, err = http.DefaultClient.Do(req)
	require.Error(t, err)
	assert.Equal(t, 0, s.Requests()[0].Status)
	assert.Equal(t, 0, s.Accepted())
}

func TestRealTimeRateLimitAnswers429(t *testing.T) {
	t.Parallel()
	for _, retryAfter := range []bool{false, true} {
		t.Run(fmt.Sprintf("retry-after=%v", retryAfter), func(t *testing.T) {
			t.Parallel()
			// 0.5/s: the second request in a row is always over budget.
			s := userpilottest.NewServer(userpilottest.Options{APIKey: key, RateLimit: 0.5, RetryAfter: retryAfter})
			t.Cleanup(s.Close)
			assert.Equal(t, 202, identify(t, s, `{"company_id": "1"}`).status)
			got := identify(t, s, `{"company_id": "1"}`)
			require.Equal(t, 429, got.status)
			assert.Contains(t, got.body, `"errors"`)
			if retryAfter {
				// Up to 2s are left of the 2s a token takes, rounded up.
				assert.Contains(t, []string{"1", "2"}, got.header.Get("Retry-After"))
			} else {
				assert.Empty(t, got.header.Get("Retry-After"))
			}
			assert.Equal(t, 1, s.Accepted())
		})
	}
}

func bulkBody(ids ...string) string {
	var b strings.Builder
	b.WriteString(`{"companies": [`)
	for i, id := range ids {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"company_id": %q, "metadata": {"n": %d}}`, id, i)
	}
	b.WriteString(`]}`)
	return b.String()
}

func submit(t *testing.T, s *userpilottest.Server, body string) (answer, string) {
	t.Helper()
	got := send(t, http.MethodPost, s.URL()+"/v1/companies/bulk_identify", validHeaders(), body)
	var job struct {
		JobID string `json:"job_id"`
	}
	if got.status == 202 {
		require.NoError(t, json.Unmarshal([]byte(got.body), &job))
	}
	return got, job.JobID
}

type jobState struct {
	JobID         string  `json:"job_id"`
	Status        string  `json:"status"`
	TotalRows     int     `json:"total_rows"`
	CompletedRows int     `json:"completed_rows"`
	ElapsedTime   float64 `json:"elapsed_time"`
	StartTime     string  `json:"start_time"`
	EndTime       *string `json:"end_time"`
}

func poll(t *testing.T, s *userpilottest.Server, id string) (int, jobState) {
	t.Helper()
	got := send(t, http.MethodGet, s.URL()+"/v1/background_jobs/"+url.PathEscape(id),
		http.Header{"Authorization": {"Token " + key}}, "")
	var st jobState
	if got.status == 200 {
		require.NoError(t, json.Unmarshal([]byte(got.body), &st), got.body)
	}
	return got.status, st
}

func TestBulkJobAppliesRecordsOnlyWhenCompleted(t *testing.T) {
	t.Parallel()
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key})
	t.Cleanup(s.Close)

	got, id := submit(t, s, bulkBody("a", "b", "c"))
	require.Equal(t, 202, got.status, got.body)
	assert.Regexp(t, `^bulk:jobs:NX-1:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`, id)
	assert.Contains(t, got.body, `"status":"queued"`)
	assert.Contains(t, got.body, `"submitted_at"`)
	assert.Empty(t, s.Companies(), "accepted is not applied")

	status, st := poll(t, s, id)
	require.Equal(t, 200, status)
	assert.Equal(t, id, st.JobID)
	assert.Equal(t, "completed", st.Status)
	assert.Equal(t, 3, st.TotalRows)
	assert.Equal(t, 3, st.CompletedRows)
	assert.NotNil(t, st.EndTime)
	assert.Equal(t, map[string]map[string]any{
		"a": {"n": json.Number("0")}, "b": {"n": json.Number("1")}, "c": {"n": json.Number("2")},
	}, s.Companies())
	assert.Equal(t, 3, s.Accepted())
	assert.Equal(t, 0, s.IdentifyRequests(), "bulk is not real-time identify")
}

func TestBulkJobProgressesWithTime(t *testing.T) {
	t.Parallel()
	// 1,000 records at 100/s take 10 s: right after submission the job
	// cannot have completed however slow the machine is.
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key, BulkRecordsPerSecond: 100})
	t.Cleanup(s.Close)
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = fmt.Sprint(i)
	}
	got, id := submit(t, s, bulkBody(ids...))
	require.Equal(t, 202, got.status)

	status, st := poll(t, s, id)
	require.Equal(t, 200, status)
	assert.Contains(t, []string{"queued", "processing"}, st.Status)
	assert.Equal(t, 1000, st.TotalRows)
	assert.Less(t, st.CompletedRows, 1000)
	assert.Nil(t, st.EndTime)
	assert.Empty(t, s.Companies())
}

func TestBulkSecondJobWhileOneRunsIs409(t *testing.T) {
	t.Parallel()
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key})
	t.Cleanup(s.Close)
	got, id := submit(t, s, bulkBody("a"))
	require.Equal(t, 202, got.status)

	got, _ = submit(t, s, bulkBody("b"))
	assert.Equal(t, 409, got.status)
	assert.Contains(t, got.body, `"errors"`)

	// Once the first completes (first poll, at speed 0), the next is taken.
	_, st := poll(t, s, id)
	require.Equal(t, "completed", st.Status)
	got, id2 := submit(t, s, bulkBody("b"))
	assert.Equal(t, 202, got.status)
	assert.Contains(t, id2, "NX-2:")
}

func TestBulkJobNobodyPollsStillCompletes(t *testing.T) {
	t.Parallel()
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key})
	t.Cleanup(s.Close)
	// Submitted by a process killed before it polled: Userpilot finishes
	// the job anyway, so the next submission is taken after a while.
	got, _ := submit(t, s, bulkBody("a"))
	require.Equal(t, 202, got.status)
	got, _ = submit(t, s, bulkBody("b"))
	assert.Equal(t, 409, got.status)
	require.Eventually(t, func() bool {
		got, _ := submit(t, s, bulkBody("b"))
		return got.status == 202
	}, 10*time.Second, 100*time.Millisecond)
	_, ok := s.Company("a")
	assert.True(t, ok, "the orphan job's record was applied")
}

func TestBulkOverTenThousandRecordsIs413(t *testing.T) {
	t.Parallel()
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key})
	t.Cleanup(s.Close)
	ids := make([]string, 10_001)
	for i := range ids {
		ids[i] = fmt.Sprint(i)
	}
	got, _ := submit(t, s, bulkBody(ids...))
	assert.Equal(t, 413, got.status)
	assert.Contains(t, got.body, `"errors"`)

	got, _ = submit(t, s, bulkBody(ids[:10_000]...))
	assert.Equal(t, 202, got.status, "exactly 10,000 is allowed")
}

func TestBulkValidatesEveryRecord(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		body string
		want int
	}{
		{"missing companies", `{}`, 400},
		{"companies null", `{"companies": null}`, 400},
		{"companies object", `{"companies": {}}`, 400},
		{"empty companies", `{"companies": []}`, 400},
		{"unknown top-level field", `{"companies": [{"company_id": "a"}], "users": []}`, 400},
		{"numeric id in a record", `{"companies": [{"company_id": "a"}, {"company_id": 2}]}`, 400},
		{"nested metadata in a record", `{"companies": [{"company_id": "a", "metadata": {"x": [1]}}]}`, 400},
		{"unknown field in a record", `{"companies": [{"company_id": "a", "name": "x"}]}`, 400},
	}
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key})
	t.Cleanup(s.Close)
	for _, tt := range tests {
		got, _ := submit(t, s, tt.body)
		assert.Equal(t, tt.want, got.status, "%s: %s", tt.name, got.body)
	}
	bad := validHeaders()
	bad.Del("X-Api-Version")
	got := send(t, http.MethodPost, s.URL()+"/v1/companies/bulk_identify", bad, bulkBody("a"))
	assert.Equal(t, 400, got.status)
	assert.Empty(t, s.Companies())
}

func TestFailNextJobEndsFailedWithoutApplying(t *testing.T) {
	t.Parallel()
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key})
	t.Cleanup(s.Close)
	s.FailNextJob()
	_, id := submit(t, s, bulkBody("a"))
	_, st := poll(t, s, id)
	assert.Equal(t, "failed", st.Status)
	assert.Empty(t, s.Companies())

	_, id = submit(t, s, bulkBody("a"))
	_, st = poll(t, s, id)
	assert.Equal(t, "completed", st.Status, "only the next job fails")
	assert.Len(t, s.Companies(), 1)
}

func TestJobIDRoundTripsEscapedAndUnescapedColons(t *testing.T) {
	t.Parallel()
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key})
	t.Cleanup(s.Close)
	_, id := submit(t, s, bulkBody("a"))
	require.Contains(t, id, ":")

	auth := http.Header{"Authorization": {"Token " + key}}
	for _, path := range []string{
		url.PathEscape(id),                 // colons left as they are
		strings.ReplaceAll(id, ":", "%3A"), // colons percent-encoded
	} {
		got := send(t, http.MethodGet, s.URL()+"/v1/background_jobs/"+path, auth, "")
		assert.Equal(t, 200, got.status, path)
		assert.Contains(t, got.body, `"job_id":"`+id+`"`)
	}
	assert.Equal(t, 404, send(t, http.MethodGet, s.URL()+"/v1/background_jobs/"+url.PathEscape("bulk:jobs:a/b"), auth, "").status)
	assert.Equal(t, 404, send(t, http.MethodGet, s.URL()+"/v1/background_jobs/bulk:jobs:a/b", auth, "").status)
	assert.Equal(t, 401, send(t, http.MethodGet, s.URL()+"/v1/background_jobs/"+url.PathEscape(id), http.Header{}, "").status)
	assert.Equal(t, 405, send(t, http.MethodPost, s.URL()+"/v1/background_jobs/"+url.PathEscape(id), auth, "").status)
}

func TestBulkDoesNotUseRealTimeBudget(t *testing.T) {
	t.Parallel()
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key, RateLimit: 0.5})
	t.Cleanup(s.Close)
	require.Equal(t, 202, identify(t, s, `{"company_id": "1"}`).status)
	got, id := submit(t, s, bulkBody("2"))
	assert.Equal(t, 202, got.status)
	status, _ := poll(t, s, id)
	assert.Equal(t, 200, status)
	assert.Equal(t, 429, identify(t, s, `{"company_id": "1"}`).status, "the real-time budget is still spent")
}

func TestDeleteSchedulesAndAllowsOneRequestEveryTwoSeconds(t *testing.T) {
	t.Parallel()
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key, RetryAfter: true})
	t.Cleanup(s.Close)
	require.Equal(t, 202, identify(t, s, `{"company_id": "4711"}`).status)
	h := http.Header{
		"Authorization": {"Token " + key},
		"Content-Type":  {"application/json"},
		"X-Api-Version": {"2020-09-22"},
	}
	got := send(t, http.MethodDelete, s.URL()+"/v1/companies", h, `{"companies": ["4711", "4712"]}`)
	require.Equal(t, 202, got.status, got.body)
	assert.JSONEq(t, `{"message": "2 companies scheduled for deletion"}`, got.body)

	got = send(t, http.MethodDelete, s.URL()+"/v1/companies", h, `{"companies": ["4713"]}`)
	assert.Equal(t, 429, got.status)
	assert.NotEmpty(t, got.header.Get("Retry-After"))

	assert.Equal(t, []string{"4711", "4712"}, s.Deleted())
	_, ok := s.Company("4711")
	assert.True(t, ok, "deletion runs in a daily batch, not at once")
}

func TestDeleteValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		header func(http.Header)
		body   string
		want   int
	}{
		{name: "missing api version", header: func(h http.Header) { h.Del("X-Api-Version") }, body: `{"companies": ["1"]}`, want: 400},
		{name: "wrong content type", header: func(h http.Header) { h.Set("Content-Type", "text/plain") }, body: `{"companies": ["1"]}`, want: 400},
		{name: "wrong key", header: func(h http.Header) { h.Set("Authorization", "Token x") }, body: `{"companies": ["1"]}`, want: 401},
		{name: "empty list", body: `{"companies": []}`, want: 400},
		{name: "numeric id", body: `{"companies": [1]}`, want: 400},
		{name: "unknown field", body: `{"companies": ["1"], "force": true}`, want: 400},
	}
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key})
	t.Cleanup(s.Close)
	for _, tt := range tests {
		h := http.Header{
			"Authorization": {"Token " + key},
			"Content-Type":  {"application/json"},
			"X-Api-Version": {"2020-09-22"},
		}
		if tt.header != nil {
			tt.header(h)
		}
		got := send(t, http.MethodDelete, s.URL()+"/v1/companies", h, tt.body)
		assert.Equal(t, tt.want, got.status, "%s: %s", tt.name, got.body)
	}
	assert.Empty(t, s.Deleted())
}

func TestDelayFaultEndsWhenClientGivesUp(t *testing.T) {
	t.Parallel()
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key})
	t.Cleanup(s.Close)
	s.FailNext(1, userpilottest.Fault{Delay: time.Minute})

	client := &http.Client{Timeout: 100 * time.Millisecond}
	req, err := http.NewRequest(http.MethodPost, s.URL()+"/v1/companies/identify", strings.NewReader(`{"company_id": "1"}`))
	require.NoError(t, err)
	req.Header = validHeaders()
	_, err = client.Do(req)
	require.Error(t, err)
	// Close waits for handlers: it returns promptly only if the delayed one
	// noticed the client left. The test's own timeout catches a hang.
	require.Eventually(t, func() bool { return len(s.Requests()) == 1 }, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, 0, s.Requests()[0].Status)
	assert.Equal(t, 0, s.Accepted())
}

func TestAnswerAllAnswersEveryPathLikeAServerThatIsNotUserpilot(t *testing.T) {
	t.Parallel()
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key})
	t.Cleanup(s.Close)
	s.AnswerAll(404)
	for _, r := range []struct{ method, path string }{
		{http.MethodPost, "/v1/companies/identify"}, {http.MethodPost, "/v1/companies/bulk_identify"},
		{http.MethodDelete, "/v1/companies"}, {http.MethodGet, "/v1/background_jobs/x"},
	} {
		got := send(t, r.method, s.URL()+r.path, validHeaders(), `{"company_id": "1"}`)
		assert.Equal(t, 404, got.status, r.path)
		assert.NotContains(t, got.body, `"errors"`, "not Userpilot's error body")
	}
	assert.Equal(t, 404, send(t, http.MethodGet, s.URL()+"/v1/background_jobs/x", http.Header{}, "").status, "not even a missing key is refused")
	assert.Zero(t, s.Accepted())
	s.AnswerAll(0)
	assert.Equal(t, 202, identify(t, s, `{"company_id": "1"}`).status)
}

func TestRejectDeletionRefusesTheWholeRequestNamingTheID(t *testing.T) {
	t.Parallel()
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key})
	t.Cleanup(s.Close)
	s.RejectDeletion("bad", 400)
	got := send(t, http.MethodDelete, s.URL()+"/v1/companies", validHeaders(), `{"companies": ["good", "bad"]}`)
	assert.Equal(t, 400, got.status)
	assert.Contains(t, got.body, `"errors"`)
	assert.Empty(t, s.Deleted(), "none of the request's companies is scheduled")
}

func TestJobOverheadKeepsAJobQueuedBeforeItsFirstRecord(t *testing.T) {
	t.Parallel()
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key, BulkRecordsPerSecond: 1000, JobOverhead: time.Hour})
	t.Cleanup(s.Close)
	got, id := submit(t, s, bulkBody("a", "b"))
	require.Equal(t, 202, got.status)
	status, st := poll(t, s, id)
	require.Equal(t, 200, status)
	assert.Equal(t, "queued", st.Status)
	assert.Equal(t, 0, st.CompletedRows)
	assert.Nil(t, st.EndTime)
	assert.Empty(t, s.Companies())
}

func TestSetBulkSpeedAppliesToJobsSubmittedAfterIt(t *testing.T) {
	t.Parallel()
	s := userpilottest.NewServer(userpilottest.Options{APIKey: key})
	t.Cleanup(s.Close)
	got, id := submit(t, s, bulkBody("a"))
	require.Equal(t, 202, got.status)
	_, st := poll(t, s, id)
	require.Equal(t, "completed", st.Status, "speed 0: done at the first poll")

	// Slower mid-run, as Userpilot under load: 1,000 records at 1/s.
	s.SetBulkSpeed(1, 0)
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = fmt.Sprint(i)
	}
	got, id = submit(t, s, bulkBody(ids...))
	require.Equal(t, 202, got.status)
	s.SetBulkSpeed(0, 0) // a job already submitted keeps its speed
	_, st = poll(t, s, id)
	assert.Contains(t, []string{"queued", "processing"}, st.Status)
	assert.Less(t, st.CompletedRows, 1000)
}
