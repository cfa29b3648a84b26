package userpilottest

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fastSeeds are bodies the fast path takes and bodies it must leave to the
// strict decoder (each its own reason).
var fastSeeds = []string{
	`{"companies":[{"company_id":"1","metadata":{"name":"Company 1","seats":42,"spend":1523447.0400000000,"trial":true,"gone":null,"at":"2024-03-01T09:30:00Z"}}]}`,
	`{"companies":[{"company_id":"1"},{"company_id":"Ünï","metadata":{}},{"company_id":"3","metadata":{"":false,"e":-1.5e+3}}]}`,
	`{"companies":[]}`,
	`{"companies":[{"company_id":""}]}`,
	`{"companies":[{"company_id":1}]}`,
	`{"companies":[{"company_id":"1","metadata":{"a":1,"a":2}}]}`,
	`{"companies":[{"company_id":"1","metadata":{"a":[1]}}]}`,
	`{"companies":[{"company_id":"1","metadata":{"a":01}}]}`,
	`{"companies":[{"company_id":"1","metadata":{"a":"q\"uote"}}]}`,
	`{"companies":[{"company_id":"1","metadata":{"a":"\xff"}}]}`,
	`{"companies":[{"company_id":"1","metadata":null}]}`,
	`{"companies":[{"company_id":"1"}]} `,
	`{"companies":[{"company_id":"1","extra":2}]}`,
	`{"companies": [{"company_id":"1"}]}`,
	`{"companies":[{"metadata":{},"company_id":"1"}]}`,
}

// FuzzFastDecodeMatchesStrict: whatever the fast path accepts, the strict
// decoder accepts too, with the same companies and values; what it gives
// up on is left to the strict decoder, so answers never change.
func FuzzFastDecodeMatchesStrict(f *testing.F) {
	for _, s := range fastSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if cos, ok := fastBulk(body); ok {
			want, e := strictBulk(body)
			require.Nil(t, e, "the fast path took %q, which the strict decoder refuses", body)
			assert.Equal(t, want, cos, "%q", body)
		}
		if co, ok := fastCompany(body); ok {
			want, e := strictCompany(body, "body")
			require.Nil(t, e, "the fast path took %q, which the strict decoder refuses", body)
			assert.Equal(t, want, co, "%q", body)
		}
	})
}

// TestFastDecodeTakesWhatPgpilotSends: the fast path is the one a compact
// body takes (else it would measure nothing).
func TestFastDecodeTakesWhatPgpilotSends(t *testing.T) {
	cos, ok := fastBulk([]byte(fastSeeds[0]))
	require.True(t, ok)
	require.Len(t, cos, 1)
	assert.Len(t, cos[0].metadata, 6)
	_, ok = fastBulk([]byte(fastSeeds[1]))
	assert.True(t, ok)
	for _, s := range fastSeeds[2:] {
		_, ok := fastBulk([]byte(s))
		assert.False(t, ok, s)
	}
}

// fastUserSeeds are users' bulk bodies the fast path takes and bodies it
// must leave to the strict decoder.
var fastUserSeeds = []string{
	`{"users":[{"user_id":"1","company_id":"7","metadata":{"name":"Ana","email":"a@b.c","created_at":"2024-03-01T09:30:00Z","seats":3,"gone":null}}]}`,
	`{"users":[{"user_id":"1"},{"user_id":"2","company_id":"Ünï"},{"user_id":"3","metadata":{}},{"user_id":"4","metadata":{"signed_up_at":"2024-03-01"}}]}`,
	`{"users":[]}`,
	`{"users":[{"user_id":""}]}`,
	`{"users":[{"user_id":"1","company_id":""}]}`,
	`{"users":[{"user_id":"1","company_id":null}]}`,
	`{"users":[{"user_id":"1","company_id":{"id":"2"}}]}`,
	`{"users":[{"user_id":"1","metadata":{"name":3}}]}`,
	`{"users":[{"user_id":"1","metadata":{"created_at":"yesterday"}}]}`,
	`{"users":[{"user_id":"1","metadata":{"created_at":"2024-03-01","signed_up_at":"2024-03-01"}}]}`,
	`{"users":[{"user_id":"1","metadata":{"last_seen_at":null}}]}`,
	`{"users":[{"company_id":"7","user_id":"1"}]}`,
	`{"users":[{"user_id":"1","company":{"id":"7"}}]}`,
}

// FuzzFastUserDecodeMatchesStrict is FuzzFastDecodeMatchesStrict for
// users' bulk bodies.
func FuzzFastUserDecodeMatchesStrict(f *testing.F) {
	for _, s := range fastUserSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if us, ok := fastUserBulk(body); ok {
			want, e := decodeUserBulk(body)
			require.Nil(t, e, "the fast path took %q, which the strict decoder refuses", body)
			assert.Equal(t, want, us, "%q", body)
		}
		if us, ok := checkUserBulk(body); ok {
			built, _ := fastUserBulk(body)
			require.Len(t, us, len(built))
			for i, u := range us {
				assert.Equal(t, built[i].metadata, u.meta(), "%q", body)
			}
		}
	})
}

// TestFastUserDecodeTakesWhatPgpilotSends: the fast path is the one
// pgpilot's users' bulk body takes, and leaves every doubtful one to the
// strict decoder.
func TestFastUserDecodeTakesWhatPgpilotSends(t *testing.T) {
	for _, s := range fastUserSeeds[:2] {
		_, ok := checkUserBulk([]byte(s))
		assert.True(t, ok, s)
	}
	for _, s := range fastUserSeeds[2:] {
		_, ok := checkUserBulk([]byte(s))
		assert.False(t, ok, s)
	}
}
