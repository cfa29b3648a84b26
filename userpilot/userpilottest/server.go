// Package userpilottest provides a stand-in Userpilot server that enforces the
// published API contract (docs/design.md, "Userpilot's API") as strictly as Userpilot's own
// documentation, for tests and demos that cannot reach Userpilot. It plays
// the role net/http/httptest plays for net/http: real HTTP over loopback,
// with profiles you can inspect and faults you can inject. It holds
// companies and users (each user with its one company), which share the
// account's limits: the real-time budget, one bulk job at a time, one
// delete request every 2 seconds.
package userpilottest

import (
	"bytes"
	"cmp"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// APIVersion is the X-API-Version every identify, bulk and delete request must carry.
const APIVersion = "2020-09-22"

const (
	identifyPath = "/v1/companies/identify"
	bulkPath     = "/v1/companies/bulk_identify"
	deletePath   = "/v1/companies"
	jobsPrefix   = "/v1/background_jobs/"

	maxBulkRecords = 10_000
	maxBodyBytes   = 50 << 20 // the published cap for bulk uploads, applied to every body
	deleteInterval = 2 * time.Second
)

// Options configures a Server.
type Options struct {
	// APIKey is the key every request must carry as "Authorization: Token <key>";
	// anything else is answered 401.
	APIKey string
	// SuccessStatus answers an accepted identify: 0 means 202 (the OpenAPI
	// reading), 200 is the guide's reading. The body is {} either way.
	SuccessStatus int
	// RateLimit is the real-time budget in requests per second (token bucket,
	// burst max(1, int(RateLimit))); beyond it identify answers 429. 0 means
	// unlimited.
	RateLimit float64
	// RetryAfter adds a Retry-After header (whole seconds, rounded up) to
	// 429s. Off by default: no page of Userpilot's says it sends one.
	RetryAfter bool
	// BulkRecordsPerSecond is how fast bulk jobs progress; 0 means a job
	// completes when it is first polled (after JobOverhead), or a second
	// after that.
	BulkRecordsPerSecond float64
	// JobOverhead is how long a bulk job stays queued before its first
	// record is processed (Userpilot's queueing and validation).
	JobOverhead time.Duration
	// Logf, if set, gets one line per applied identify record.
	Logf func(format string, args ...any)
}

// Request is what the server saw of one request and how it answered.
type Request struct {
	Method     string
	Path       string // unescaped
	Header     http.Header
	Status     int // 0 when no answer was given (connection reset, client gave up)
	CompanyIDs []string
	UserIDs    []string  // of an identify-user, bulk or delete request of users
	Time       time.Time // when it arrived
}

// Applied is one identify record as it was applied, metadata exactly as
// sent (a null stays a nil value here), so tests can check a payload to the
// letter.
type Applied struct {
	Kind      string // "identify" or "bulk identify"
	CompanyID string
	Metadata  map[string]any
}

// Server is a stand-in Userpilot. It is safe for concurrent use; each test
// should start its own.
type Server struct {
	opts    Options
	limiter *rate.Limiter // nil: unlimited
	ts      *httptest.Server

	mu               sync.Mutex
	companies        map[string]*profile
	requests         []Request
	accepted         int
	applied          []appliedRun
	appliedCount     int
	indexed          int       // runs of applied whose records are in companies
	profiles         []profile // where the next new profiles are taken from
	identifyRequests int
	lastApplied      time.Time // when the last record of either kind was applied
	faults           faults
	rejects          map[string]int
	deleteRejects    map[string]int
	answerAll        int // every request, whatever its path, gets this status: not Userpilot answering
	jobs             map[string]*job
	currentJob       *job // the latest job: one runs at a time per account
	submitting       int  // bulk identify requests being received
	jobSeq           int
	failNextJob      bool
	bulkSpeed        float64       // records/s of jobs submitted from now on
	jobOverhead      time.Duration // queueing of jobs submitted from now on
	lastDelete       time.Time     // of either kind: one delete request every 2 s per account
	deleted          []string
	logLines         []string // emitted by unlock, outside the mutex

	users                map[string]*userProfile
	appliedUsers         []appliedUserRun
	appliedUserCount     int
	identifyUserRequests int
	userRejects          map[string]int
	userDeleteRejects    map[string]int
	deletedUsers         []string
}

// NewServer starts a stand-in on 127.0.0.1 with a random port. Close it when done.
func NewServer(opts Options) *Server {
	s := NewHandler(opts)
	s.ts = httptest.NewServer(s)
	return s
}

// NewHandler returns a stand-in that does not listen: serve it with your own
// http.Server (as cmd/userpilot-standin does). URL returns "" and Close does
// nothing.
func NewHandler(opts Options) *Server {
	s := &Server{
		opts:              opts,
		companies:         map[string]*profile{},
		rejects:           map[string]int{},
		deleteRejects:     map[string]int{},
		userDeleteRejects: map[string]int{},
		jobs:              map[string]*job{},
		users:             map[string]*userProfile{},
		userRejects:       map[string]int{},
		bulkSpeed:         opts.BulkRecordsPerSecond,
		jobOverhead:       opts.JobOverhead,
	}
	if opts.RateLimit > 0 {
		s.limiter = rate.NewLimiter(rate.Limit(opts.RateLimit), max(1, int(opts.RateLimit)))
	}
	return s
}

// URL is the base URL to give a client, e.g. http://127.0.0.1:41234.
func (s *Server) URL() string {
	if s.ts == nil {
		return ""
	}
	return s.ts.URL
}

// Close stops a server started by NewServer, waiting for requests in flight.
func (s *Server) Close() {
	if s.ts != nil {
		s.ts.Close()
	}
}

// lock takes the mutex after bringing bulk jobs up to date, so every reader
// sees exactly the records of the jobs finished by now.
func (s *Server) lock() {
	s.mu.Lock()
	s.advanceJobsLocked(time.Now())
}

// unlock releases the mutex, then emits the log lines gathered under it, so a
// slow Logf never holds up other requests.
func (s *Server) unlock() {
	lines := s.logLines
	s.logLines = nil
	s.mu.Unlock()
	if s.opts.Logf != nil {
		for _, l := range lines {
			s.opts.Logf("%s", l)
		}
	}
}

// Companies returns a deep copy of every profile: company_id → metadata.
// Numbers are json.Number, as sent.
func (s *Server) Companies() map[string]map[string]any {
	s.lock()
	defer s.unlock()
	s.indexLocked()
	out := make(map[string]map[string]any, len(s.companies))
	for id, p := range s.companies {
		out[id] = copyMetadata(p.fold())
	}
	return out
}

// Wipe forgets every profile, as a Userpilot workspace that lost its data
// (or a new one) would: only a re-sync brings them back.
func (s *Server) Wipe() {
	s.lock()
	defer s.unlock()
	clear(s.companies)
	clear(s.users)
	s.indexed = len(s.applied) // what was applied before is gone with them
}

// Company returns a copy of one profile's metadata and whether it exists.
func (s *Server) Company(id string) (map[string]any, bool) {
	s.lock()
	defer s.unlock()
	s.indexLocked()
	p, ok := s.companies[id]
	if !ok {
		return nil, false
	}
	return copyMetadata(p.fold()), true
}

// Requests returns every request received so far, in the order they were
// answered (or dropped).
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Request, len(s.requests))
	for i, r := range s.requests {
		r.Header = r.Header.Clone()
		r.CompanyIDs = append([]string(nil), r.CompanyIDs...)
		r.UserIDs = append([]string(nil), r.UserIDs...)
		out[i] = r
	}
	return out
}

