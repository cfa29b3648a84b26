package userpilot_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/userpilot"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

const key = "up-key-7c1d9e3f-never-log-me"

// logBuffer collects slog output from concurrent requests.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newClient returns a client for s with fast retries, and its log. opts may
// change the defaults.
func newClient(t *testing.T, s *userpilottest.Server, opts func(*userpilot.Options)) (*userpilot.Client, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	o := userpilot.Options{
		Endpoint:       s.URL(),
		APIKey:         key,
		RateLimit:      1000,
		RequestTimeout: 2 * time.Second,
		MinBackoff:     time.Millisecond,
		MaxBackoff:     20 * time.Millisecond,
		Logger:         slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if opts != nil {
		opts(&o)
	}
	c, err := userpilot.New(o)
	require.NoError(t, err)
	return c, logs
}

func newServer(t *testing.T, opts userpilottest.Options) *userpilottest.Server {
	t.Helper()
	if opts.APIKey == "" {
		opts.APIKey = key
	}
	s := userpilottest.NewServer(opts)
	t.Cleanup(s.Close)
	return s
}

func testContext(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

var globex = userpilot.Company{CompanyID: "4711", Metadata: userpilottest.Metadata(map[string]any{
	"name": "Globex", "seats": json.Number("42"), "trial": false, "churned_at": nil,
})}

func TestIdentifySendsDocumentedHeadersAndBody(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	c, _ := newClient(t, s, func(o *userpilot.Options) { o.UserAgent = "pgpilot/test" })

	require.NoError(t, c.IdentifyCompany(testContext(t, 3*time.Second), globex))

	reqs := s.Requests()
	require.Len(t, reqs, 1)
	r := reqs[0]
	assert.Equal(t, http.MethodPost, r.Method)
	assert.Equal(t, "/v1/companies/identify", r.Path)
	assert.Equal(t, []string{"Token " + key}, r.Header.Values("Authorization"))
	assert.Equal(t, []string{"application/json"}, r.Header.Values("Content-Type"))
	assert.Equal(t, []string{"application/json, text/plain, */*"}, r.Header.Values("Accept"))
	assert.Equal(t, []string{"2020-09-22"}, r.Header.Values("X-Api-Version"))
	assert.Equal(t, []string{"pgpilot/test"}, r.Header.Values("User-Agent"))
	// The stand-in refuses any other body shape, so acceptance proves it.
	got, ok := s.Company("4711")
	require.True(t, ok)
	assert.Equal(t, map[string]any{"name": "Globex", "seats": json.Number("42"), "trial": false, "churned_at": nil}, got, "a null is sent, and clears the value")
}

func TestIdentifyDefaultUserAgentAndEndpointWithTrailingSlash(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	c, _ := newClient(t, s, func(o *userpilot.Options) { o.Endpoint = s.URL() + "/" })
	require.NoError(t, c.IdentifyCompany(testContext(t, 3*time.Second), globex))
	r := s.Requests()[0]
	assert.Equal(t, "/v1/companies/identify", r.Path)
	assert.Equal(t, "pgpilot", r.Header.Get("User-Agent"))
}

func TestIdentifySendsEmptyObjectForNilOrEmptyMetadata(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	c, _ := newClient(t, s, nil)
	ctx := testContext(t, 3*time.Second)
	// The stand-in answers 400 to "metadata": null, as Userpilot documents an object.
	require.NoError(t, c.IdentifyCompany(ctx, userpilot.Company{CompanyID: "a"}))
	require.NoError(t, c.IdentifyCompany(ctx, userpilot.Company{CompanyID: "b", Metadata: userpilottest.Metadata(map[string]any{})}))
	assert.Equal(t, 2, s.Accepted())
}

func TestIdentifySucceedsOn200And202(t *testing.T) {
	t.Parallel()
	for _, status := range []int{200, 202} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			t.Parallel()
			s := newServer(t, userpilottest.Options{SuccessStatus: status})
			c, _ := newClient(t, s, nil)
			require.NoError(t, c.IdentifyCompany(testContext(t, 3*time.Second), globex))
			assert.Equal(t, int64(1), c.Stats().StatusCounts[status])
			assert.Equal(t, 1, s.Accepted())
		})
	}
}

