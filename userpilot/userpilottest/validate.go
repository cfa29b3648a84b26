package userpilottest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"slices"
	"strings"

	"github.com/pgpilot/pgpilot/userpilot"
)

// apiError is an answer in Userpilot's only documented error shape:
// {"errors": [{"error", "error_code", "message", "details"}]}.
type apiError struct {
	status     int
	code       string
	message    string
	details    any
	retryAfter string // Retry-After header, if any
	allow      string // Allow header, for 405
}

func (e *apiError) body() any {
	type item struct {
		Error     string `json:"error"`
		ErrorCode string `json:"error_code"`
		Message   string `json:"message"`
		Details   any    `json:"details"`
	}
	return map[string][]item{"errors": {{
		Error:     http.StatusText(e.status),
		ErrorCode: e.code,
		Message:   e.message,
		Details:   e.details,
	}}}
}

func invalid(message string) *apiError {
	return &apiError{status: http.StatusBadRequest, code: "invalid_request", message: message}
}

// company is one validated identify record.
type company struct {
	id       string
	metadata map[string]any // values: nil, string, bool, json.Number
	// raw, if set, is the metadata object as sent, checked by checkBulk or
	// checkCompany and not decoded yet (metadata is nil): see meta.
	raw string
}

// meta is the record's metadata as sent: nil when it had none. Metadata
// kept raw is decoded afresh, so the caller owns the map it gets; a
// decoded one is shared.
func (co company) meta() map[string]any {
	if co.raw != "" {
		return decodeRaw(co.raw)
	}
	return co.metadata
}

// checkHeaders enforces the headers the identify, bulk and delete pages
// require. Accept is required by the identify and bulk pages only.
func checkHeaders(r *http.Request, requireAccept bool) *apiError {
	ct := r.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
		return &apiError{status: http.StatusBadRequest, code: "invalid_content_type",
			message: fmt.Sprintf("Content-Type must be application/json, got %q", ct)}
	}
	if requireAccept && !acceptsJSON(r.Header.Values("Accept")) {
		return &apiError{status: http.StatusBadRequest, code: "invalid_accept",
			message: fmt.Sprintf("Accept must allow application/json, got %q", r.Header.Get("Accept"))}
	}
	if v := r.Header.Get("X-API-Version"); v != APIVersion {
		return &apiError{status: http.StatusBadRequest, code: "invalid_api_version",
			message: fmt.Sprintf("X-API-Version must be %s, got %q", APIVersion, v)}
	}
	return nil
}

func acceptsJSON(values []string) bool {
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil || params["q"] == "0" {
				continue
			}
			if mt == "application/json" || mt == "application/*" || mt == "*/*" {
				return true
			}
		}
	}
	return false
}

// decodeObject decodes data as exactly one JSON object whose fields are all
// in allowed; what names it in error messages.
func decodeObject(data []byte, what string, allowed ...string) (map[string]json.RawMessage, *apiError) {
	dec := json.NewDecoder(bytes.NewReader(data))
	var fields map[string]json.RawMessage
	if err := dec.Decode(&fields); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, invalid(what + " is empty: send a JSON object")
		}
		return nil, invalid(fmt.Sprintf("%s is not a valid JSON object: %v", what, err))
	}
	if fields == nil {
		return nil, invalid(what + " must be a JSON object, not null")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, invalid(what + " has data after the JSON object")
	}
	for _, k := range slices.Sorted(maps.Keys(fields)) {
		if !slices.Contains(allowed, k) {
			return nil, &apiError{status: http.StatusBadRequest, code: "invalid_request",
				message: fmt.Sprintf("%s has unknown field %q (allowed: %s)", what, k, strings.Join(allowed, ", ")),
				details: map[string]string{"field": k}}
		}
	}
	return fields, nil
}

// decodeValue decodes one JSON value keeping numbers as json.Number.
func decodeValue(raw json.RawMessage) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	return v, err
}

