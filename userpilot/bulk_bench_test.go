package userpilot_test

import (
	"strconv"
	"testing"

	"github.com/pgpilot/pgpilot/userpilot"
)

// BenchmarkBulkBodyAddMembers is writing a bulk job's body as delivery
// does, company by company from members written once: a job of 10,000
// companies of eight keys per iteration of 10,000.
func BenchmarkBulkBodyAddMembers(b *testing.B) {
	var members []byte
	for i, k := range []string{"name", "plan", "seats", "trial", "created_at", "monthly_spend", "notes", "status"} {
		if i > 0 {
			members = append(members, ',')
		}
		members = append(append(members, userpilot.MetadataKey(k)...), `"value `+strconv.Itoa(i)+`"`...)
	}
	ids := make([]string, userpilot.MaxBulkRecords)
	for i := range ids {
		ids[i] = strconv.Itoa(1_000_000 + i)
	}
	var body userpilot.BulkBody
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if i%len(ids) == 0 {
			body.Reuse(body.Release())
		}
		body.AddMembersWithin(ids[i%len(ids)], members, 0)
	}
}