func TestIdentifyRejectionIsReturnedAtOnceWithoutRetry(t *testing.T) {
	t.Parallel()
	for _, status := range []int{400, 404, 405, 410, 413, 415, 422, 451} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			t.Parallel()
			s := newServer(t, userpilottest.Options{})
			s.RejectCompany("4711", status)
			c, _ := newClient(t, s, nil)

			err := c.IdentifyCompany(testContext(t, 3*time.Second), globex)

			var rejected *userpilot.RejectedError
			require.ErrorAs(t, err, &rejected)
			assert.Equal(t, status, rejected.Status)
			assert.Contains(t, rejected.Body, `"error_code":"invalid_company"`)
			assert.Contains(t, err.Error(), `identify company "4711"`)
			assert.Equal(t, 1, s.IdentifyRequests(), "a rejected record is never retried")
			assert.Zero(t, c.Stats().Retries)
		})
	}
}

func TestIdentifyRejectsEmptyCompanyIDWithoutSending(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	c, _ := newClient(t, s, nil)
	err := c.IdentifyCompany(testContext(t, 3*time.Second), userpilot.Company{})
	var rejected *userpilot.RejectedError
	require.ErrorAs(t, err, &rejected)
	assert.Zero(t, rejected.Status)
	assert.Zero(t, s.IdentifyRequests())
}

func TestIdentifyWithRefusedKeyRetriesUntilCancelledAndNeverLogsKey(t *testing.T) {
	t.Parallel()
	for _, status := range []int{401, 403} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			t.Parallel()
			var s *userpilottest.Server
			if status == 401 {
				s = newServer(t, userpilottest.Options{APIKey: "the-right-key"})
			} else {
				s = newServer(t, userpilottest.Options{})
				s.SetFault(&userpilottest.Fault{Status: 403})
			}
			c, logs := newClient(t, s, nil)

			err := c.IdentifyCompany(testContext(t, 300*time.Millisecond), globex)

			require.ErrorIs(t, err, context.DeadlineExceeded)
			var rejected *userpilot.RejectedError
			assert.False(t, errors.As(err, &rejected), "a key problem is not the record's fault")
			assert.GreaterOrEqual(t, s.IdentifyRequests(), 2, "retried")
			out := logs.String()
			assert.Contains(t, out, "level=ERROR")
			assert.Contains(t, out, fmt.Sprintf("Userpilot rejected the API key (HTTP %d): fix userpilot.api_key; delivery is paused and nothing is lost", status))
			assert.NotContains(t, out, key)
			assert.NotContains(t, err.Error(), key)
		})
	}
}

func TestIdentifyRedirectIsAConfigurationErrorNotARejection(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	// A misconfigured endpoint (say http:// where only https:// answers):
	// followed, the POST would become a GET and every record be refused.
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, s.URL()+r.URL.Path, http.StatusMovedPermanently)
	}))
	t.Cleanup(redirector.Close)
	c, logs := newClient(t, s, func(o *userpilot.Options) { o.Endpoint = redirector.URL })

	err := c.IdentifyCompany(testContext(t, 200*time.Millisecond), globex)

	require.ErrorIs(t, err, context.DeadlineExceeded)
	var rejected *userpilot.RejectedError
	assert.False(t, errors.As(err, &rejected))
	assert.Contains(t, logs.String(), "Userpilot endpoint answered a redirect (HTTP 301")
	assert.Zero(t, len(s.Requests()), "the redirect is not followed")
	assert.Greater(t, c.Stats().StatusCounts[301], int64(1))
}