// decodeCompany validates one identify record: {"company_id": "…", "metadata": {…}}.
// The id is returned even when the metadata is invalid, for the request log.
func decodeCompany(data []byte, what string) (company, *apiError) {
	if co, ok := fastCompany(data); ok {
		return co, nil
	}
	return strictCompany(data, what)
}

// strictCompany is decodeCompany without the fast path.
func strictCompany(data []byte, what string) (company, *apiError) {
	fields, e := decodeObject(data, what, "company_id", "metadata")
	if e != nil {
		return company{}, e
	}
	raw, ok := fields["company_id"]
	if !ok {
		return company{}, invalid(what + ": company_id is required")
	}
	v, err := decodeValue(raw)
	id, isString := v.(string)
	if err != nil || !isString {
		return company{}, invalid(fmt.Sprintf("%s: company_id must be a JSON string, got %s", what, raw))
	}
	if id == "" {
		return company{}, invalid(what + ": company_id must not be empty")
	}
	co := company{id: id}
	raw, ok = fields["metadata"]
	if !ok {
		return co, nil
	}
	v, err = decodeValue(raw)
	md, isObject := v.(map[string]any)
	if err != nil || !isObject {
		return co, invalid(fmt.Sprintf("%s: metadata must be a JSON object, got %s", what, raw))
	}
	for _, k := range slices.Sorted(maps.Keys(md)) {
		switch md[k].(type) {
		case nil, string, bool, json.Number:
		default:
			return co, &apiError{status: http.StatusBadRequest, code: "invalid_metadata",
				message: fmt.Sprintf("%s: metadata %q must be a string, number, boolean or null", what, k),
				details: map[string]string{"key": k}}
		}
	}
	co.metadata = md
	return co, nil
}

// receiveCompany is decodeCompany for a request the server keeps: a body
// the fast path takes keeps its metadata as sent (company.raw) instead of
// decoding it, and anything else is read by the strict decoder.
func receiveCompany(data []byte) (company, *apiError) {
	if co, ok := checkCompany(data); ok {
		return co, nil
	}
	return strictCompany(data, "body")
}

// receiveBulk is decodeBulk for a job the server keeps, as receiveCompany.
func receiveBulk(data []byte) ([]company, *apiError) {
	if cos, ok := checkBulk(data); ok {
		return cos, nil
	}
	return strictBulk(data)
}

// decodeBulk validates a bulk identify body: {"companies": [record, …]}.
// The ids read so far are returned even on error, for the request log.
func decodeBulk(data []byte) ([]company, *apiError) {
	if cos, ok := fastBulk(data); ok {
		return cos, nil
	}
	return strictBulk(data)
}

// strictBulk is decodeBulk without the fast path (its records are read
// with it, and strictly where it gives up).
func strictBulk(data []byte) ([]company, *apiError) {
	fields, e := decodeObject(data, "body", "companies")
	if e != nil {
		return nil, e
	}
	var items []json.RawMessage
	if err := json.Unmarshal(fields["companies"], &items); err != nil || items == nil {
		return nil, invalid("body: companies must be a JSON array of company records")
	}
	if len(items) == 0 {
		return nil, invalid("body: companies must not be empty")
	}
	if len(items) > maxBulkRecords {
		return nil, &apiError{status: http.StatusRequestEntityTooLarge, code: "payload_too_large",
			message: fmt.Sprintf("%d companies in one request: at most %d, split it", len(items), maxBulkRecords)}
	}
	cos := make([]company, 0, len(items))
	for i, item := range items {
		co, e := decodeCompany(item, fmt.Sprintf("companies[%d]", i))
		if e != nil {
			e.details = map[string]any{"index": i, "detail": e.details}
			return cos, e
		}
		cos = append(cos, co)
	}
	return cos, nil
}

// Metadata encodes plain values as a company's metadata, as the mapping
// would (for tests that build payloads by hand); it panics on a value that
// has no JSON form.
func Metadata(values map[string]any) userpilot.Metadata {
	md, err := userpilot.MetadataOf(values)
	if err != nil {
		panic(err)
	}
	return md
}
