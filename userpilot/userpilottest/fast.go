package userpilottest

import (
	"encoding/json"
	"unicode/utf8"
)

// A fast path for the bodies a client like pgpilot's writes: compact JSON,
// keys without escapes, primitive values. The strict decoders (decodeBulk,
// decodeCompany) read a body in several passes of encoding/json, which
// made the stand-in the slowest part of a catch-up on a shared machine,
// and so the measure of pgpilot's own speed. fastBulk and fastCompany read
// such a body in one pass and give up (ok false) on anything else — every
// error, every unusual form — and the strict decoder then reads it and
// answers exactly as before. They never accept what the strict decoders
// refuse, and give what those give for what they accept
// (FuzzFastDecodeMatchesStrict checks both).
//
// checkBulk and checkCompany are the same reader without building
// anything: they accept exactly what fastBulk and fastCompany accept, and
// keep each record's metadata as the bytes sent (company.raw), which
// company.meta decodes with that reader when a test asks for it. Building
// a map per record the stand-in only stores cost more CPU, and the
// collector's scanning of them more still, than everything else it does
// (FuzzCheckMatchesFast checks the two agree).

// fastBulk reads {"companies":[record,…]}.
func fastBulk(data []byte) ([]company, bool) { return readBulk(data, true) }

// checkBulk is fastBulk keeping metadata undecoded.
func checkBulk(data []byte) ([]company, bool) { return readBulk(data, false) }

// fastCompany reads one identify record, the whole of data.
func fastCompany(data []byte) (company, bool) { return readCompany(data, true) }

// checkCompany is fastCompany keeping metadata undecoded.
func checkCompany(data []byte) (company, bool) { return readCompany(data, false) }

func readBulk(data []byte, build bool) ([]company, bool) {
	r := reader{b: string(data), build: build}
	if !r.lit(`{"companies":[`) {
		return nil, false
	}
	var cos []company
	if !build {
		// One allocation for a body of n records: each is at least
		// `{"company_id":"x"}` and a comma.
		cos = make([]company, 0, min(maxBulkRecords+1, len(data)/len(`{"company_id":"x"},`)+1))
	}
	for {
		co, ok := r.record()
		if !ok {
			return nil, false
		}
		cos = append(cos, co)
		if len(cos) > maxBulkRecords {
			return nil, false
		}
		if r.lit(",") {
			continue
		}
		if !r.lit("]}") || r.i != len(r.b) {
			return nil, false
		}
		return cos, true
	}
}

func readCompany(data []byte, build bool) (company, bool) {
	r := reader{b: string(data), build: build}
	co, ok := r.record()
	if !ok || r.i != len(r.b) {
		return company{}, false
	}
	return co, true
}

// decodeRaw decodes metadata kept by checkBulk or checkCompany: what
// fastBulk or fastCompany would have given for it.
func decodeRaw(raw string) map[string]any {
	r := reader{b: raw, build: true}
	md, ok := r.metadata()
	if !ok || r.i != len(r.b) {
		panic("userpilottest: metadata accepted on receipt does not decode: " + raw)
	}
	return md
}

// reader reads a body copied once into a string: the ids, keys and
// values it gives are parts of that string, not each a copy (one object
// for the collector, not one per record and value).
type reader struct {
	b     string
	i     int
	build bool // decode metadata into maps; else check it and keep its bytes
	// user: the metadata is a user's, whose reserved keys have rules
	// (userMetadata); a record that breaks one is left to the strict
	// decoder, which says so.
	user bool
}

// fastUserBulk reads {"users":[record,…]}.
func fastUserBulk(data []byte) ([]userRecord, bool) { return readUserBulk(data, true) }

// checkUserBulk is fastUserBulk keeping metadata undecoded.
func checkUserBulk(data []byte) ([]userRecord, bool) { return readUserBulk(data, false) }