func TestIdentify429WithRetryAfterPausesEveryRequestOfTheClient(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	s.FailNext(1, userpilottest.Fault{Status: 429, RetryAfter: "1"})
	c, logs := newClient(t, s, nil)
	ctx := testContext(t, 5*time.Second)

	first := make(chan error, 1)
	go func() { first <- c.IdentifyCompany(ctx, globex) }()
	// The client sets its pause before it counts the 429.
	require.Eventually(t, func() bool { return c.Stats().RateLimited == 1 }, 2*time.Second, time.Millisecond)

	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			assert.NoError(t, c.IdentifyCompany(ctx, userpilot.Company{CompanyID: fmt.Sprint(i)}))
		})
	}
	wg.Wait()
	require.NoError(t, <-first)

	reqs := s.Requests()
	require.Len(t, reqs, 6)
	limited := reqs[0]
	require.Equal(t, 429, limited.Status)
	for _, r := range reqs[1:] {
		assert.Equal(t, 202, r.Status)
		assert.GreaterOrEqual(t, r.Time.Sub(limited.Time), time.Second,
			"request for %v sent before the Retry-After pause ended", r.CompanyIDs)
	}
	assert.Contains(t, logs.String(), "level=WARN")
	assert.Contains(t, logs.String(), "company_id=4711")
}

func TestIdentify429WithoutRetryAfterBacksOffExponentially(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	s.FailNext(2, userpilottest.Fault{Status: 429})
	c, _ := newClient(t, s, func(o *userpilot.Options) { o.MaxBackoff = 100 * time.Millisecond })

	start := time.Now()
	require.NoError(t, c.IdentifyCompany(testContext(t, 3*time.Second), globex))

	// Two waits of 1s capped at MaxBackoff, jittered to no less than half.
	assert.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond)
	st := c.Stats()
	assert.Equal(t, int64(2), st.RateLimited)
	assert.Equal(t, int64(2), st.Retries)
	assert.Equal(t, 3, s.IdentifyRequests())
}

func TestIdentifyRetriesTransientStatusesThenSucceeds(t *testing.T) {
	t.Parallel()
	for _, status := range []int{408, 409, 500, 502, 503, 504} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			t.Parallel()
			s := newServer(t, userpilottest.Options{})
			s.FailNext(3, userpilottest.Fault{Status: status})
			c, logs := newClient(t, s, nil)

			require.NoError(t, c.IdentifyCompany(testContext(t, 3*time.Second), globex))

			assert.Equal(t, 4, s.IdentifyRequests())
			assert.Equal(t, 1, s.Accepted())
			st := c.Stats()
			assert.Equal(t, int64(4), st.Requests)
			assert.Equal(t, int64(3), st.Retries)
			assert.Equal(t, int64(3), st.StatusCounts[status])
			assert.Equal(t, int64(1), st.StatusCounts[202])
			assert.Contains(t, logs.String(), fmt.Sprintf("status=%d", status))
			assert.NotContains(t, logs.String(), "Globex", "metadata stays out of logs")
		})
	}
}

func TestIdentifyAppliedButAnswered500IsRetriedAndSucceeds(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	s.FailNext(1, userpilottest.Fault{Status: 500, Apply: true})
	c, _ := newClient(t, s, nil)

	require.NoError(t, c.IdentifyCompany(testContext(t, 3*time.Second), globex))

	assert.Equal(t, 2, s.Accepted(), "applied twice: identify merges, so the retry is harmless")
	got, _ := s.Company("4711")
	assert.Equal(t, "Globex", got["name"])
}

func TestIdentifyRetriesConnectionReset(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	s.FailNext(2, userpilottest.Fault{Reset: true})
	c, _ := newClient(t, s, nil)

	require.NoError(t, c.IdentifyCompany(testContext(t, 3*time.Second), globex))

	assert.Equal(t, 3, s.IdentifyRequests())
	assert.Equal(t, int64(2), c.Stats().StatusCounts[0], "network errors count under status 0")
	assert.Equal(t, 1, s.Accepted())
}