// Applied returns every identify record applied, in the order applied.
// It is recorded under the same lock as the merge, so once a test sees a
// profile change, the record that changed it is here.
func (s *Server) Applied() []Applied {
	s.lock()
	defer s.unlock()
	out := make([]Applied, 0, s.appliedCount)
	for _, run := range s.applied {
		for _, co := range run.records {
			md := co.meta()
			if co.raw == "" {
				md = copyMetadata(md) // shared with the record; else decoded afresh
			}
			out = append(out, Applied{Kind: run.kind, CompanyID: co.id, Metadata: md})
		}
	}
	return out
}

// Accepted counts identify records applied: real-time ones plus the records
// of completed bulk jobs.
func (s *Server) Accepted() int {
	s.lock()
	defer s.unlock()
	return s.accepted
}

// LastApplied is when the last record, a company's or a user's, was
// applied (zero before the first): once the stand-in equals the table, the
// time it got there, however late a test looks.
func (s *Server) LastApplied() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastApplied
}

// JobState is what the stand-in knows of the account's bulk job at one
// moment.
type JobState struct {
	// Submitting says a bulk identify request (of companies or of users)
	// is being received: its submitter does not know the job's id yet.
	Submitting bool
	// Running says a job is queued or processing, Submitted when it was
	// submitted, and Polled whether its status was asked for since (its
	// submitter knows its id).
	Running   bool
	Submitted time.Time
	Polled    bool
}

