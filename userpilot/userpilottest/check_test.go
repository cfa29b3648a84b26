package userpilottest

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// checkSeeds add to fastSeeds what only the checking reader treats
// differently: duplicate keys found by comparing bytes, in place and past
// the keys it keeps in place.
var checkSeeds = []string{
	`{"company_id":"1","metadata":{"a":1,"b":2,"a":3}}`,
	`{"company_id":"1","metadata":{"a":1,"ab":2,"b":3}}`,
	`{"companies":[{"company_id":"1","metadata":{"k0":0,"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":7,"k8":8,"k9":9,"k10":10,"k11":11,"k12":12,"k13":13,"k14":14,"k15":15,"k16":16,"k17":17,"k3":3}}]}`,
	`{"companies":[{"company_id":"1","metadata":{"k0":0,"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":7,"k8":8,"k9":9,"k10":10,"k11":11,"k12":12,"k13":13,"k14":14,"k15":15,"k16":16,"k17":17,"k17":3}}]}`,
	`{"companies":[{"company_id":"1","metadata":{"k0":0,"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":7,"k8":8,"k9":9,"k10":10,"k11":11,"k12":12,"k13":13,"k14":14,"k15":15,"k16":16,"k17":17}}]}`,
	`{"company_id":"1","metadata":{}}`,
	`{"company_id":"1"}`,
	`{"companies":[{"company_id":"1","metadata":{"a":"x"}},{"company_id":"1","metadata":{"a":null}}]}`,
}

// decoded is what a test sees of records kept raw: their metadata decoded.
func decoded(cos []company) []company {
	if cos == nil {
		return nil
	}
	out := make([]company, len(cos))
	for i, co := range cos {
		out[i] = company{id: co.id, metadata: co.meta()}
	}
	return out
}

// FuzzCheckMatchesFast: the checking reader (what the server keeps) takes
// exactly the bodies the decoding fast path takes, and its records decode
// to what that path gives, so the server accepts, refuses and stores just
// as it did when every record was decoded on receipt. (The fast path is in
// turn fuzzed against the strict decoder: FuzzFastDecodeMatchesStrict.)
func FuzzCheckMatchesFast(f *testing.F) {
	for _, s := range append(append([]string(nil), fastSeeds...), checkSeeds...) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		fast, fastOK := fastBulk(body)
		checked, checkOK := checkBulk(body)
		require.Equal(t, fastOK, checkOK, "bulk %q", body)
		if fastOK {
			assert.Equal(t, fast, decoded(checked), "bulk %q", body)
			for _, co := range checked {
				assert.Nil(t, co.metadata, "bulk %q: decoded on receipt", body)
			}
			got, e := receiveBulk(body)
			require.Nil(t, e)
			assert.Equal(t, fast, decoded(got), "bulk %q", body)
		}
		fastCo, fastOK := fastCompany(body)
		checkedCo, checkOK := checkCompany(body)
		require.Equal(t, fastOK, checkOK, "identify %q", body)
		if fastOK {
			assert.Equal(t, fastCo, decoded([]company{checkedCo})[0], "identify %q", body)
		}
		// Whatever the fast path leaves, the server reads strictly, as
		// before.
		if !fastOK {
			want, wantErr := strictCompany(body, "body")
			got, gotErr := receiveCompany(body)
			assert.Equal(t, wantErr, gotErr, "identify %q", body)
			assert.Equal(t, want, got, "identify %q", body)
		}
	})
}

// TestCheckKeepsWhatPgpilotSendsRaw: the bodies a compact client sends take
// the checking path (else the server would decode every record again).
func TestCheckKeepsWhatPgpilotSendsRaw(t *testing.T) {
	cos, ok := checkBulk([]byte(fastSeeds[0]))
	require.True(t, ok)
	require.Len(t, cos, 1)
	assert.Nil(t, cos[0].metadata)
	assert.Equal(t, `{"name":"Company 1","seats":42,"spend":1523447.0400000000,"trial":true,"gone":null,"at":"2024-03-01T09:30:00Z"}`, string(cos[0].raw))
	assert.Len(t, cos[0].meta(), 6)
}