func TestIdentifyRetriesRequestHungLongerThanTimeout(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	s.FailNext(1, userpilottest.Fault{Delay: time.Minute})
	c, _ := newClient(t, s, func(o *userpilot.Options) { o.RequestTimeout = 100 * time.Millisecond })

	require.NoError(t, c.IdentifyCompany(testContext(t, 3*time.Second), globex))

	assert.Equal(t, 2, s.IdentifyRequests())
	assert.Equal(t, 1, s.Accepted())
	assert.Equal(t, int64(1), c.Stats().StatusCounts[0])
}

func TestIdentifyNeverGivesUpOnTransientErrors(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	s.SetFault(&userpilottest.Fault{Status: 503})
	c, _ := newClient(t, s, nil)

	// Stopped once it has tried five times, however long that took (a
	// deadline of 300 ms saw only three tries on a loaded machine).
	ctx, cancel := context.WithCancel(testContext(t, time.Minute))
	defer cancel()
	go func() {
		for ctx.Err() == nil && s.IdentifyRequests() < 5 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	err := c.IdentifyCompany(ctx, globex)

	require.ErrorIs(t, err, context.Canceled, "it gave up by itself")
	assert.Contains(t, err.Error(), `identify company "4711": stopped after`)
	assert.Contains(t, err.Error(), "HTTP 503")
	assert.GreaterOrEqual(t, s.IdentifyRequests(), 5)
	assert.Zero(t, s.Accepted())
}

func TestIdentifyReturnsPromptlyWhenCancelled(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	s.FailNext(1, userpilottest.Fault{Status: 429, RetryAfter: "600"})
	c, _ := newClient(t, s, nil)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)

	err := c.IdentifyCompany(ctx, globex)

	require.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, 1, s.IdentifyRequests())
}

func TestIdentifyRespectsRateLimit(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	c, _ := newClient(t, s, func(o *userpilot.Options) { o.RateLimit = 20 })
	ctx := testContext(t, 5*time.Second)

	start := time.Now()
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() { assert.NoError(t, c.IdentifyCompany(ctx, userpilot.Company{CompanyID: fmt.Sprint(i)})) })
	}
	wg.Wait()

	// A burst of 20, then 10 more at 20/s: at least 0.5s.
	assert.GreaterOrEqual(t, time.Since(start), 450*time.Millisecond)
	assert.Equal(t, 30, s.Accepted())
}

func TestIdentifyWithinServerRateLimitGetsNo429(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{RateLimit: 20, RetryAfter: true})
	c, _ := newClient(t, s, func(o *userpilot.Options) { o.RateLimit = 10 })
	ctx := testContext(t, 5*time.Second)
	var wg sync.WaitGroup
	for i := range 15 {
		wg.Go(func() { assert.NoError(t, c.IdentifyCompany(ctx, userpilot.Company{CompanyID: fmt.Sprint(i)})) })
	}
	wg.Wait()
	assert.Zero(t, c.Stats().RateLimited)
}

func TestNewValidatesOptionsWithoutEchoingKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts userpilot.Options
		want string
	}{
		{"empty endpoint", userpilot.Options{APIKey: key}, "endpoint"},
		{"relative endpoint", userpilot.Options{Endpoint: "analytex.userpilot.io", APIKey: key}, "endpoint"},
		{"ftp endpoint", userpilot.Options{Endpoint: "ftp://analytex.userpilot.io", APIKey: key}, "http(s)"},
		{"no host", userpilot.Options{Endpoint: "https://", APIKey: key}, "host"},
		{"credentials in endpoint", userpilot.Options{Endpoint: "https://u:" + key + "@analytex.userpilot.io", APIKey: key}, "credentials"},
		{"empty key", userpilot.Options{Endpoint: "https://analytex.userpilot.io", APIKey: "  \n"}, "api key is empty"},
		{"key with inner newline", userpilot.Options{Endpoint: "https://analytex.userpilot.io", APIKey: key + "\nX-Evil: 1"}, "control character"},
		{"negative rate", userpilot.Options{Endpoint: "https://analytex.userpilot.io", APIKey: key, RateLimit: -1}, "negative"},
	}
	for _, tt := range tests {
		_, err := userpilot.New(tt.opts)
		require.Error(t, err, tt.name)
		assert.Contains(t, err.Error(), tt.want, tt.name)
		assert.NotContains(t, err.Error(), key, tt.name)
	}
	_, err := userpilot.New(userpilot.Options{Endpoint: "https://analytex-eu.userpilot.io", APIKey: key + "\n"})
	assert.NoError(t, err, "a trailing newline from a secret file is trimmed")
}

