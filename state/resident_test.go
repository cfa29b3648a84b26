package state

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgpilot/pgpilot/userpilot"
	"github.com/stretchr/testify/require"
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