// Job is the account's bulk job now (one runs at a time, of companies or
// of users).
func (s *Server) Job() JobState {
	s.lock()
	defer s.unlock()
	st := JobState{Submitting: s.submitting > 0}
	if j := s.currentJob; j != nil && j.running() {
		st.Running, st.Submitted, st.Polled = true, j.submitted, j.polled
	}
	return st
}

// IdentifyRequests counts real-time identify requests received, whatever
// they were answered.
func (s *Server) IdentifyRequests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.identifyRequests
}

// Deleted returns the company ids scheduled for deletion, in order. Profiles
// stay: Userpilot deletes in a daily batch.
func (s *Server) Deleted() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.deleted...)
}

// RejectCompany makes every identify (real-time or bulk) naming id answer
// status with the documented error body; its records are never applied.
// Status 0 accepts the company again.
func (s *Server) RejectCompany(id string, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if status == 0 {
		delete(s.rejects, id)
		return
	}
	s.rejects[id] = status
}

// RejectDeletion makes every delete request naming id answer status with
// the documented error body: the whole request is refused and none of its
// companies is scheduled, as Userpilot refuses an invalid body. The request
// still counts against the one-every-2-seconds limit.
func (s *Server) RejectDeletion(id string, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deleteRejects[id] = status
}

// SetBulkSpeed changes, mid-run, how fast bulk jobs submitted from now on
// progress (records/s; 0 as Options.BulkRecordsPerSecond) and how long
// they stay queued first, as Userpilot's speed varies with its load. A job
// already submitted keeps the speed it was given.
func (s *Server) SetBulkSpeed(recordsPerSecond float64, overhead time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bulkSpeed, s.jobOverhead = recordsPerSecond, overhead
}

// FailNextJob makes the next submitted bulk job end "failed", applying nothing.
func (s *Server) FailNextJob() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNextJob = true
}

// AnswerAll makes every request, on any path and whatever its key, answer
// status with a plain-text body, as a server that is not Userpilot's API
// does (a wrong base URL, a proxy, a web site): AnswerAll(404) is "not
// found" for everything. 0 ends it.
func (s *Server) AnswerAll(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.answerAll = status
}

// receiving counts a bulk identify request as being received until the
// function it returns is called.
func (s *Server) receiving() func() {
	s.mu.Lock()
	s.submitting++
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		s.submitting--
		s.mu.Unlock()
	}
}