func bulkCompanies(n int) []userpilot.Company {
	cos := make([]userpilot.Company, n)
	for i := range cos {
		cos[i] = userpilot.Company{CompanyID: fmt.Sprint(i), Metadata: userpilottest.Metadata(map[string]any{"plan": "pro"})}
	}
	return cos
}

func TestBulkIdentifyReturnsJobThatBackgroundJobFollows(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	c, _ := newClient(t, s, nil)
	ctx := testContext(t, 3*time.Second)

	job, err := c.BulkIdentifyCompanies(ctx, bulkCompanies(3))
	require.NoError(t, err)
	assert.Equal(t, userpilot.JobQueued, job.Status)
	require.True(t, strings.HasPrefix(job.ID, "bulk:jobs:NX-"), job.ID)
	assert.Empty(t, s.Companies(), "accepted is not applied")

	// The id, colons and all, round-trips through the path.
	polled, err := c.BackgroundJob(ctx, job.ID)
	require.NoError(t, err)
	assert.Equal(t, job.ID, polled.ID)
	assert.Equal(t, userpilot.JobCompleted, polled.Status)
	assert.Equal(t, 3, polled.TotalRows)
	assert.Equal(t, 3, polled.CompletedRows)
	assert.False(t, polled.EndTime.Before(polled.StartTime))
	assert.Len(t, s.Companies(), 3)
	assert.Equal(t, "/v1/background_jobs/"+job.ID, s.Requests()[1].Path)
}

func TestBackgroundJobEscapesIDAsOnePathSegment(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	c, _ := newClient(t, s, nil)

	_, err := c.BackgroundJob(testContext(t, 3*time.Second), "bulk:jobs:NX-9:a/b c?d")

	var rejected *userpilot.RejectedError
	require.ErrorAs(t, err, &rejected)
	assert.Equal(t, 404, rejected.Status)
	// job_not_found (not the router's not_found) means the server read one id.
	assert.Contains(t, rejected.Body, `"error_code":"job_not_found"`)
	assert.Equal(t, "/v1/background_jobs/bulk:jobs:NX-9:a/b c?d", s.Requests()[0].Path)
}

func TestBulkIdentifyWhileJobRunsIsErrJobRunning(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	c, _ := newClient(t, s, nil)
	ctx := testContext(t, 3*time.Second)
	_, err := c.BulkIdentifyCompanies(ctx, bulkCompanies(1))
	require.NoError(t, err)

	_, err = c.BulkIdentifyCompanies(ctx, bulkCompanies(1))

	require.ErrorIs(t, err, userpilot.ErrJobRunning)
	assert.Len(t, s.Requests(), 2, "409 is an answer for the caller, not retried")
}

func TestBulkIdentifyTooLarge(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	c, _ := newClient(t, s, nil)
	ctx := testContext(t, 3*time.Second)

	_, err := c.BulkIdentifyCompanies(ctx, bulkCompanies(userpilot.MaxBulkRecords+1))
	require.ErrorIs(t, err, userpilot.ErrTooLarge)
	assert.Empty(t, s.Requests(), "refused before sending")

	s.FailNextBulk(1, userpilottest.Fault{Status: 413})
	_, err = c.BulkIdentifyCompanies(ctx, bulkCompanies(2))
	require.ErrorIs(t, err, userpilot.ErrTooLarge)
	assert.Len(t, s.Requests(), 1)
}

