package mapping

import (
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
