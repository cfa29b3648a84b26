package userpilot

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// MaxBulkRecords is the most companies (or users) Userpilot takes in one
// JSON bulk request.
const MaxBulkRecords = 10_000

// Bulk job statuses, as Userpilot reports them.
const (
	JobQueued         = "queued"
	JobValidating     = "validating"
	JobProcessing     = "processing"
	JobPendingRefresh = "pending_refresh"
	JobCompleted      = "completed" // the records are applied
	JobFailed         = "failed"    // none of the records can be assumed applied
)

var (
	// ErrJobRunning means Userpilot is still processing an earlier bulk job
	// (one at a time per account): wait for it, then submit again.
	ErrJobRunning = errors.New("a Userpilot bulk job is already running (HTTP 409): wait for it to finish, then submit again")
	// ErrTooLarge means a bulk request has too many records or bytes
	// (HTTP 413, or more than MaxBulkRecords): split it and resend.
	ErrTooLarge = errors.New("bulk request too large for Userpilot (at most 10,000 records and 50 MB): split it and resend")
)

// Job is a Userpilot background job. Records of a bulk job are applied only
// once its Status is JobCompleted.
//
// Only ID and Status are certain: the other fields are what the status
// answer published by Userpilot carries, zero (or -1 for CompletedRows)
// when it does not. pgpilot learns the bulk path's speed from them where
// they are given, and from its own clock where not.
type Job struct {
	ID     string
	Status string
	// TotalRows and CompletedRows are the job's records and how many are
	// processed; CompletedRows is -1 when not reported.
	TotalRows, CompletedRows int
	// Elapsed is the job's elapsed_time; StartTime and EndTime its
	// start_time and end_time (Userpilot's clock).
	Elapsed            time.Duration
	StartTime, EndTime time.Time
}

// jobAnswer reads the fields of both published job shapes. Only job_id and
// status are depended on; the rest is read leniently (a number or a string
// of one, an RFC 3339 time) and ignored when it is not what was expected.
type jobAnswer struct {
	JobID         string          `json:"job_id"`
	Status        string          `json:"status"`
	TotalRows     json.RawMessage `json:"total_rows"`
	CompletedRows json.RawMessage `json:"completed_rows"`
	ElapsedTime   json.RawMessage `json:"elapsed_time"`
	StartTime     json.RawMessage `json:"start_time"`
	EndTime       json.RawMessage `json:"end_time"`
}

// number reads a JSON number, or a string holding one; ok is false for
// anything else (absent, null, not a number).
func number(raw json.RawMessage) (float64, bool) {
	if len(raw) == 0 {
		return 0, false
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return 0, false
	}
	switch v := v.(type) {
	case float64:
		return v, !math.IsNaN(v) && !math.IsInf(v, 0)
	case string:
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		return f, err == nil && !math.IsNaN(f) && !math.IsInf(f, 0)
	}
	return 0, false
}

// timestamp reads an RFC 3339 time; the zero time for anything else.
func timestamp(raw json.RawMessage) time.Time {
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(s))
	if err != nil {
		return time.Time{}
	}
	return t
}

// BulkBody is a bulk identify request's body, {"companies":[…]} or
// {"users":[…]}, written record by record: each record's JSON is written
// once, and the same bytes are the request and the state's record of the
// job. The first record decides which: a body holds companies (Add…) or
// users (AddUser…), never both (Userpilot takes them at two endpoints).
// The zero value is an empty body.
type BulkBody struct {
	json  []byte // without the closing "]}"
	n     int
	empty int // the first record without an id, or -1 (n > 0)
	// users: the body holds users ({"users":[…]}, each with a flat
	// company_id), set by the first record.
	users bool
}

// Add appends co.
func (b *BulkBody) Add(co Company) { b.AddWithin(co, 0) }

// AddWithin appends co if the body stays within limit bytes (0: no limit)
// and reports whether it did; if not, the body is as it was. The keys are
// sorted, as AppendJSON writes them.
func (b *BulkBody) AddWithin(co Company, limit int) bool {
	return b.AddSeqWithin(co.CompanyID, co.Metadata.sorted, limit)
}

