package userpilottest

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"time"
)

// Users, as Userpilot publishes them: a user belongs to one company at a
// time (identified with another, it moves), has metadata merged as a
// company's is, and shares the account's limits with companies: the
// real-time budget, the one bulk job at a time, the one delete request
// every 2 seconds.
const (
	userIdentifyPath = "/v1/identify"
	userBulkPath     = "/v1/users/bulk_identify"
	userDeletePath   = "/v1/users"
)

// User is a user as the stand-in holds it.
type User struct {
	// Company is the id of the company the user belongs to, "" for none.
	Company string
	// Metadata is every key sent, merged (a key cleared with null holds
	// nil). Numbers are json.Number, as sent.
	Metadata map[string]any
}

// AppliedUser is one user record as it was applied, as Applied is for
// companies: Company is the company it was sent with ("" for none), and
// Metadata exactly as sent.
type AppliedUser struct {
	Kind     string // "identify" or "bulk identify"
	UserID   string
	Company  string
	Metadata map[string]any
}

// userRecord is one validated identify-user record.
type userRecord struct {
	id       string
	company  string         // "": sent without a company
	props    map[string]any // company properties sent beside the id (real time only)
	metadata map[string]any
	// raw, if set, is the metadata object as sent, checked by
	// checkUserBulk and not decoded yet (metadata is nil), as company.raw.
	raw string
}

// meta is the record's metadata as sent: nil when it had none; decoded
// afresh from raw (the caller owns it), else shared.
func (u userRecord) meta() map[string]any {
	if u.raw != "" {
		return decodeRaw(u.raw)
	}
	return u.metadata
}

// userProfile is one user: its company, and its metadata with the records
// pending merged over it when it is read (as a company's profile).
type userProfile struct {
	company string
	md      map[string]any
	pending []*userRecord
}

func (p *userProfile) fold() map[string]any {
	if p.md == nil {
		p.md = map[string]any{}
	}
	for _, r := range p.pending {
		maps.Copy(p.md, r.meta())
	}
	clear(p.pending)
	p.pending = p.pending[:0]
	return p.md
}

// appliedUserRun is user records applied one after the other, of one
// kind (a bulk job's own slice).
type appliedUserRun struct {
	kind    string
	records []userRecord
}

// Users returns a deep copy of every user: user_id → its company and
// metadata.
func (s *Server) Users() map[string]User {
	s.lock()
	defer s.unlock()
	out := make(map[string]User, len(s.users))
	for id, u := range s.users {
		out[id] = User{Company: u.company, Metadata: copyMetadata(u.fold())}
	}
	return out
}

// User returns a copy of one user and whether it exists.
func (s *Server) User(id string) (User, bool) {
	s.lock()
	defer s.unlock()
	u, ok := s.users[id]
	if !ok {
		return User{}, false
	}
	return User{Company: u.company, Metadata: copyMetadata(u.fold())}, true
}

// AppliedUsers returns every user record applied, in the order applied.
func (s *Server) AppliedUsers() []AppliedUser {
	s.lock()
	defer s.unlock()
	out := make([]AppliedUser, 0, s.appliedUserCount)
	for _, run := range s.appliedUsers {
		for _, r := range run.records {
			md := r.meta()
			if r.raw == "" && md != nil {
				md = copyMetadata(md) // shared with the record; else decoded afresh
			}
			out = append(out, AppliedUser{Kind: run.kind, UserID: r.id, Company: r.company, Metadata: md})
		}
	}
	return out
}

// AcceptedUsers counts user records applied: real-time ones plus the
// records of completed bulk jobs of users.
func (s *Server) AcceptedUsers() int {
	s.lock()
	defer s.unlock()
	return s.appliedUserCount
}

// IdentifyUserRequests counts real-time identify-user requests received,
// whatever they were answered.
func (s *Server) IdentifyUserRequests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.identifyUserRequests
}

// DeletedUsers returns the user ids scheduled for deletion, in order.
// Users stay: Userpilot deletes in a daily batch.
func (s *Server) DeletedUsers() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.deletedUsers...)
}

// RejectUser makes every identify (real-time or bulk) naming user id
// answer status with the documented error body; its records are never
// applied. Status 0 accepts the user again.
func (s *Server) RejectUser(id string, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if status == 0 {
		delete(s.userRejects, id)
		return
	}
	s.userRejects[id] = status
}