func readUserBulk(data []byte, build bool) ([]userRecord, bool) {
	r := reader{b: string(data), build: build, user: true}
	if !r.lit(`{"users":[`) {
		return nil, false
	}
	var us []userRecord
	if !build {
		us = make([]userRecord, 0, min(maxBulkRecords+1, len(data)/len(`{"user_id":"x"},`)+1))
	}
	for {
		u, ok := r.userRecord()
		if !ok {
			return nil, false
		}
		us = append(us, u)
		if len(us) > maxBulkRecords {
			return nil, false
		}
		if r.lit(",") {
			continue
		}
		if !r.lit("]}") || r.i != len(r.b) {
			return nil, false
		}
		return us, true
	}
}

// userRecord reads {"user_id":"…","company_id":"…","metadata":{…}}
// (company_id and metadata optional, in this order, each once).
func (r *reader) userRecord() (userRecord, bool) {
	if !r.lit(`{"user_id":`) {
		return userRecord{}, false
	}
	id, ok := r.str()
	if !ok || len(id) == 0 {
		return userRecord{}, false
	}
	u := userRecord{id: id}
	if r.lit(`,"company_id":`) {
		if u.company, ok = r.str(); !ok || len(u.company) == 0 {
			return userRecord{}, false
		}
	}
	if r.lit("}") {
		return u, true
	}
	if !r.lit(`,"metadata":`) {
		return userRecord{}, false
	}
	start := r.i
	md, ok := r.metadata()
	if !ok {
		return userRecord{}, false
	}
	if r.build {
		u.metadata = md
	} else {
		u.raw = r.b[start:r.i]
	}
	return u, r.lit("}")
}

// reservedOK reports whether a user's metadata key k may hold the
// primitive (kind, text) read for it: Userpilot's reserved user keys
// (userMetadata's rules; created_at with signed_up_at is metadata's).
func reservedOK(k string, kind int, text string) bool {
	switch k {
	case "name", "email":
		return kind == kindString || kind == kindNull
	case "created_at", "signed_up_at":
		return kind == kindNull || kind == kindString && isoDate(text)
	case "first_seen_at", "last_seen_at":
		return false
	}
	return true
}

// lit consumes s if it comes next.
func (r *reader) lit(s string) bool {
	if len(r.b)-r.i < len(s) || r.b[r.i:r.i+len(s)] != s {
		return false
	}
	r.i += len(s)
	return true
}

// record reads {"company_id":"…","metadata":{…}} (metadata optional, the
// two in this order, each once).
func (r *reader) record() (company, bool) {
	if !r.lit(`{"company_id":`) {
		return company{}, false
	}
	id, ok := r.str()
	if !ok || len(id) == 0 {
		return company{}, false
	}
	co := company{id: id}
	if r.lit("}") {
		return co, true
	}
	if !r.lit(`,"metadata":`) {
		return company{}, false
	}
	start := r.i
	md, ok := r.metadata()
	if !ok {
		return company{}, false
	}
	if r.build {
		co.metadata = md
	} else {
		co.raw = r.b[start:r.i]
	}
	return co, r.lit("}")
}

// metadata reads {"key":primitive,…}, keys unique; built into a map if
// r.build.
func (r *reader) metadata() (map[string]any, bool) {
	if !r.lit("{") {
		return nil, false
	}
	var md map[string]any
	if r.build {
		md = map[string]any{}
	}
	if r.lit("}") {
		return md, true
	}
	var seen keySet
	dates := 0 // created_at and signed_up_at seen, in a user's metadata
	for {
		k, ok := r.str()
		if !ok || !r.lit(":") {
			return nil, false
		}
		if r.user && (k == "created_at" || k == "signed_up_at") {
			if dates++; dates > 1 {
				return nil, false
			}
		}
		// A key sent twice: the strict decoder says what it makes of it.
		if r.build {
			if _, dup := md[k]; dup {
				return nil, false
			}
		} else if !seen.add(k) {
			return nil, false
		}
		kind, v, ok := r.primitive()
		if !ok || r.user && !reservedOK(k, kind, v) {
			return nil, false
		}
		if r.build {
			md[k] = value(kind, v)
		}
		if r.lit(",") {
			continue
		}
		return md, r.lit("}")
	}
}

