package mapping

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/userpilot"
)

// fuzzOIDs has at least one type of every class.
var fuzzOIDs = []uint32{
	pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.OIDOID, pgtype.Float4OID, pgtype.Float8OID, pgtype.NumericOID,
	pgtype.BoolOID,
	pgtype.DateOID, pgtype.TimestampOID, pgtype.TimestamptzOID,
	pgtype.TextOID, pgtype.VarcharOID, pgtype.QCharOID, pgtype.UUIDOID, pgtype.IntervalOID, moneyOID,
	pgtype.JSONBOID, pgtype.ByteaOID, pgtype.TextArrayOID, 999999,
}

func FuzzIdentify(f *testing.F) {
	for _, s := range []string{"42", "-1.5e3", "NaN", "t", "yes", "2024-03-01 09:30:00+02", "0044-03-15 BC", "infinity", ""} {
		f.Add([]byte(s))
	}

	var mappers []*Mapper
	for _, oid := range fuzzOIDs {
		for _, typ := range []Type{TypeAuto, TypeString, TypeNumber, TypeBoolean, TypeDate} {
			cols := []row.Column{{Name: "id", TypeOID: oid}, {Name: "v", TypeOID: oid}}
			m, err := Compile(Companies{CompanyID: "id", Metadata: []Field{{Key: "k", Column: "v", Type: typ}}}, "t", cols)
			if err == nil {
				mappers = append(mappers, m)
			}
		}
	}
	if len(mappers) < 40 {
		f.Fatalf("only %d mappings compiled", len(mappers))
	}

	f.Fuzz(func(t *testing.T, text []byte) {
		for _, m := range mappers {
			for _, vals := range [][]row.Value{
				{{Text: []byte("1")}, {Text: text}}, // the value
				{{Text: text}, {Null: true}},        // the company id
			} {
				out, err := m.Identify(vals)
				var bad BadValues
				if err != nil && !errors.As(err, &bad) {
					var re *RowError
					if !errors.As(err, &re) {
						t.Fatalf("%v: not a *RowError: %v", m.Columns()[0], err)
					}
					continue
				}
				for _, k := range bad.HeldBack() {
					if _, ok := out.Metadata[k]; ok {
						t.Fatalf("%s: held back, yet in the payload", k)
					}
				}
				checkIdentify(t, m, out)
			}
		}
	})
}

// checkIdentify asserts that a payload is one Userpilot accepts.
func checkIdentify(t *testing.T, m *Mapper, out userpilot.Company) {
	t.Helper()
	if out.CompanyID == "" {
		t.Fatalf("%v: empty company_id accepted", m.Columns())
	}
	for k, raw := range out.Metadata {
		if !json.Valid(raw) {
			t.Fatalf("%s: %q is not JSON", k, raw)
		}
	}
	for k, v := range out.Metadata.Values() {
		switch x := v.(type) {
		case nil, bool:
		case string:
			if m.fields[0].conv == dateFromDate || m.fields[0].conv == dateFromText {
				if _, err := time.Parse(time.RFC3339Nano, x); err != nil || len(x) < 20 || x[len(x)-1] != 'Z' {
					t.Fatalf("%s: date %q is not RFC 3339 in UTC", k, x)
				}
			}
		case json.Number:
			if !json.Valid([]byte(x)) {
				t.Fatalf("%s: %q is not a JSON number", k, x)
			}
		default:
			t.Fatalf("%s: %T is not a primitive", k, v)
		}
	}
	if _, err := json.Marshal(out); err != nil {
		t.Fatalf("payload does not marshal: %v", err)
	}
}

// FuzzJSONPath holds the path reader to encoding/json: for any valid JSON
// document and path, it finds what decoding the document and walking its
// objects finds (the last of duplicate keys, as json's -> does).
func FuzzJSONPath(f *testing.F) {
	for _, s := range []string{`{"a": {"b": 1}}`, `{"a": [1, {"b": 2}]}`, `{"a\u00e9": "x\"y"}`, `{"a": 1, "a": 2}`, ` {"a" : null } `, `[1]`, `"s"`, `{"a": {}}`} {
		f.Add([]byte(s), "a/b")
		f.Add([]byte(s), "aé")
		f.Add([]byte(s), "a")
	}
	f.Fuzz(func(t *testing.T, doc []byte, pathText string) {
		if !json.Valid(doc) || !utf8.Valid(doc) {
			return // Postgres prints only valid JSON, in UTF-8
		}
		path := strings.Split(pathText, "/")
		var v any
		dec := json.NewDecoder(bytes.NewReader(doc))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
		for _, k := range path {
			obj, ok := v.(map[string]any)
			if !ok {
				v = missing{}
				break
			}
			if v, ok = obj[k]; !ok {
				v = missing{}
				break
			}
		}
		kind, raw, err := jsonAt(doc, path, true)
		if err != nil {
			t.Fatalf("%q at %q: %v", doc, path, err)
		}
		switch want := v.(type) {
		case missing:
			if kind != jsonMissing {
				t.Fatalf("%q at %q: got %s %q, want missing", doc, path, kind, raw)
			}
			return
		case nil:
			if kind != jsonNull {
				t.Fatalf("%q at %q: got %s, want null", doc, path, kind)
			}
			return
		case map[string]any:
			if kind != jsonObject {
				t.Fatalf("%q at %q: got %s, want an object", doc, path, kind)
			}
		case []any:
			if kind != jsonArray {
				t.Fatalf("%q at %q: got %s, want an array", doc, path, kind)
			}
		case json.Number:
			if kind != jsonNumber || string(raw) != string(want) {
				t.Fatalf("%q at %q: got %s %q, want the number %s", doc, path, kind, raw, want)
			}
		case bool:
			if kind != jsonBool || string(raw) != strconv.FormatBool(want) {
				t.Fatalf("%q at %q: got %s %q, want %t", doc, path, kind, raw, want)
			}
		case string:
			text, err := jsonText(kind, raw)
			if kind != jsonString || err != nil || string(text) != want {
				t.Fatalf("%q at %q: got %s %q (%v), want the string %q", doc, path, kind, text, err, want)
			}
		}
		// What it found is the value's own text, valid JSON.
		if !json.Valid(raw) {
			t.Fatalf("%q at %q: %q is not JSON", doc, path, raw)
		}
	})
}

type missing struct{}