// AddSeqWithin is AddWithin for the company id whose metadata md yields
// (each key once): a caller that keeps metadata in a form of its own
// (delivery packs it) need not build a map of it for the body. The keys are
// written in the order md yields them: a JSON object's order means nothing
// to Userpilot, and sorting them cost as much as the map did.
func (b *BulkBody) AddSeqWithin(id string, md iter.Seq2[string, json.RawMessage], limit int) bool {
	mark := b.start(id)
	// (md is called, not ranged over: a range loop's own state would be
	// one more allocation per company.)
	md(b.addKey)
	return b.end(id, mark, limit)
}

// MetadataKey is how key k starts a member of a metadata object (its JSON
// string and a colon), for AddMembersWithin.
func MetadataKey(k string) []byte { return append(appendString(nil, k), ':') }

// AddMembersWithin is AddSeqWithin for metadata its caller wrote already:
// members are the metadata object's members, each a MetadataKey and the
// value's JSON, separated by commas (none: no metadata). Delivery keeps
// every key encoded once, so a company's metadata costs a copy here, not
// a call and an encoding of each key (a third of sizing a job).
func (b *BulkBody) AddMembersWithin(id string, members []byte, limit int) bool {
	mark := b.start(id)
	b.json = append(b.json, members...)
	return b.end(id, mark, limit)
}

// AppendMembersWithin is AddMembersWithin with the members written by
// appendMembers straight into the body (it appends them to its argument
// and returns the result), rather than into a buffer first and copied.
func (b *BulkBody) AppendMembersWithin(id string, appendMembers func(dst []byte) []byte, limit int) bool {
	mark := b.start(id)
	b.json = appendMembers(b.json)
	return b.end(id, mark, limit)
}

// start writes a company's beginning, up to its metadata's members, and
// returns where it began.
func (b *BulkBody) start(id string) int {
	mark := len(b.json)
	switch {
	case b.n == 0:
		b.json = append(b.json, `{"companies":[`...)
		b.empty, b.users = -1, false
	case b.users:
		panic("userpilot: a company added to a bulk body of users")
	default:
		b.json = append(b.json, ',')
	}
	b.json = appendCompanyStart(b.json, id)
	return mark
}

// AddUser appends u.
func (b *BulkBody) AddUser(u User) { b.AddUserWithin(u, 0) }

// AddUserWithin appends u if the body stays within limit bytes (0: no
// limit) and reports whether it did; if not, the body is as it was. The
// user's company is the record's flat company_id, left out when u has
// none (Userpilot's bulk form takes no null there).
func (b *BulkBody) AddUserWithin(u User, limit int) bool {
	mark := b.startUser(u.UserID, u.CompanyID)
	u.Metadata.sorted(b.addKey)
	return b.end(u.UserID, mark, limit)
}

// AddUserMembersWithin is AddMembersWithin for a user: id and company
// (""; none) and the metadata object's members, written by the caller.
func (b *BulkBody) AddUserMembersWithin(id, company string, members []byte, limit int) bool {
	mark := b.startUser(id, company)
	b.json = append(b.json, members...)
	return b.end(id, mark, limit)
}

// startUser is start for a user: {"user_id":…,"company_id":…,"metadata":{.
func (b *BulkBody) startUser(id, company string) int {
	mark := len(b.json)
	switch {
	case b.n == 0:
		b.json = append(b.json, `{"users":[`...)
		b.empty, b.users = -1, true
	case !b.users:
		panic("userpilot: a user added to a bulk body of companies")
	default:
		b.json = append(b.json, ',')
	}
	b.json = append(b.json, `{"user_id":`...)
	b.json = appendString(b.json, id)
	if company != "" {
		b.json = append(b.json, `,"company_id":`...)
		b.json = appendString(b.json, company)
	}
	b.json = append(b.json, `,"metadata":{`...)
	return mark
}

// Users reports whether the body holds users (else companies, or nothing).
func (b *BulkBody) Users() bool { return b.n > 0 && b.users }

