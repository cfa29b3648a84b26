package bench

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"
)

// counter is a stand-in Userpilot that only counts what it receives: the
// companies (by id), real-time calls and bulk jobs, answering as Userpilot
// does (202 to an identify, a job id to a bulk identify, the job's status
// when asked, 409 while a job runs). It checks nothing else, so what it
// costs the machine is a small part of what the strict stand-in
// (userpilottest) costs: on two shared cores that work was charged to
// pgpilot's time. Company ids are numbers (the benchmark's rows).
type counter struct {
	srv  *httptest.Server
	auth string
	// bulkRate is how fast a job's records are processed (records/s), as
	// userpilottest's BulkRecordsPerSecond.
	bulkRate float64

	mu       sync.Mutex
	seen     []uint64 // bit i: company i was received
	distinct int
	calls    int // real-time identify calls answered 2xx
	jobs     []counterJob
}

type counterJob struct {
	records    int
	start, end time.Time
}

func newCounter(apiKey string, bulkRate float64) *counter {
	c := &counter{auth: "Token " + apiKey, bulkRate: bulkRate}
	c.srv = httptest.NewServer(http.HandlerFunc(c.serve))
	return c
}

func (c *counter) URL() string { return c.srv.URL }
func (c *counter) Close()      { c.srv.Close() }

// Accepted is how many distinct companies were received.
func (c *counter) Accepted() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.distinct
}

// deliveries is the real-time calls and bulk jobs answered.
func (c *counter) deliveries() (calls, jobs int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls, len(c.jobs)
}

var bodies = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (c *counter) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != c.auth {
		http.Error(w, `{"error":"unauthorized"}`, http.StatusUnauthorized)
		return
	}
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/v1/companies/identify":
		body := read(r)
		defer bodies.Put(body)
		c.mu.Lock()
		c.mark(body.Bytes())
		c.calls++
		c.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, "{}")
	case r.Method == http.MethodPost && r.URL.Path == "/v1/companies/bulk_identify":
		body := read(r)
		defer bodies.Put(body)
		now := time.Now()
		c.mu.Lock()
		if n := len(c.jobs); n > 0 && now.Before(c.jobs[n-1].end) {
			c.mu.Unlock()
			http.Error(w, `{"error":"a job is running"}`, http.StatusConflict)
			return
		}
		records := c.mark(body.Bytes())
		end := now.Add(time.Duration(float64(records) / c.bulkRate * float64(time.Second)))
		c.jobs = append(c.jobs, counterJob{records: records, start: now, end: end})
		id := len(c.jobs)
		c.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"job_id":"%d","status":"queued","total_rows":%d}`, id, records)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/background_jobs/"):
		n, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/v1/background_jobs/"))
		c.mu.Lock()
		if err != nil || n < 1 || n > len(c.jobs) {
			c.mu.Unlock()
			http.Error(w, `{"error":"no such job"}`, http.StatusNotFound)
			return
		}
		j := c.jobs[n-1]
		c.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if now := time.Now(); now.Before(j.end) {
			done := int(float64(j.records) * float64(now.Sub(j.start)) / float64(j.end.Sub(j.start)))
			fmt.Fprintf(w, `{"job_id":"%d","status":"processing","total_rows":%d,"completed_rows":%d}`, n, j.records, done)
			return
		}
		fmt.Fprintf(w, `{"job_id":"%d","status":"completed","total_rows":%d,"completed_rows":%d,"start_time":%q,"end_time":%q}`,
			n, j.records, j.records, j.start.UTC().Format(time.RFC3339Nano), j.end.UTC().Format(time.RFC3339Nano))
	default:
		http.Error(w, `{"error":"not found"}`, http.StatusNotFound)
	}
}

func read(r *http.Request) *bytes.Buffer {
	b := bodies.Get().(*bytes.Buffer)
	b.Reset()
	_, _ = b.ReadFrom(r.Body)
	return b
}

var companyIDKey = []byte(`"company_id":"`)

// mark notes every company a body names and returns how many records it
// holds. The caller holds c.mu.
func (c *counter) mark(body []byte) int {
	records := 0
	for {
		i := bytes.Index(body, companyIDKey)
		if i < 0 {
			return records
		}
		body = body[i+len(companyIDKey):]
		records++
		id := 0
		for len(body) > 0 && body[0] >= '0' && body[0] <= '9' {
			id = id*10 + int(body[0]-'0')
			body = body[1:]
		}
		for id/64 >= len(c.seen) {
			c.seen = append(c.seen, make([]uint64, len(c.seen)+1024)...)
		}
		if c.seen[id/64]&(1<<(id%64)) == 0 {
			c.seen[id/64] |= 1 << (id % 64)
			c.distinct++
		}
	}
}