// TestProfilesFoldAsMergedOnReceipt: profiles merged when read (after up to
// maxPending records each, records kept raw or decoded, with wipes between)
// equal profiles merged record by record as each was applied, and the
// applied log holds every record as sent.
func TestProfilesFoldAsMergedOnReceipt(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 14))
	values := []string{`"x"`, `"y"`, `1`, `2.50`, `true`, `false`, `null`}
	s := NewHandler(Options{APIKey: "k"})
	want := map[string]map[string]any{}
	var wantApplied []Applied
	for n := range 3_000 {
		if n%1_000 == 999 {
			s.Wipe()
			clear(want)
			continue
		}
		id := "c0" // updated more than maxPending times between reads
		if rng.IntN(2) == 0 {
			id = fmt.Sprintf("c%d", 1+rng.IntN(19))
		}
		var parts []string
		for _, k := range []string{"a", "b", "c", "d"} {
			if rng.IntN(2) == 0 {
				parts = append(parts, fmt.Sprintf("%q:%s", k, values[rng.IntN(len(values))]))
			}
		}
		body := fmt.Sprintf(`{"company_id":%q,"metadata":{%s}}`, id, strings.Join(parts, ","))
		if rng.IntN(5) == 0 {
			body = fmt.Sprintf(`{"company_id":%q}`, id)
		}
		// The strict reading is the reference; the server gets the raw
		// record or, now and then, the decoded one (as from a body only
		// the strict decoder reads).
		ref, e := strictCompany([]byte(body), "body")
		require.Nil(t, e, body)
		co, ok := checkCompany([]byte(body))
		require.True(t, ok, body)
		if rng.IntN(3) == 0 {
			co = ref
		}
		s.lock()
		s.applyLocked("identify", []company{co})
		s.unlock()

		md := want[id]
		if md == nil {
			md = map[string]any{}
			want[id] = md
		}
		for k, v := range ref.metadata {
			md[k] = v // a null clears the value: the key holds null
		}
		wantApplied = append(wantApplied, Applied{Kind: "identify", CompanyID: id, Metadata: copyMetadata(ref.metadata)})
		if rng.IntN(50) == 0 {
			require.Equal(t, want, s.Companies(), "after record %d", n)
		}
	}
	assert.Equal(t, want, s.Companies())
	for id, md := range want {
		got, ok := s.Company(id)
		require.True(t, ok, id)
		assert.Equal(t, md, got, id)
	}
	assert.Equal(t, wantApplied, s.Applied())
}

// TestProfileMergesPastMaxPending: a company updated many times without a
// read keeps every update (merged maxPending at a time).
func TestProfileMergesPastMaxPending(t *testing.T) {
	s := NewHandler(Options{APIKey: "k"})
	want := map[string]any{}
	for i := range 5 * maxPending {
		body := fmt.Sprintf(`{"company_id":"1","metadata":{"k%d":%d}}`, i, i)
		if i%5 == 4 { // and a null now and then
			body = fmt.Sprintf(`{"company_id":"1","metadata":{"k%d":%d,"k%d":null}}`, i, i, i-1)
		}
		co, ok := checkCompany([]byte(body))
		require.True(t, ok, body)
		s.lock()
		s.applyLocked("identify", []company{co})
		s.unlock()
		want[fmt.Sprintf("k%d", i)] = json.Number(fmt.Sprint(i))
		if i%5 == 4 {
			want[fmt.Sprintf("k%d", i-1)] = nil // cleared: held as null
		}
	}
	got, ok := s.Company("1")
	require.True(t, ok)
	assert.Equal(t, want, got)
	assert.Len(t, s.Applied(), 5*maxPending)
}
