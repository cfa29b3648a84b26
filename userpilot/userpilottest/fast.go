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

// fastBulk reads {"companies":[record,…]}.
func fastBulk(data []byte) ([]company, bool) {
	r := reader{b: data}
	if !r.lit(`{"companies":[`) {
		return nil, false
	}
	var cos []company
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

// fastCompany reads one identify record, the whole of data.
func fastCompany(data []byte) (company, bool) {
	r := reader{b: data}
	co, ok := r.record()
	if !ok || r.i != len(r.b) {
		return company{}, false
	}
	return co, true
}

type reader struct {
	b []byte
	i int
}

// lit consumes s if it comes next.
func (r *reader) lit(s string) bool {
	if len(r.b)-r.i < len(s) || string(r.b[r.i:r.i+len(s)]) != s {
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
	if !ok || id == "" {
		return company{}, false
	}
	co := company{id: id}
	if r.lit("}") {
		return co, true
	}
	if !r.lit(`,"metadata":{`) {
		return company{}, false
	}
	co.metadata = map[string]any{}
	if r.lit("}") {
		return co, r.lit("}")
	}
	for {
		k, ok := r.key()
		if !ok || !r.lit(":") {
			return company{}, false
		}
		if _, dup := co.metadata[k]; dup {
			return company{}, false // the strict decoder says what it makes of it
		}
		v, ok := r.primitive()
		if !ok {
			return company{}, false
		}
		co.metadata[k] = v
		if r.lit(",") {
			continue
		}
		return co, r.lit("}}")
	}
}

// key reads a string without escapes.
func (r *reader) key() (string, bool) {
	s, ok := r.str()
	return s, ok
}

// str reads a JSON string of printable ASCII or valid UTF-8 without
// escapes: what encoding/json decodes to the same bytes.
func (r *reader) str() (string, bool) {
	if r.i >= len(r.b) || r.b[r.i] != '"' {
		return "", false
	}
	start := r.i + 1
	for j := start; j < len(r.b); j++ {
		switch c := r.b[j]; {
		case c == '"':
			s := r.b[start:j]
			if !utf8.Valid(s) {
				return "", false // encoding/json replaces bad bytes: let it
			}
			r.i = j + 1
			return string(s), true
		case c == '\\' || c < 0x20:
			return "", false
		}
	}
	return "", false
}

// primitive reads a string, a number, true, false or null.
func (r *reader) primitive() (any, bool) {
	if r.i >= len(r.b) {
		return nil, false
	}
	switch c := r.b[r.i]; {
	case c == '"':
		return r.str()
	case r.lit("true"):
		return true, true
	case r.lit("false"):
		return false, true
	case r.lit("null"):
		return nil, true
	case c == '-' || '0' <= c && c <= '9':
		return r.number()
	}
	return nil, false
}

// number reads a JSON number, kept as its text (json.Number).
func (r *reader) number() (any, bool) {
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
		return nil, false
	}
	if r.i < len(r.b) && r.b[r.i] == '.' {
		r.i++
		if digits() == 0 {
			return nil, false
		}
	}
	if r.i < len(r.b) && (r.b[r.i] == 'e' || r.b[r.i] == 'E') {
		r.i++
		if r.i < len(r.b) && (r.b[r.i] == '+' || r.b[r.i] == '-') {
			r.i++
		}
		if digits() == 0 {
			return nil, false
		}
	}
	return json.Number(r.b[start:r.i]), true
}
