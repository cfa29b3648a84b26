package state

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/pgpilot/pgpilot/userpilot"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// peakGrowth is how far the process's resident set rose above where it
// was while fn ran: VmHWM, reset first (clear_refs), less VmRSS before.
// The kernel records the high-water mark when pages are unmapped or let
// go (MADV_DONTNEED), so a peak the store's trimming ended is counted.
func peakGrowth(t *testing.T, fn func()) int64 {
	t.Helper()
	runtime.GC()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Skipf("the peak resident set cannot be reset here: %v", err)
	}
	before := procStatus(t, "VmRSS:")
	fn()
	return procStatus(t, "VmHWM:") - before
}

func procStatus(t *testing.T, field string) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			require.NoError(t, err)
			return kb << 10
		}
	}
	t.Fatalf("%s not in /proc/self/status", field)
	return 0
}

// spreadOutbox is a store whose outbox holds 64 MB: 64,000 records of
// 1 kB, and ids of every 128th of them, spread over the whole outbox.
func spreadOutbox(t *testing.T) (*Store, []string) {
	t.Helper()
	x := openStore(t)
	value := json.RawMessage(`"` + strings.Repeat("x", 1000) + `"`)
	var put []OutboxRecord
	var spread []string
	for i := range 64_000 {
		id := fmt.Sprintf("company-%06d", i)
		put = append(put, OutboxRecord{CompanyID: id, Metadata: userpilot.Metadata{"notes": value}})
		if i%128 == 0 {
			spread = append(spread, id)
		}
	}
	require.NoError(t, x.WriteOutbox(put, nil))
	x.dropMapped()
	return x, spread
}

// The kernel maps up to 16 pages around each page a read of the map
// faults in (fault-around, even with MADV_RANDOM), so a write of records
// spread over the store made 64 kB of it resident per record: a write of
// 500 of them (the companies in memory, written to the outbox at a tick
// of an outage) made 30 MB resident at once, pgpilot's peak RSS. A write
// now ends its transaction when the store's pages pass a budget, and goes
// on in the next.
func TestASpreadWriteKeepsLittleOfTheStoreResident(t *testing.T) {
	if _, ok := residentFileBytes(); !ok {
		t.Skip("resident set not readable here")
	}
	tests := []struct {
		name  string
		write func(x *Store, ids []string) error
	}{
		{"write", func(x *Store, ids []string) error {
			var put []OutboxRecord
			for _, id := range ids {
				put = append(put, OutboxRecord{CompanyID: id, Metadata: userpilot.Metadata{"seats": json.RawMessage(`2`)}})
			}
			return x.WriteOutbox(put, nil)
		}},
		{"merge", func(x *Store, ids []string) error {
			var merges []OutboxMerge
			for _, id := range ids {
				merges = append(merges, OutboxMerge{Record: OutboxRecord{CompanyID: id, Metadata: userpilot.Metadata{"seats": json.RawMessage(`2`)}}})
			}
			_, err := x.MergeOutbox(merges)
			return err
		}},
		{"remove", func(x *Store, ids []string) error { return x.WriteOutbox(nil, ids) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x, spread := spreadOutbox(t)
			grew := peakGrowth(t, func() { require.NoError(t, tt.write(x, spread)) })
			t.Logf("peak resident set grew %.1f MB", float64(grew)/(1<<20))
			// The budget, what the transaction holds on the heap (its
			// nodes: 4 kB a record spread), and room for the test's own.
			assert.Less(t, grew, int64(12<<20), "peak resident set grew %d MB for %d records", grew>>20, len(spread))
		})
	}
}

// A read of records spread over the store (a refill of memory from the
// outbox) lets their pages go every few records: with fault-around, a
// look every 256 made 16 MB resident between two.
func TestASpreadReadKeepsLittleOfTheStoreResident(t *testing.T) {
	if _, ok := residentFileBytes(); !ok {
		t.Skip("resident set not readable here")
	}
	x, spread := spreadOutbox(t)
	var got []OutboxRecord
	grew := peakGrowth(t, func() {
		var err error
		got, err = x.ReadOutbox(spread)
		require.NoError(t, err)
	})
	require.Len(t, got, len(spread))
	t.Logf("peak resident set grew %.1f MB", float64(grew)/(1<<20))
	// The slack, and room for the records read (1 kB each) and the test's own.
	assert.Less(t, grew, int64(6<<20), "peak resident set grew %d MB for %d records", grew>>20, len(spread))
}

// A bulk job's no-op index write of companies spread over a large index
// (10,000 users over 200,000) touched a page per company, each 64 kB
// resident with fault-around, until its commit: the overlap's short peaks
// of RSS. The write goes on in the next transaction once the store's
// pages pass the budget, as the outbox's writes do.
func TestASpreadIndexWriteKeepsLittleOfTheStoreResident(t *testing.T) {
	if _, ok := residentFileBytes(); !ok {
		t.Skip("resident set not readable here")
	}
	x := openStore(t)
	kvs := make([][2]string, 40)
	for k := range kvs {
		kvs[k] = [2]string{fmt.Sprintf("key%02d", k), `1`}
	}
	var all, spread pairs
	for i := range 100_000 {
		p := prof{id: fmt.Sprintf("company-%06d", i), kvs: kvs}
		all = append(all, p)
		if i%64 == 0 {
			spread = append(spread, prof{id: p.id, kvs: [][2]string{{"key00", `2`}}})
		}
	}
	require.NoError(t, x.RecordProfiles(all))
	x.dropMapped()
	grew := peakGrowth(t, func() { require.NoError(t, x.RecordProfiles(spread)) })
	t.Logf("peak resident set grew %.1f MB for %d companies", float64(grew)/(1<<20), len(spread))
	assert.Less(t, grew, int64(12<<20), "peak resident set grew %d MB for %d companies", grew>>20, len(spread))
}

// statmShared reads the shared pages, statm's third field, as the list of
// fields did.
func TestStatmShared(t *testing.T) {
	tests := []struct {
		statm string
		want  int64
		ok    bool
	}{
		{"765 437 409 5 0 123 0\n", 409, true},
		{"12345678 2345678 345678 5 0 123 0", 345678, true},
		{"1 2 0 0 0 0 0\n", 0, true},
		{"1 2\n", 0, false},
		{"1 2 x 0\n", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		got, ok := statmShared([]byte(tt.statm))
		assert.Equal(t, tt.ok, ok, "%q", tt.statm)
		assert.Equal(t, tt.want, got, "%q", tt.statm)
	}
	b, err := os.ReadFile("/proc/self/statm")
	require.NoError(t, err)
	f := strings.Fields(string(b))
	want, err := strconv.ParseInt(f[2], 10, 64)
	require.NoError(t, err)
	got, ok := statmShared(b)
	assert.True(t, ok)
	assert.InDelta(t, want, got, 64, "this process's statm") // it moves between the two reads
}