// ServeHTTP answers Userpilot's API routes; anything else is 404.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &Request{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Time: time.Now()}
	// Recorded even when a handler hijacks or aborts the connection (a
	// reset records it before the client can see the connection drop).
	var once sync.Once
	logged := func() {
		once.Do(func() {
			s.mu.Lock()
			s.requests = append(s.requests, *rec)
			s.mu.Unlock()
		})
	}
	defer logged()
	s.mu.Lock()
	all := s.answerAll
	s.mu.Unlock()
	if all != 0 {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(all)
		fmt.Fprintf(w, "%d %s\n", all, strings.ToLower(http.StatusText(all)))
		rec.Status = all
		return
	}
	ex := &exchange{w: w, r: r, rec: rec, logged: logged}
	path := r.URL.EscapedPath()
	jobID, isJob := strings.CutPrefix(path, jobsPrefix)
	switch {
	case path == identifyPath:
		s.serveIdentify(ex)
	case path == bulkPath:
		defer s.receiving()()
		s.serveBulk(ex)
	case path == deletePath:
		s.serveDelete(ex)
	case path == userIdentifyPath:
		s.serveUserIdentify(ex)
	case path == userBulkPath:
		defer s.receiving()()
		s.serveUserBulk(ex)
	case path == userDeletePath:
		s.serveUserDelete(ex)
	case isJob && jobID != "":
		s.serveJob(ex, jobID)
	default:
		ex.fail(&apiError{status: http.StatusNotFound, code: "not_found", message: "no such endpoint: " + r.URL.Path})
	}
}

// exchange is one request being answered.
type exchange struct {
	w   http.ResponseWriter
	r   *http.Request
	rec *Request
	// logged records rec in the request log (once).
	logged func()
}

func (ex *exchange) reply(status int, body any) {
	data, err := json.Marshal(body)
	if err != nil {
		panic(fmt.Sprintf("userpilottest: encode answer: %v", err))
	}
	ex.w.Header().Set("Content-Type", "application/json")
	ex.w.WriteHeader(status)
	_, _ = ex.w.Write(data)
	ex.rec.Status = status
}

func (ex *exchange) fail(e *apiError) {
	if e.retryAfter != "" {
		ex.w.Header().Set("Retry-After", e.retryAfter)
	}
	if e.allow != "" {
		ex.w.Header().Set("Allow", e.allow)
	}
	ex.reply(e.status, e.body())
}

// reset drops the connection without answering, with a TCP RST where
// possible, like a crashed proxy.
func (ex *exchange) reset() {
	ex.logged() // before the client sees the connection drop
	conn, _, err := http.NewResponseController(ex.w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler) // net/http closes the connection unanswered
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// authorize checks method and key, the checks Userpilot makes before it
// reads a body.
func (s *Server) authorize(ex *exchange, method string) *apiError {
	if ex.r.Method != method {
		return &apiError{status: http.StatusMethodNotAllowed, code: "method_not_allowed", allow: method,
			message: fmt.Sprintf("%s is not allowed here; use %s", ex.r.Method, method)}
	}
	want := "Token " + s.opts.APIKey
	if got := ex.r.Header.Get("Authorization"); s.opts.APIKey == "" || subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
		return &apiError{status: http.StatusUnauthorized, code: "unauthorized",
			message: `missing or invalid API key: send "Authorization: Token <key>"`}
	}
	return nil
}

// retryAfterSeconds renders d as Retry-After delta-seconds, rounded up so a
// client that honours it is never early.
func retryAfterSeconds(d time.Duration) string {
	return strconv.FormatInt(max(1, int64(math.Ceil(d.Seconds()))), 10)
}

func (s *Server) rateLimited(wait time.Duration) *apiError {
	e := &apiError{status: http.StatusTooManyRequests, code: "rate_limited", message: "too many requests"}
	if s.opts.RetryAfter {
		e.retryAfter = retryAfterSeconds(wait)
	}
	return e
}