func TestBulkIdentifyRetriesTransientErrorsWithoutRealTimeBudget(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	s.FailNextBulk(2, userpilottest.Fault{Status: 503})
	s.FailNextBulk(1, userpilottest.Fault{Status: 429})
	// One real-time request per 5s: bulk calls finishing within the
	// deadline prove they do not wait on that budget.
	c, _ := newClient(t, s, func(o *userpilot.Options) { o.RateLimit = 0.2 })
	ctx := testContext(t, 2500*time.Millisecond)
	require.NoError(t, c.IdentifyCompany(ctx, globex))

	job, err := c.BulkIdentifyCompanies(ctx, bulkCompanies(2))
	require.NoError(t, err)
	_, err = c.BackgroundJob(ctx, job.ID)
	require.NoError(t, err)

	st := c.Stats()
	assert.Equal(t, int64(3), st.Retries)
	assert.Equal(t, int64(1), st.RateLimited)
}

func TestBulkIdentifyAcceptedButAnswered500MeetsItsOwnJob(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	s.FailNextBulk(1, userpilottest.Fault{Status: 500, Apply: true})
	c, _ := newClient(t, s, nil)

	_, err := c.BulkIdentifyCompanies(testContext(t, 3*time.Second), bulkCompanies(2))

	// The retry finds the job the lost answer created: the caller waits
	// and resubmits, which identify's merge makes harmless.
	require.ErrorIs(t, err, userpilot.ErrJobRunning)
	assert.Len(t, s.Requests(), 2)
}

func TestBulkIdentifyRejectedIsRejectedError(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{})
	s.RejectCompany("1", 400)
	c, _ := newClient(t, s, nil)

	_, err := c.BulkIdentifyCompanies(testContext(t, 3*time.Second), bulkCompanies(3))

	var rejected *userpilot.RejectedError
	require.ErrorAs(t, err, &rejected)
	assert.Equal(t, 400, rejected.Status)
	assert.Contains(t, err.Error(), "bulk identify 3 companies")
}

func TestDeleteCompaniesIsSpacedToUserpilotsLimit(t *testing.T) {
	srv := userpilottest.NewServer(userpilottest.Options{APIKey: "k"})
	defer srv.Close()
	c, err := userpilot.New(userpilot.Options{Endpoint: srv.URL(), APIKey: "k", MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	require.NoError(t, err)
	start := time.Now()
	require.NoError(t, c.DeleteCompanies(context.Background(), []string{"1", "2"}))
	require.NoError(t, c.DeleteCompanies(context.Background(), []string{"3"}))
	assert.GreaterOrEqual(t, time.Since(start), 2*time.Second, "the second request waited for Userpilot's 2-second limit")
	assert.Equal(t, []string{"1", "2", "3"}, srv.Deleted())
	for _, r := range srv.Requests() {
		assert.NotEqual(t, 429, r.Status, "spaced by the client, never refused")
	}
}

// slowFirst holds up the first request on its way, as a loaded machine or
// network does.
type slowFirst struct {
	mu   sync.Mutex
	sent int
	rt   http.RoundTripper
}

func (s *slowFirst) RoundTrip(r *http.Request) (*http.Response, error) {
	s.mu.Lock()
	s.sent++
	first := s.sent == 1
	s.mu.Unlock()
	if first {
		time.Sleep(300 * time.Millisecond)
	}
	return s.rt.RoundTrip(r)
}

func TestDeleteRequestsArriveTwoSecondsApartEvenWhenOneIsHeldUpOnTheWay(t *testing.T) {
	srv := userpilottest.NewServer(userpilottest.Options{APIKey: "k"})
	defer srv.Close()
	c, err := userpilot.New(userpilot.Options{Endpoint: srv.URL(), APIKey: "k", MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		HTTPClient: &http.Client{Transport: &slowFirst{rt: http.DefaultTransport}}})
	require.NoError(t, err)
	require.NoError(t, c.DeleteCompanies(context.Background(), []string{"1"}))
	require.NoError(t, c.DeleteCompanies(context.Background(), []string{"2"}))
	reqs := srv.Requests()
	require.Len(t, reqs, 2, "no request refused and retried")
	assert.GreaterOrEqual(t, reqs[1].Time.Sub(reqs[0].Time), 2*time.Second, "Userpilot counts its limit where requests arrive")
	for _, r := range reqs {
		assert.Equal(t, 202, r.Status)
	}
}

// TestRealtimeRateBacksOffToWhatUserpilotAllows: the account allows
// 100 requests/s, rate_limit says 1,000 (another program on the key, a
// smaller plan). The client halves its rate at each 429 and ends near
// what Userpilot allows, so 429s stay a small share of the calls.
func TestRealtimeRateBacksOffToWhatUserpilotAllows(t *testing.T) {
	t.Parallel()
	s := newServer(t, userpilottest.Options{RateLimit: 100})
	c, _ := newClient(t, s, func(o *userpilot.Options) { o.RateLimit = 1000; o.Concurrency = 8 })
	ctx := testContext(t, 60*time.Second)
	var wg sync.WaitGroup
	next := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range next {
				assert.NoError(t, c.IdentifyCompany(ctx, userpilot.Company{CompanyID: fmt.Sprint(i)}))
			}
		})
	}
	for i := range 600 {
		next <- i
	}
	close(next)
	wg.Wait()
	st := c.Stats()
	t.Logf("%d requests, %d answered 429; rate now %.1f/s", st.Requests, st.RateLimited, st.RealtimeLimit)
	assert.Less(t, st.RealtimeLimit, 250.0, "well below rate_limit, near what Userpilot allows")
	assert.LessOrEqual(t, float64(st.RateLimited), 0.05*float64(st.Requests), "429s are a small share of the calls")
	assert.Equal(t, 600, s.Accepted())
}

