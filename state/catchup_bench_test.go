package state

import (
	"encoding/json"
	"fmt"
	"os"
	"testing"
)

// lookedUp are profiles with what their look-up found absent
// (KnownAbsent), as a catch-up's new companies are, their values made
// beforehand: the benchmark measures the index, not them.
type lookedUp struct {
	ids    []string
	keys   []string
	vals   [][]json.RawMessage
	absent []bool
}

func (ps lookedUp) Len() int               { return len(ps.ids) }
func (ps lookedUp) CompanyID(i int) string { return ps.ids[i] }
func (ps lookedUp) Absent(i int) bool      { return ps.absent[i] }
func (ps lookedUp) Metadata(i int, yield func(string, json.RawMessage) bool) {
	for k, v := range ps.vals[i] {
		if !yield(ps.keys[k], v) {
			return
		}
	}
}

// BenchmarkIndexCatchUp is the no-op index's part of a catch-up of new
// companies: jobs of 10,000 consecutive ids (decimal, so a job's ids are
// spread through the index in key order, between the earlier jobs'),
// each looked up and then recorded, as the pipeline does, with the seven
// keys of the workload's table in the mapping's order. It reports the
// process's CPU per company (PGPILOT_INDEX_COMPANIES sets how many; 200,000
// by default):
//
//	go test -run '^$' -bench IndexCatchUp -benchmem ./state/
func BenchmarkIndexCatchUp(b *testing.B) {
	n := 200_000
	if v := os.Getenv("PGPILOT_INDEX_COMPANIES"); v != "" {
		fmt.Sscan(v, &n)
	}
	const job = 10_000
	var jobs []lookedUp
	for start := 1; start <= n; start += job {
		ps := lookedUp{keys: []string{"name", "plan", "seats", "monthly_spend", "trial", "created_at", "notes"}}
		for i := start; i < start+job && i <= n; i++ {
			ps.ids = append(ps.ids, fmt.Sprint(i))
			ps.vals = append(ps.vals, []json.RawMessage{
				json.RawMessage(fmt.Sprintf(`"Company %d"`, i)), json.RawMessage(`"pro"`), json.RawMessage(fmt.Sprint(i % 500)),
				json.RawMessage(`1234.5600000000`), json.RawMessage(fmt.Sprint(i%2 == 0)),
				json.RawMessage(`"2024-01-01T00:00:00Z"`), json.RawMessage(`null`),
			})
			ps.absent = append(ps.absent, false)
		}
		jobs = append(jobs, ps)
	}
	b.ReportAllocs()
	b.ResetTimer()
	var cpu float64
	for range b.N {
		b.StopTimer()
		d, err := Open(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		x, err := d.OpenStore()
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		before := processCPU(b)
		for _, ps := range jobs {
			same := make([]bool, ps.Len())
			if err := x.UnchangedProfiles(ps, same, ps.absent); err != nil {
				b.Fatal(err)
			}
			if err := x.RecordProfiles(ps); err != nil {
				b.Fatal(err)
			}
		}
		cpu += float64((processCPU(b) - before).Nanoseconds())
		b.StopTimer()
		x.Close()
		d.Close()
		b.StartTimer()
	}
	b.ReportMetric(cpu/float64(b.N)/float64(n), "cpu_ns/company")
}

// BenchmarkFingerprint is a company's fingerprints as a record of each
// version written is made.
func BenchmarkFingerprint(b *testing.B) {
	keys := []string{"name", "plan", "seats", "monthly_spend", "trial", "created_at", "notes"}
	vals := []json.RawMessage{json.RawMessage(`"Company 123456"`), json.RawMessage(`"pro"`), json.RawMessage(`123`),
		json.RawMessage(`1234.5600000000`), json.RawMessage(`true`), json.RawMessage(`"2024-01-01T00:00:00Z"`), json.RawMessage(`null`)}
	for _, v := range []byte{recordXXH, recordValue} {
		b.Run(fmt.Sprintf("version%d", v), func(b *testing.B) {
			var h hasher
			var sum uint64
			b.ReportAllocs()
			for range b.N {
				for k, key := range keys {
					sum += h.value(v, key, vals[k])
				}
			}
			_ = sum
		})
	}
}