// serveIdentify applies one real-time identify.
func (s *Server) serveIdentify(ex *exchange) {
	s.mu.Lock()
	s.identifyRequests++
	s.mu.Unlock()

	if e := s.authorize(ex, http.MethodPost); e != nil {
		ex.fail(e)
		return
	}
	if s.limiter != nil {
		now := time.Now()
		res := s.limiter.ReserveN(now, 1)
		if wait := res.DelayFrom(now); wait > 0 {
			res.CancelAt(now) // a refused request costs no token
			ex.fail(s.rateLimited(wait))
			return
		}
	}
	body, e := readBody(ex)
	if e != nil {
		ex.fail(e)
		return
	}
	s.mu.Lock()
	f := s.faults.nextIdentify()
	s.mu.Unlock()
	s.serveWithFault(ex, f, func() (int, any, *apiError) { return s.acceptIdentify(ex, body) })
}

// acceptIdentify validates and applies one identify.
func (s *Server) acceptIdentify(ex *exchange, body []byte) (int, any, *apiError) {
	if e := checkHeaders(ex.r, true); e != nil {
		return 0, nil, e
	}
	co, e := receiveCompany(body)
	if co.id != "" {
		ex.rec.CompanyIDs = []string{co.id}
	}
	if e != nil {
		return 0, nil, e
	}
	s.lock()
	defer s.unlock()
	if status, ok := s.rejects[co.id]; ok {
		return 0, nil, rejection(status, co.id)
	}
	s.applyLocked("identify", []company{co})
	return cmp.Or(s.opts.SuccessStatus, http.StatusAccepted), struct{}{}, nil
}

// serveWithFault answers with accept, after playing fault f if there is one.
// accept validates the request and applies it (or submits the job).
func (s *Server) serveWithFault(ex *exchange, f *Fault, accept func() (int, any, *apiError)) {
	if f != nil {
		if f.Delay > 0 {
			t := time.NewTimer(f.Delay)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ex.r.Context().Done():
				return // the client gave up: nobody to answer
			}
		}
		if f.Reset {
			ex.reset()
			return
		}
		if f.Status != 0 {
			if f.Apply {
				if _, _, e := accept(); e != nil {
					ex.fail(e)
					return
				}
			}
			ex.fail(faultAnswer(f))
			return
		}
	}
	status, answer, e := accept()
	if e != nil {
		ex.fail(e)
		return
	}
	ex.reply(status, answer)
}

// appliedRun is identify records applied one after the other, of one
// kind: a real-time identify, or a bulk job's records (the job's own
// slice, not a copy).
type appliedRun struct {
	kind    string
	records []company
}

// profile is one company's metadata: md with the records pending applied
// over it in order. A record is merged when the profile is read (fold),
// not when it is applied, so a record nobody reads is never decoded.
type profile struct {
	md      map[string]any // nil: empty
	pending []*company     // into the records of Server.applied
	first   [1]*company    // pending's room for one record, without an allocation
}

// maxPending bounds the records a profile keeps unmerged, so a company
// updated many times is merged a few records at a time.
const maxPending = 16

// profileSlab is how many profiles are allocated at once: a catch-up makes
// one per row, and a few large objects cost the collector less than many
// small ones.
const profileSlab = 1024

// applyLocked applies cos, in order: each is merged into its profile
// (keys not sent keep their value, a null clears the key) when profiles
// are next read (indexLocked). cos is kept as the applied log.
func (s *Server) applyLocked(kind string, cos []company) {
	s.applied = append(s.applied, appliedRun{kind: kind, records: cos})
	s.appliedCount += len(cos)
	s.accepted += len(cos)
	if len(cos) > 0 {
		s.lastApplied = time.Now()
	}
	if s.opts.Logf != nil {
		for _, co := range cos {
			md := co.meta()
			if md == nil {
				md = map[string]any{}
			}
			sent, _ := json.Marshal(md)
			s.logLines = append(s.logLines, fmt.Sprintf("%s company_id=%s metadata=%s", kind, co.id, sent))
		}
	}
}