func TestBackgroundJobReadsWhatTheStatusReports(t *testing.T) {
	t.Parallel()
	answers := map[string]string{
		// The OpenAPI's shape, numbers as numbers.
		"full": `{"job_id":"j","status":"processing","total_rows":1000,"completed_rows":250,"elapsed_time":12.5,
			"start_time":"2026-01-02T03:04:05Z","end_time":null}`,
		// Numbers as strings.
		"strings": `{"job_id":"j","status":"completed","total_rows":"1000","completed_rows":"1000","elapsed_time":"40",
			"start_time":"2026-01-02T03:04:05Z","end_time":"2026-01-02T03:04:45.5Z"}`,
		// The short shape: nothing but the id and status.
		"short": `{"job_id":"j","status":"queued"}`,
		// Nonsense where numbers belong: ignored, not an error.
		"odd": `{"job_id":"j","status":"queued","total_rows":{"a":1},"completed_rows":-4,"elapsed_time":"soon","start_time":7}`,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, answers[strings.TrimPrefix(r.URL.Path, "/v1/background_jobs/")])
	}))
	t.Cleanup(srv.Close)
	c, err := userpilot.New(userpilot.Options{Endpoint: srv.URL, APIKey: key, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	ctx := testContext(t, 5*time.Second)
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

	full, err := c.BackgroundJob(ctx, "full")
	require.NoError(t, err)
	assert.Equal(t, userpilot.Job{ID: "j", Status: "processing", TotalRows: 1000, CompletedRows: 250,
		Elapsed: 12500 * time.Millisecond, StartTime: start}, full)

	strs, err := c.BackgroundJob(ctx, "strings")
	require.NoError(t, err)
	assert.Equal(t, userpilot.Job{ID: "j", Status: "completed", TotalRows: 1000, CompletedRows: 1000,
		Elapsed: 40 * time.Second, StartTime: start, EndTime: start.Add(40500 * time.Millisecond)}, strs)

	for _, name := range []string{"short", "odd"} {
		j, err := c.BackgroundJob(ctx, name)
		require.NoError(t, err)
		assert.Equal(t, userpilot.Job{ID: "j", Status: "queued", CompletedRows: -1}, j, name)
	}
}
