package userpilot

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"unicode/utf8"
)

// Company is one identify-company payload: the one {company_id, metadata}
// shape from the mapping to the HTTP body. The no-op index fingerprints it,
// delivery merges and sizes it, and the client writes it, all from the same
// bytes.
type Company struct {
	CompanyID string
	Metadata  Metadata
}

// Metadata is a company's metadata, each key's value already encoded as
// JSON, once (see Encode): a primitive, as Userpilot accepts only string,
// number, boolean and null. A key that is absent keeps its value in
// Userpilot (metadata merges); null clears it.
type Metadata map[string]json.RawMessage

// Null is the JSON null: it clears a key in Userpilot.
var Null = json.RawMessage("null")

// Encode is pgpilot's one JSON model of a metadata value: nil, a bool, a
// string, a json.Number or another number, written exactly as json.Marshal
// writes it (so the no-op index's fingerprints stay what they always were),
// with the usual values (null, a boolean, a plain number, text that needs no
// escape) written without reflection. A value json.Marshal refuses is an
// error naming it.
func Encode(v any) (json.RawMessage, error) {
	switch v := v.(type) {
	case nil:
		return Null, nil
	case bool:
		return strconv.AppendBool(nil, v), nil
	case string:
		if plainText(v) {
			b := make([]byte, 0, len(v)+2)
			return append(append(append(b, '"'), v...), '"'), nil
		}
	case json.Number:
		if plainNumber(string(v)) {
			return json.RawMessage(v), nil
		}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %#v as JSON: %w", v, err)
	}
	return b, nil
}

// MetadataOf encodes a map of plain values (a config's on_delete_metadata,
// a test's expectation).
func MetadataOf(values map[string]any) (Metadata, error) {
	md := make(Metadata, len(values))
	for k, v := range values {
		b, err := Encode(v)
		if err != nil {
			return nil, fmt.Errorf("metadata %q: %w", k, err)
		}
		md[k] = b
	}
	return md, nil
}

// Values decodes md back into plain values (numbers as json.Number), for
// messages, tests and the stand-in.
func (md Metadata) Values() map[string]any {
	out := make(map[string]any, len(md))
	for k, raw := range md {
		var v any
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			v = string(raw)
		}
		out[k] = v
	}
	return out
}

// AppendJSON appends c as Userpilot's identify body:
// {"company_id":"…","metadata":{…}}, keys in sorted order (as json.Marshal
// writes a map), an empty object where there is no metadata (Userpilot
// expects an object, never null).
func (c Company) AppendJSON(b []byte) []byte {
	b = appendCompanyStart(b, c.CompanyID)
	for k, v := range c.Metadata.sorted {
		b = appendKey(b, k, v)
	}
	return appendCompanyEnd(b)
}

// sorted yields md's keys and values in the keys' sorted order (an
// iter.Seq2).
func (md Metadata) sorted(yield func(string, json.RawMessage) bool) {
	var few [16]string // a mapping's keys, usually: sorted without an allocation
	keys := few[:0]
	for k := range md {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !yield(k, md[k]) {
			return
		}
	}
}

// A company's JSON is written in three steps, from a map (AppendJSON) or
// from a sequence (BulkBody.AddSeqWithin): its start, each key, its end.

func appendCompanyStart(b []byte, id string) []byte {
	b = append(b, `{"company_id":`...)
	b = appendString(b, id)
	return append(b, `,"metadata":{`...)
}

// appendKey appends one metadata key and its value, after a comma unless
// it is the first.
func appendKey(b []byte, k string, v json.RawMessage) []byte {
	if b[len(b)-1] != '{' {
		b = append(b, ',')
	}
	b = appendString(b, k)
	b = append(b, ':')
	return append(b, v...)
}

func appendCompanyEnd(b []byte) []byte { return append(b, "}}"...) }

// JSONSize is the exact length of c's AppendJSON, counted without writing it.
func (c Company) JSONSize() int {
	n := len(`{"company_id":,"metadata":{}}`) + stringSize(c.CompanyID)
	if len(c.Metadata) > 0 {
		n += len(c.Metadata) - 1 // commas
	}
	for k, v := range c.Metadata {
		n += stringSize(k) + 1 + len(v)
	}
	return n
}

// MarshalJSON writes c as AppendJSON does (a dead letter's payload, a
// preview line).
func (c Company) MarshalJSON() ([]byte, error) { return c.AppendJSON(nil), nil }

// UnmarshalJSON reads what MarshalJSON wrote.
func (c *Company) UnmarshalJSON(data []byte) error {
	var v struct {
		CompanyID string   `json:"company_id"`
		Metadata  Metadata `json:"metadata"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	c.CompanyID, c.Metadata = v.CompanyID, v.Metadata
	return nil
}

// appendString appends s as json.Marshal writes a string.
func appendString(b []byte, s string) []byte {
	if plainText(s) {
		return append(append(append(b, '"'), s...), '"')
	}
	enc, _ := json.Marshal(s) // a string always encodes
	return append(b, enc...)
}

// stringSize is len(appendString(nil, s)).
func stringSize(s string) int {
	if plainText(s) {
		return len(s) + 2
	}
	enc, _ := json.Marshal(s)
	return len(enc)
}

// plainText reports whether json.Marshal writes s as is between quotes:
// printable ASCII without '"', '\\' or the HTML characters it escapes.
func plainText(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20, c >= utf8.RuneSelf, c == 0x7f, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}

// plainNumber reports whether s is an optional '-', digits without a
// leading zero (or a single 0), and optionally '.' and digits: a valid
// JSON number, which json.Marshal writes as is.
func plainNumber(s string) bool {
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	start := i
	for i < len(s) && '0' <= s[i] && s[i] <= '9' {
		i++
	}
	if i == start || s[start] == '0' && i-start > 1 {
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		frac := i
		for i < len(s) && '0' <= s[i] && s[i] <= '9' {
			i++
		}
		if i == frac {
			return false
		}
	}
	return i == len(s)
}
