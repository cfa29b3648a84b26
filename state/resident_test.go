package state

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgpilot/pgpilot/userpilot"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

// Reading a store of 64 MB through bbolt's map makes all of it resident;
// the store lets those pages go again, so pgpilot's resident set is its
// own memory and a little of the store, not the whole store.
func TestTheStoresMappedPagesDoNotStayResident(t *testing.T) {
	if _, ok := residentFileBytes(); !ok {
		t.Skip("resident set not readable here")
	}
	x := openStore(t)
	value := strings.Repeat("x", 1000)
	var put []OutboxRecord
	for i := range 64_000 {
		put = append(put, OutboxRecord{CompanyID: fmt.Sprintf("company-%06d", i), Metadata: userpilot.Metadata{"notes": json.RawMessage(`"` + value + `"`)}})
	}
	require.NoError(t, x.WriteOutbox(put, nil))
	base, _ := residentFileBytes()
	n := 0
	require.NoError(t, x.ScanOutbox(func(OutboxEntry) error { n++; return nil }))
	require.Equal(t, 64_000, n)
	require.Eventually(t, func() bool {
		now, _ := residentFileBytes()
		return now < base+2*residentSlack
	}, 20*time.Second, 50*time.Millisecond, "the scan's pages are let go")
}

// The program's own file pages are told from the store's by the store's
// mapping in smaps.
func TestTheStoresResidentPagesAreItsMappings(t *testing.T) {
	if _, ok := residentFileBytes(); !ok {
		t.Skip("resident set not readable here")
	}
	x := openStore(t)
	var put []OutboxRecord
	for i := range 4_000 {
		put = append(put, OutboxRecord{CompanyID: fmt.Sprintf("company-%06d", i), Metadata: userpilot.Metadata{"notes": json.RawMessage(`"` + strings.Repeat("x", 1000) + `"`)}})
	}
	require.NoError(t, x.WriteOutbox(put, nil))
	// Read, and looked at at once: the store's own trimming may let the
	// pages go in between, so it is tried again.
	require.Eventually(t, func() bool {
		var read int64
		require.NoError(t, x.db.View(func(tx *bolt.Tx) error {
			n := 0
			err := tx.Bucket(outboxBucket).ForEach(func(k, v []byte) error { n += int(v[0]); return nil })
			read, _ = x.storeResident()
			return err
		}))
		return read > 2<<20
	}, 10*time.Second, time.Millisecond, "a read of 4 MB makes them resident, and they are counted")
	x.dropMapped()
	after, ok := x.storeResident()
	require.True(t, ok, "the store's mapping is in smaps")
	require.Less(t, after, int64(residentSlack), "and let go, they are not")
}

// A long read lets the pages it has read go as it reads on: a scan of the
// whole outbox made all of it resident before the next trim.
func TestALongScanKeepsLittleOfTheStoreResident(t *testing.T) {
	if _, ok := residentFileBytes(); !ok {
		t.Skip("resident set not readable here")
	}
	x := openStore(t)
	value := strings.Repeat("x", 1000)
	var put []OutboxRecord
	for i := range 32_000 { // 32 MB
		put = append(put, OutboxRecord{CompanyID: fmt.Sprintf("company-%06d", i), Metadata: userpilot.Metadata{"notes": json.RawMessage(`"` + value + `"`)}})
	}
	require.NoError(t, x.WriteOutbox(put, nil))
	x.dropMapped()
	var most int64
	n := 0
	require.NoError(t, x.ScanOutbox(func(OutboxEntry) error {
		if n++; n%1000 == 0 {
			if r, ok := x.storeResident(); ok {
				most = max(most, r)
			}
		}
		return nil
	}))
	require.Equal(t, 32_000, n)
	assert.Less(t, most, int64(8<<20), "at most a few MB of the 32 MB read are resident at once")
}