// end closes the company start began at mark, or takes it out again when
// the body would be larger than limit (0: none); it reports which.
func (b *BulkBody) end(id string, mark, limit int) bool {
	b.json = appendCompanyEnd(b.json)
	if limit > 0 && len(b.json)+len("]}") > limit {
		b.json = b.json[:mark]
		return false
	}
	if id == "" && b.empty < 0 {
		b.empty = b.n
	}
	b.n++
	return true
}

func (b *BulkBody) addKey(k string, v json.RawMessage) bool {
	b.json = appendKey(b.json, k, v)
	return true
}

// Grow makes room for n more bytes, so that a body whose size can be
// guessed is not copied over and over as it grows.
func (b *BulkBody) Grow(n int) { b.json = slices.Grow(b.json, n) }

// Reuse empties the body, to be written in room's space (its bytes are
// written over): the room of a body that was sent (Release).
func (b *BulkBody) Reuse(room []byte) { *b = BulkBody{json: room[:0]} }

// Release empties the body and returns its room, for Reuse.
func (b *BulkBody) Release() []byte {
	room := b.json
	*b = BulkBody{}
	return room
}

// Forget lets go of the body's bytes and keeps what it is (how many
// records, of which kind): a body submitted is on record beside the store,
// and its job runs at Userpilot for seconds or minutes without needing it
// unless it fails and is submitted again (Recall).
func (b *BulkBody) Forget() { b.json = nil }

// Forgotten reports whether the body's bytes were let go (Forget).
func (b *BulkBody) Forgotten() bool { return b.n > 0 && b.json == nil }

// Recall gives a forgotten body its bytes back, as JSON returned them.
func (b *BulkBody) Recall(data []byte) error {
	if !bytes.HasSuffix(data, []byte("]}")) {
		return fmt.Errorf("recall a bulk body of %d records: %d bytes that do not end one", b.n, len(data))
	}
	b.json = data[: len(data)-2 : len(data)]
	return nil
}

// Size is the body's length in bytes.
func (b *BulkBody) Size() int { return max(len(b.json), len(`{"companies":[`)) + len("]}") }

// Len is how many records (companies or users) it holds.
func (b *BulkBody) Len() int { return b.n }

// JSON is the body. It ends the array in room the body has spare (Grow
// leaves some), so it is not copied: add nothing after it.
func (b *BulkBody) JSON() []byte {
	if b.n == 0 {
		return []byte(`{"companies":[]}`)
	}
	return append(b.json, "]}"...)
}

// AppendCompanies appends the body's member, "companies":[…] (or
// "users":[…] for a body of users), to dst.
func (b *BulkBody) AppendCompanies(dst []byte) []byte {
	if b.n == 0 {
		return append(dst, `"companies":[]`...)
	}
	return append(append(dst, b.json[1:]...), ']')
}

// BulkIdentifyCompanies submits cos as one bulk job and returns it as
// Userpilot accepted it (usually queued). It fails with ErrTooLarge for more
// than MaxBulkRecords records or a 413, ErrJobRunning for a 409, and
// *RejectedError for another 4xx; 429 and 5xx are retried like
// IdentifyCompany. Bulk has its own budget with Userpilot: it does not wait
// on the real-time rate limiter, only on a 429 pause.
//
// A submission answered 5xx may still have created a job; its retry then
// meets ErrJobRunning, and the first job's id is unknown. The records of
// such a job are applied when it completes, so waiting and submitting the
// same records again is safe (identify merges).
func (c *Client) BulkIdentifyCompanies(ctx context.Context, cos []Company) (Job, error) {
	var body BulkBody
	for _, co := range cos {
		body.Add(co)
	}
	return c.BulkIdentify(ctx, body)
}

// BulkIdentifyUsers is BulkIdentifyCompanies for users: one job at
// POST /v1/users/bulk_identify, each user with its company as a flat
// company_id. Users' and companies' jobs share Userpilot's one job at a
// time: a job of either kind running makes the other ErrJobRunning.
func (c *Client) BulkIdentifyUsers(ctx context.Context, users []User) (Job, error) {
	var body BulkBody
	for _, u := range users {
		body.AddUser(u)
	}
	return c.BulkIdentify(ctx, body)
}