// RejectUserDeletion is RejectDeletion for a user id in DELETE /v1/users.
func (s *Server) RejectUserDeletion(id string, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.userDeleteRejects[id] = status
}

// serveUserIdentify applies one real-time identify-user: the same key,
// budget, faults and headers as a company's.
func (s *Server) serveUserIdentify(ex *exchange) {
	s.mu.Lock()
	s.identifyUserRequests++
	s.mu.Unlock()
	if e := s.authorize(ex, http.MethodPost); e != nil {
		ex.fail(e)
		return
	}
	if s.limiter != nil {
		now := time.Now()
		res := s.limiter.ReserveN(now, 1)
		if wait := res.DelayFrom(now); wait > 0 {
			res.CancelAt(now)
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
	s.serveWithFault(ex, f, func() (int, any, *apiError) {
		if e := checkHeaders(ex.r, true); e != nil {
			return 0, nil, e
		}
		u, e := decodeUser(body)
		if u.id != "" {
			ex.rec.UserIDs = []string{u.id}
		}
		if e != nil {
			return 0, nil, e
		}
		s.lock()
		defer s.unlock()
		if status, ok := s.userRejects[u.id]; ok {
			return 0, nil, userRejection(status, u.id)
		}
		s.applyUsersLocked("identify", []userRecord{u})
		return cmp.Or(s.opts.SuccessStatus, http.StatusAccepted), struct{}{}, nil
	})
}

// applyUsersLocked applies us in order: each user's metadata is merged
// (a null clears a key), and a user sent with a company moves to it; one
// sent without keeps the company it has. A company named by a user that
// Userpilot does not have yet is created with its id alone (and the
// properties sent beside the id), as Userpilot does.
func (s *Server) applyUsersLocked(kind string, us []userRecord) {
	if len(us) > 0 {
		s.indexLocked() // companies a user creates come after what was applied before
	}
	s.appliedUsers = append(s.appliedUsers, appliedUserRun{kind: kind, records: us})
	s.appliedUserCount += len(us)
	if len(us) > 0 {
		s.lastApplied = time.Now()
	}
	for i := range us {
		r := &us[i]
		u := s.users[r.id]
		if u == nil {
			u = &userProfile{}
			s.users[r.id] = u
		}
		if r.raw != "" || len(r.metadata) > 0 {
			u.pending = append(u.pending, r)
			if len(u.pending) > maxPending {
				u.fold()
			}
		}
		if r.company != "" {
			u.company = r.company
			p := s.companies[r.company]
			if p == nil {
				p = &profile{}
				p.pending = p.first[:0]
				s.companies[r.company] = p
			}
			if len(r.props) > 0 {
				maps.Copy(p.fold(), r.props)
			}
		}
		if s.opts.Logf != nil {
			md := r.meta()
			if md == nil {
				md = map[string]any{}
			}
			sent, _ := json.Marshal(md)
			s.logLines = append(s.logLines, fmt.Sprintf("%s user_id=%s company=%s metadata=%s", kind, r.id, r.company, sent))
		}
	}
}

// serveUserBulk submits a bulk job of users: the account's one job, shared
// with companies' (409 while a job of either runs).
func (s *Server) serveUserBulk(ex *exchange) {
	if e := s.authorize(ex, http.MethodPost); e != nil {
		ex.fail(e)
		return
	}
	body, e := readBody(ex)
	if e != nil {
		ex.fail(e)
		return
	}
	s.mu.Lock()
	f := s.faults.nextBulk()
	s.mu.Unlock()
	s.serveWithFault(ex, f, func() (int, any, *apiError) {
		if e := checkHeaders(ex.r, true); e != nil {
			return 0, nil, e
		}
		us, e := receiveUserBulk(body)
		for _, u := range us {
			ex.rec.UserIDs = append(ex.rec.UserIDs, u.id)
		}
		if e != nil {
			return 0, nil, e
		}
		s.lock()
		defer s.unlock()
		for _, u := range us {
			if status, ok := s.userRejects[u.id]; ok {
				return 0, nil, userRejection(status, u.id)
			}
		}
		return s.queueJobLocked(&job{users: us})
	})
}

// serveUserDelete schedules users for deletion, within the one delete
// request every 2 seconds shared with companies.
func (s *Server) serveUserDelete(ex *exchange) {
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
	ids, e := decodeIDList(body, "users", "user")
	ex.rec.UserIDs = ids
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
		if status, ok := s.userDeleteRejects[id]; ok {
			s.mu.Unlock()
			ex.fail(userRejection(status, id))
			return
		}
	}
	s.deletedUsers = append(s.deletedUsers, ids...)
	s.mu.Unlock()
	ex.reply(http.StatusAccepted, map[string]string{"message": fmt.Sprintf("%d users scheduled for deletion", len(ids))})
}

func userRejection(status int, id string) *apiError {
	return &apiError{status: status, code: "invalid_user", details: map[string]string{"user_id": id},
		message: fmt.Sprintf("user %q was rejected (HTTP %d %s)", id, status, http.StatusText(status))}
}

// decodeUser validates a real-time identify-user body:
// {"user_id": "…", "metadata": {…}, "company": {"id": "…", …}}. The
// company's id is id (the guide's, the SDK's) or company_id (the OpenAPI
// document's), one of them; the other keys in company are the company's
// properties. A company of null is refused: a user without a company is
// sent without the key. The id is returned even when the rest is invalid,
// for the request log.
func decodeUser(data []byte) (userRecord, *apiError) {
	fields, e := decodeObject(data, "body", "user_id", "metadata", "company")
	if e != nil {
		return userRecord{}, e
	}
	u, e := userID(fields["user_id"], "body")
	if e != nil {
		return u, e
	}
	if u.metadata, e = userMetadata(fields, "body"); e != nil {
		return u, e
	}
	raw, ok := fields["company"]
	if !ok {
		return u, nil
	}
	v, err := decodeValue(raw)
	company, isObject := v.(map[string]any)
	switch {
	case err == nil && v == nil:
		return u, invalid("body: company must be an object with the company's id; to identify a user without a company, leave company out (null is not documented)")
	case err != nil || !isObject:
		return u, invalid(fmt.Sprintf(`body: company must be an object {"id": "…"}, got %s`, raw))
	}
	id, hasID := company["id"]
	cid, hasCID := company["company_id"]
	switch {
	case hasID && hasCID:
		return u, invalid("body: company has both id and company_id: send one (id, as Userpilot's guide writes it)")
	case hasCID:
		id = cid
	case !hasID:
		return u, invalid(`body: company has no id: send {"id": "…"} (or company_id, as the OpenAPI document writes it)`)
	}
	s, isString := id.(string)
	if !isString || s == "" {
		return u, invalid(fmt.Sprintf("body: the company's id must be a non-empty JSON string, got %v", id))
	}
	u.company = s
	delete(company, "id")
	delete(company, "company_id")
	for _, k := range slices.Sorted(maps.Keys(company)) {
		if !primitive(company[k]) {
			return u, &apiError{status: http.StatusBadRequest, code: "invalid_metadata",
				message: fmt.Sprintf("body: company property %q must be a string, number, boolean or null", k), details: map[string]string{"key": k}}
		}
	}
	if len(company) > 0 {
		u.props = company
	}
	return u, nil
}

// receiveUserBulk is decodeUserBulk for a job the server keeps: a body
// the fast path takes keeps each record's metadata as sent.
func receiveUserBulk(data []byte) ([]userRecord, *apiError) {
	if us, ok := checkUserBulk(data); ok {
		return us, nil
	}
	return decodeUserBulk(data)
}

// decodeUserBulk validates a bulk identify body of users:
// {"users": [{"user_id": "…", "company_id": "…", "metadata": {…}}, …]},
// company_id a flat string, optional (null refused: leave it out).
func decodeUserBulk(data []byte) ([]userRecord, *apiError) {
	fields, e := decodeObject(data, "body", "users")
	if e != nil {
		return nil, e
	}
	var items []json.RawMessage
	if err := json.Unmarshal(fields["users"], &items); err != nil || items == nil {
		return nil, invalid("body: users must be a JSON array of user records")
	}
	if len(items) == 0 {
		return nil, invalid("body: users must not be empty")
	}
	if len(items) > maxBulkRecords {
		return nil, &apiError{status: http.StatusRequestEntityTooLarge, code: "payload_too_large",
			message: fmt.Sprintf("%d users in one request: at most %d, split it", len(items), maxBulkRecords)}
	}
	us := make([]userRecord, 0, len(items))
	for i, item := range items {
		what := fmt.Sprintf("users[%d]", i)
		fields, e := decodeObject(item, what, "user_id", "company_id", "metadata")
		if e != nil {
			return us, e
		}
		u, e := userID(fields["user_id"], what)
		if e == nil {
			u.metadata, e = userMetadata(fields, what)
		}
		if raw, ok := fields["company_id"]; ok && e == nil {
			v, err := decodeValue(raw)
			id, isString := v.(string)
			switch {
			case err == nil && v == nil:
				e = invalid(what + ": company_id is null: leave it out for a user without a company")
			case err != nil || !isString || id == "":
				e = invalid(fmt.Sprintf("%s: company_id must be a non-empty JSON string (flat, not an object), got %s", what, raw))
			default:
				u.company = id
			}
		}
		if u.id != "" {
			us = append(us, u)
		}
		if e != nil {
			e.details = map[string]any{"index": i, "detail": e.details}
			return us, e
		}
	}
	return us, nil
}

// userID reads a record's user_id: a non-empty JSON string.
func userID(raw json.RawMessage, what string) (userRecord, *apiError) {
	if raw == nil {
		return userRecord{}, invalid(what + ": user_id is required")
	}
	v, err := decodeValue(raw)
	id, isString := v.(string)
	if err != nil || !isString || id == "" {
		return userRecord{}, invalid(fmt.Sprintf("%s: user_id must be a non-empty JSON string, got %s", what, raw))
	}
	return userRecord{id: id}, nil
}

// userMetadata reads a record's metadata: primitives, with Userpilot's
// reserved user keys as it documents them: name and email strings,
// created_at (alias signed_up_at, not both) an ISO 8601 date, and
// first_seen_at and last_seen_at Userpilot's own, never sent.
func userMetadata(fields map[string]json.RawMessage, what string) (map[string]any, *apiError) {
	raw, ok := fields["metadata"]
	if !ok {
		return nil, nil
	}
	v, err := decodeValue(raw)
	md, isObject := v.(map[string]any)
	if err != nil || !isObject {
		return nil, invalid(fmt.Sprintf("%s: metadata must be a JSON object, got %s", what, raw))
	}
	bad := func(k, rule string) *apiError {
		return &apiError{status: http.StatusBadRequest, code: "invalid_metadata",
			message: fmt.Sprintf("%s: metadata %q %s", what, k, rule), details: map[string]string{"key": k}}
	}
	for _, k := range slices.Sorted(maps.Keys(md)) {
		val := md[k]
		if !primitive(val) {
			return nil, bad(k, "must be a string, number, boolean or null")
		}
		s, isString := val.(string)
		switch k {
		case "name", "email":
			if val != nil && !isString {
				return nil, bad(k, "is a reserved user property: a string (or null)")
			}
		case "created_at", "signed_up_at":
			if val != nil && (!isString || !isoDate(s)) {
				return nil, bad(k, "is a reserved user property: an ISO 8601 date string, such as 2024-03-01T09:30:00Z")
			}
		case "first_seen_at", "last_seen_at":
			return nil, bad(k, "is Userpilot's own: it is not set by identify")
		}
	}
	if _, a := md["created_at"]; a {
		if _, b := md["signed_up_at"]; b {
			return nil, bad("signed_up_at", "is an alias of created_at: send one of them")
		}
	}
	return md, nil
}

func primitive(v any) bool {
	switch v.(type) {
	case nil, string, bool, json.Number:
		return true
	}
	return false
}

// isoDate reports whether s is an ISO 8601 date or date-time (RFC 3339,
// or a date alone).
func isoDate(s string) bool {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02"} {
		if _, err := time.Parse(layout, s); err == nil {
			return true
		}
	}
	return false
}

// decodeIDList validates a delete body: {"<field>": ["id", …]}.
func decodeIDList(data []byte, field, noun string) ([]string, *apiError) {
	fields, e := decodeObject(data, "body", field)
	if e != nil {
		return nil, e
	}
	v, err := decodeValue(fields[field])
	items, ok := v.([]any)
	if err != nil || !ok || len(items) == 0 {
		return nil, invalid(fmt.Sprintf("body: %s must be a non-empty JSON array of %s ids", field, noun))
	}
	ids := make([]string, 0, len(items))
	for i, item := range items {
		id, ok := item.(string)
		if !ok || id == "" {
			return ids, invalid(fmt.Sprintf("body: %s[%d] must be a non-empty JSON string", field, i))
		}
		ids = append(ids, id)
	}
	return ids, nil
}