// keySet is the keys of one metadata object seen so far, compared as bytes
// (keys have no escapes, so equal bytes are equal strings): a few in place,
// a map past that.
type keySet struct {
	few  [16]string
	n    int
	many map[string]struct{}
}

// add reports whether k was new.
func (s *keySet) add(k string) bool {
	if s.many != nil {
		if _, dup := s.many[k]; dup {
			return false
		}
		s.many[k] = struct{}{}
		return true
	}
	for _, seen := range s.few[:s.n] {
		if seen == k {
			return false
		}
	}
	if s.n < len(s.few) {
		s.few[s.n] = k
		s.n++
		return true
	}
	s.many = make(map[string]struct{}, 2*len(s.few))
	for _, seen := range s.few {
		s.many[seen] = struct{}{}
	}
	s.many[k] = struct{}{}
	return true
}

// str reads a JSON string of printable ASCII or valid UTF-8 without
// escapes: what encoding/json decodes to the same bytes. It returns the
// bytes between the quotes.
func (r *reader) str() (string, bool) {
	if r.i >= len(r.b) || r.b[r.i] != '"' {
		return "", false
	}
	start := r.i + 1
	j := start
	for j < len(r.b) && plainASCII[r.b[j]] {
		j++ // what nearly every key and value is made of: nothing to check
	}
	for ; j < len(r.b); j++ {
		switch c := r.b[j]; {
		case c == '"':
			s := r.b[start:j]
			if !utf8.ValidString(s) {
				return "", false // encoding/json replaces bad bytes: let it
			}
			r.i = j + 1
			return s, true
		case c == '\\' || c < 0x20:
			return "", false
		}
	}
	return "", false
}

// plainASCII is the bytes that stand for themselves in a JSON string and
// are valid UTF-8 alone: printable ASCII but the quote and the backslash.
var plainASCII = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// Kinds of primitive.
const (
	kindString = iota
	kindNumber
	kindTrue
	kindFalse
	kindNull
)

// primitive reads a string, a number, true, false or null: its kind and,
// for a string or number, its text.
func (r *reader) primitive() (int, string, bool) {
	if r.i >= len(r.b) {
		return 0, "", false
	}
	switch c := r.b[r.i]; {
	case c == '"':
		s, ok := r.str()
		return kindString, s, ok
	case r.lit("true"):
		return kindTrue, "", true
	case r.lit("false"):
		return kindFalse, "", true
	case r.lit("null"):
		return kindNull, "", true
	case c == '-' || '0' <= c && c <= '9':
		s, ok := r.number()
		return kindNumber, s, ok
	}
	return 0, "", false
}

// value is what encoding/json (with UseNumber) decodes a primitive to.
func value(kind int, text string) any {
	switch kind {
	case kindString:
		return text
	case kindNumber:
		return json.Number(text)
	case kindTrue:
		return true
	case kindFalse:
		return false
	}
	return nil
}

// number reads a JSON number and returns its text (kept as json.Number).
func (r *reader) number() (string, bool) {
	start := r.i
	digits := func() int {
		n := 0
		for r.i < len(r.b) && '0' <= r.b[r.i] && r.b[r.i] <= '9' {
			r.i++
			n++
		}
		return n
	}
	if r.b[r.i] == '-' {
		r.i++
	}
	first := r.i
	n := digits()
	if n == 0 || n > 1 && r.b[first] == '0' {
		return "", false
	}
	if r.i < len(r.b) && r.b[r.i] == '.' {
		r.i++
		if digits() == 0 {
			return "", false
		}
	}
	if r.i < len(r.b) && (r.b[r.i] == 'e' || r.b[r.i] == 'E') {
		r.i++
		if r.i < len(r.b) && (r.b[r.i] == '+' || r.b[r.i] == '-') {
			r.i++
		}
		if digits() == 0 {
			return "", false
		}
	}
	return r.b[start:r.i], true
}
