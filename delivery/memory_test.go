package delivery

import (
	"encoding/json"
	"runtime"
	"strconv"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/userpilot"
)

// sevenKeys maps a row as the mapping would (its package cannot be
// imported here: it imports delivery's defaults): the company id, and
// seven keys of JSON made from the row's text.
type sevenKeys struct{}

var keys = []string{"name", "plan", "seats", "monthly_spend", "trial", "created_at", "notes"}

func (sevenKeys) CompanyID(v []row.Value) (string, error) { return string(v[0].Text), nil }
func (sevenKeys) Keys() []string                          { return keys }
func (sevenKeys) Entity() mapping.Entity                  { return mapping.Company }
func (sevenKeys) Membership() int                         { return -1 }
func (sevenKeys) Map(v []row.Value, buf []byte, vals []json.RawMessage) (string, []byte, error) {
	for i := range keys {
		start := len(buf)
		switch val := v[i+1]; {
		case val.Unchanged:
			vals[i] = nil
			continue
		case val.Null:
			vals[i] = userpilot.Null
			continue
		case i == 2 || i == 3: // numbers
			buf = append(buf, val.Text...)
		case i == 4:
			buf = append(buf, "true"...)
		default:
			buf = append(append(append(buf, '"'), val.Text...), '"')
		}
		vals[i] = buf[start:len(buf):len(buf)]
	}
	return string(v[0].Text), buf, nil
}
func (s sevenKeys) Identify(v []row.Value) (userpilot.Company, error) {
	vals := make([]json.RawMessage, len(keys))
	id, _, err := s.Map(v, nil, vals)
	md := userpilot.Metadata{}
	for i, val := range vals {
		if val != nil {
			md[keys[i]] = val
		}
	}
	return userpilot.Company{CompanyID: id, Metadata: md}, err
}

// BenchmarkPendingCompanyBytes is the heap one pending company costs: N
// companies of internal/workload's table (seven mapped keys) merged into
// the pipeline and not delivered, heap in use after a collection, divided
// by N.
func BenchmarkPendingCompanyBytes(b *testing.B) {
	rel := &row.Relation{Table: row.Table{Schema: "public", Name: "companies"}, Columns: []row.Column{
		{Name: "id", TypeOID: pgtype.Int8OID}, {Name: "name", TypeOID: pgtype.TextOID}, {Name: "plan", TypeOID: pgtype.TextOID},
		{Name: "seats", TypeOID: pgtype.Int4OID}, {Name: "monthly_spend", TypeOID: pgtype.NumericOID}, {Name: "trial", TypeOID: pgtype.BoolOID},
		{Name: "created_at", TypeOID: pgtype.TimestamptzOID}, {Name: "notes", TypeOID: pgtype.TextOID},
	}}
	const n = 20_000
	for range b.N {
		p := New(Options{MaxPending: n, NoBulk: true, Mapping: func(*row.Relation) (Mapper, error) { return sevenKeys{}, nil }})
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for i := range n {
			id := strconv.Itoa(100000 + i)
			vals := []row.Value{{Text: []byte(id)}, {Text: []byte("Company " + id)}, {Text: []byte("enterprise")}, {Text: []byte("456")},
				{Text: []byte("1523447.0400000000")}, {Text: []byte("t")}, {Text: []byte("2038-01-31 00:00:00+00")}, {Null: true}}
			txn := row.Transaction{Kind: row.Commit, CommitLSN: pglogrepl.LSN(10 * i), EndLSN: pglogrepl.LSN(10*i + 5),
				Changes: []row.Change{{Op: row.Insert, Relation: rel, Values: vals}}}
			if err := p.add(txn); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/n, "bytes/company")
		runtime.KeepAlive(p)
	}
}
