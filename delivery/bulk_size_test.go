package delivery

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/userpilot"
)

func TestMaxJSONSizeIsNeverLessThanTheEncoding(t *testing.T) {
	for _, co := range []userpilot.Company{
		{CompanyID: "4711", Metadata: map[string]any{"name": "Globex", "plan": "pro", "seats": json.Number("42"),
			"trial": false, "signed_up_at": "2024-03-01T09:30:00Z", "notes": nil}},
		{CompanyID: `Quote "Co"`, Metadata: map[string]any{"name": "R&D <EU>", "tabs": "Tab\tNewline\nCo\x00"}},
		{CompanyID: "7", Metadata: map[string]any{"ünï": "Ünïcødé GmbH 株式会社テスト Emoji 🚀", "sep": "a\u2028b\u2029c"}},
		{CompanyID: "8", Metadata: map[string]any{"bad utf-8": "\xff\xfe\xfd", "int": 42, "float": 1.5, "big": 1e300}},
		{CompanyID: "9", Metadata: map[string]any{}},
		{CompanyID: "10"},
	} {
		b, err := json.Marshal(co) // escapes more than the client's encoder (HTML)
		require.NoError(t, err)
		got := maxJSONSize(co)
		assert.GreaterOrEqual(t, got, len(b)+len(","), "%s", b)
	}
	ascii := userpilot.Company{CompanyID: "123456", Metadata: map[string]any{"name": "Company 123456", "plan": "enterprise",
		"seats": json.Number("456"), "monthly_spend": json.Number("1523447.0400000000"), "trial": true,
		"created_at": "2038-01-31T00:00:00Z", "notes": nil}}
	b, err := json.Marshal(ascii)
	require.NoError(t, err)
	assert.InDelta(t, len(b), maxJSONSize(ascii), 8, "plain ASCII is counted about exactly")
}

func TestARecordThatCannotBeEncodedFillsAJobAlone(t *testing.T) {
	co := userpilot.Company{CompanyID: "1", Metadata: map[string]any{"x": make(chan int)}}
	assert.Equal(t, maxBulkBytes, maxJSONSize(co))
}