// indexLocked adds the records applied since profiles were last read to
// their profiles' pending records, in the order applied: the profiles are
// then as if each record had been merged when applied. Deferred to a read
// so that a catch-up's hundreds of thousands of records cost no map work
// while they arrive, only when (and if) a test looks.
func (s *Server) indexLocked() {
	for _, run := range s.applied[s.indexed:] {
		for i := range run.records {
			co := &run.records[i]
			p := s.companies[co.id]
			if p == nil {
				if len(s.profiles) == 0 {
					s.profiles = make([]profile, profileSlab)
				}
				p = &s.profiles[0]
				s.profiles = s.profiles[1:]
				p.pending = p.first[:0]
				s.companies[co.id] = p
			}
			p.pending = append(p.pending, co)
			if len(p.pending) > maxPending {
				p.fold()
			}
		}
	}
	s.indexed = len(s.applied)
}

// fold merges p's pending records into its metadata, which it returns.
func (p *profile) fold() map[string]any {
	if p.md == nil {
		p.md = map[string]any{}
	}
	// A key sent as null holds null, as Userpilot shows a cleared value:
	// a profile says what was sent, and a demo can show a value cleared.
	for _, co := range p.pending {
		for k, v := range co.meta() {
			p.md[k] = v
		}
	}
	clear(p.pending) // let go of records only the applied log needs
	p.pending = p.pending[:0]
	return p.md
}

// serveDelete schedules companies for deletion, at most once every 2 seconds.
func (s *Server) serveDelete(ex *exchange) {
	if e := s.authorize(ex, http.MethodDelete); e != nil {
		ex.fail(e)
		return
	}
	if e := checkHeaders(ex.r, false); e != nil {
		ex.fail(e)
		return
	}
	body, e := readBody(ex)
	if e != nil {
		ex.fail(e)
		return
	}
	ids, e := decodeIDList(body, "companies", "company")
	ex.rec.CompanyIDs = ids
	if e != nil {
		ex.fail(e)
		return
	}
	s.mu.Lock()
	if e := s.deleteSpacingLocked(time.Now()); e != nil {
		s.mu.Unlock()
		ex.fail(e)
		return
	}
	for _, id := range ids {
		if status, ok := s.deleteRejects[id]; ok {
			s.mu.Unlock()
			ex.fail(rejection(status, id))
			return
		}
	}
	s.deleted = append(s.deleted, ids...)
	s.mu.Unlock()
	ex.reply(http.StatusAccepted, map[string]string{"message": fmt.Sprintf("%d companies scheduled for deletion", len(ids))})
}

// deleteSpacingLocked counts a delete request arriving at now against the
// account's one every 2 seconds (companies' and users' together): a 429
// when it comes too soon, which still counts.
func (s *Server) deleteSpacingLocked(now time.Time) *apiError {
	if since := now.Sub(s.lastDelete); !s.lastDelete.IsZero() && since < deleteInterval {
		return s.rateLimited(deleteInterval - since)
	}
	s.lastDelete = now
	return nil
}

// readBody reads the whole body, refusing more than the published 50 MB.
func readBody(ex *exchange) ([]byte, *apiError) {
	var buf bytes.Buffer
	if n := ex.r.ContentLength; n > 0 {
		// Read into one buffer of the announced size, not one doubled
		// from 512 bytes (a bulk body is megabytes); a false length is
		// still found out by the read.
		buf.Grow(int(min(n, maxBodyBytes)) + bytes.MinRead)
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(ex.w, ex.r.Body, maxBodyBytes))
	data := buf.Bytes()
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return nil, &apiError{status: http.StatusRequestEntityTooLarge, code: "payload_too_large",
			message: "body larger than 50 MB: split it"}
	case err != nil:
		return nil, invalid("cannot read body: " + err.Error())
	}
	return data, nil
}

func copyMetadata(md map[string]any) map[string]any {
	out := make(map[string]any, len(md))
	for k, v := range md {
		out[k] = v // primitives only: nothing deeper to copy
	}
	return out
}