// BulkIdentify is BulkIdentifyCompanies (or BulkIdentifyUsers, for a body
// of users) for a body already written: the one delivery wrote once, from
// which the job's record was made too.
func (c *Client) BulkIdentify(ctx context.Context, body BulkBody) (Job, error) {
	what, idKey, path := "companies", "company_id", "/v1/companies/bulk_identify"
	if body.Users() {
		what, idKey, path = "users", "user_id", "/v1/users/bulk_identify"
	}
	op := fmt.Sprintf("bulk identify %d %s", body.n, what)
	if body.n == 0 {
		return Job{}, fmt.Errorf("%s: nothing to send", op)
	}
	if body.n > MaxBulkRecords {
		return Job{}, fmt.Errorf("%s: %w", op, ErrTooLarge)
	}
	if body.empty >= 0 {
		return Job{}, fmt.Errorf("%s: record %d: %w", op, body.empty, &RejectedError{Body: idKey + " is empty"})
	}
	resp, err := c.do(ctx, call{
		op:               op,
		logAttrs:         []any{what, body.n},
		method:           http.MethodPost,
		path:             path,
		body:             body.JSON(),
		conflictIsAnswer: true,
	})
	if err != nil {
		return Job{}, err
	}
	switch {
	case resp.status == http.StatusConflict:
		return Job{}, fmt.Errorf("%s: %w", op, ErrJobRunning)
	case resp.status == http.StatusRequestEntityTooLarge:
		return Job{}, fmt.Errorf("%s: %w", op, ErrTooLarge)
	case !resp.ok():
		return Job{}, fmt.Errorf("%s: %w", op, rejected(resp))
	}
	job, err := decodeJob(resp)
	if err != nil {
		return Job{}, fmt.Errorf("%s: %w", op, err)
	}
	if job.ID == "" {
		// Without an id the job cannot be followed; resubmitting would
		// only meet a 409 while it runs.
		return Job{}, fmt.Errorf("%s: Userpilot answered HTTP %d without a job_id", op, resp.status)
	}
	return job, nil
}

// BackgroundJob returns the current state of the background job id. Errors
// are retried like IdentifyCompany; an unknown id is a *RejectedError (404).
func (c *Client) BackgroundJob(ctx context.Context, id string) (Job, error) {
	op := fmt.Sprintf("get background job %q", id)
	if id == "" {
		return Job{}, fmt.Errorf("%s: job id is empty", op)
	}
	resp, err := c.do(ctx, call{
		op:       op,
		logAttrs: []any{"job_id", id},
		method:   http.MethodGet,
		// Ids look like "bulk:jobs:NX-1:6f1c…": one path segment, escaped.
		path: "/v1/background_jobs/" + url.PathEscape(id),
	})
	if err != nil {
		return Job{}, err
	}
	if !resp.ok() {
		return Job{}, fmt.Errorf("%s: %w", op, rejected(resp))
	}
	job, err := decodeJob(resp)
	if err != nil {
		return Job{}, fmt.Errorf("%s: %w", op, err)
	}
	if job.ID == "" {
		job.ID = id
	}
	return job, nil
}

// decodeJob reads job_id and status from a 2xx answer, ignoring the rest
// (Userpilot publishes two shapes that share only these).
func decodeJob(resp response) (Job, error) {
	var a jobAnswer
	if err := json.Unmarshal(resp.body, &a); err != nil {
		return Job{}, fmt.Errorf("read job from Userpilot's answer (HTTP %d): %w", resp.status, err)
	}
	if a.Status == "" {
		return Job{}, fmt.Errorf("Userpilot answered HTTP %d without a job status", resp.status)
	}
	job := Job{ID: a.JobID, Status: a.Status, CompletedRows: -1,
		StartTime: timestamp(a.StartTime), EndTime: timestamp(a.EndTime)}
	if n, ok := number(a.TotalRows); ok && n >= 0 {
		job.TotalRows = int(n)
	}
	if n, ok := number(a.CompletedRows); ok && n >= 0 {
		job.CompletedRows = int(n)
	}
	if secs, ok := number(a.ElapsedTime); ok && secs > 0 && secs < 1e9 {
		job.Elapsed = time.Duration(secs * float64(time.Second))
	}
	return job, nil
}
