package mapping

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/pgpilot/pgpilot/row"
)

// benchColumns is internal/workload's companies table.
var benchColumns = []row.Column{
	{Name: "id", TypeOID: pgtype.Int8OID},
	{Name: "name", TypeOID: pgtype.TextOID},
	{Name: "plan", TypeOID: pgtype.TextOID},
	{Name: "seats", TypeOID: pgtype.Int4OID},
	{Name: "monthly_spend", TypeOID: pgtype.NumericOID},
	{Name: "trial", TypeOID: pgtype.BoolOID},
	{Name: "created_at", TypeOID: pgtype.TimestamptzOID},
	{Name: "notes", TypeOID: pgtype.TextOID},
	{Name: "updated_at", TypeOID: pgtype.TimestamptzOID},
}

// benchRow is one row as pgoutput sends it (text format, session TZ UTC).
var benchRow = []row.Value{
	{Text: []byte("123456")},
	{Text: []byte("Company 123456")},
	{Text: []byte("enterprise")},
	{Text: []byte("456")},
	{Text: []byte("1523447.0400000000")},
	{Text: []byte("t")},
	{Text: []byte("2038-01-31 00:00:00+00")},
	{Null: true},
	{Text: []byte("2026-11-29 09:53:05.123456+00")},
}

func benchMapper(b *testing.B) *Mapper {
	b.Helper()
	m, err := Compile(Companies{CompanyID: "id", Metadata: []Field{
		{Key: "name", Column: "name"},
		{Key: "plan", Column: "plan"},
		{Key: "seats", Column: "seats"},
		{Key: "monthly_spend", Column: "monthly_spend", Type: TypeNumber},
		{Key: "trial", Column: "trial"},
		{Key: "created_at", Column: "created_at", Type: TypeDate},
		{Key: "notes", Column: "notes"},
	}}, "public.companies", benchColumns)
	if err != nil {
		b.Fatal(err)
	}
	return m
}

// BenchmarkIdentify maps one row of the benchmark table: the per-change
// cost of mapping on the stream's hot path.
func BenchmarkIdentify(b *testing.B) {
	m := benchMapper(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Identify(benchRow); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkConvert converts one value of each hot type.
func BenchmarkConvert(b *testing.B) {
	m := benchMapper(b)
	for _, f := range m.fields {
		v := benchRow[f.column]
		if v.Null {
			continue
		}
		b.Run(f.key, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := f.value(v.Text); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMapPlainAndDerived compares a change's mapping cost (Map, as
// delivery calls it, into reused room) with plain columns and with
// derived keys: seven keys each, the derived ones reading Chatwoot-like
// custom_attributes (five paths, typed and not, nested and dotted), a
// label of an integer enum, and a plain name. "large" puts the keys after
// 4 kB of other attributes, which every path walks past.
func BenchmarkMapPlainAndDerived(b *testing.B) {
	attrs := `{"mrr": 2178.00, "company": {"size": 42, "name": "Acme"}, "features": {"sla": true}, "plan_name": "enterprise", "subscribed.quantity": 5, "trial_ends": "2026-01-31"}`
	large := `{"a_padding": "` + strings.Repeat("x", 4096) + `", ` + attrs[1:]
	cols := []row.Column{
		{Name: "id", TypeOID: pgtype.Int4OID}, {Name: "name", TypeOID: pgtype.VarcharOID},
		{Name: "status", TypeOID: pgtype.Int4OID}, {Name: "custom_attributes", TypeOID: pgtype.JSONBOID},
	}
	derived, err := Compile(Companies{CompanyID: "id", Metadata: []Field{
		{Key: "name", Column: "name"},
		{Key: "plan", Column: "custom_attributes", Path: []string{"plan_name"}},
		{Key: "mrr", Column: "custom_attributes", Path: []string{"mrr"}, Type: TypeNumber},
		{Key: "size", Column: "custom_attributes", Path: []string{"company", "size"}},
		{Key: "seats", Column: "custom_attributes", Path: []string{"subscribed.quantity"}},
		{Key: "trial_ends", Column: "custom_attributes", Path: []string{"trial_ends"}, Type: TypeDate},
		{Key: "status", Column: "status", Values: []Label{{"0", "active"}, {"1", "suspended"}}, Default: ptr("unknown")},
	}}, "public.accounts", cols)
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		m    *Mapper
		row  []row.Value
	}{
		{"plain", benchMapper(b), benchRow},
		{"derived", derived, []row.Value{{Text: []byte("123456")}, {Text: []byte("Account 123456")}, {Text: []byte("1")}, {Text: []byte(attrs)}}},
		{"derived large", derived, []row.Value{{Text: []byte("123456")}, {Text: []byte("Account 123456")}, {Text: []byte("1")}, {Text: []byte(large)}}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			vals := make([]json.RawMessage, len(bc.m.Keys()))
			var buf []byte
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if _, buf, err = bc.m.Map(bc.row, buf[:0], vals); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
