package state

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/pgpilot/pgpilot/userpilot"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fingerprintByMarshal is how fingerprints were first made: stored indexes
// hold these, so fingerprint must give the same for every value.
func fingerprintByMarshal(key string, value any) (uint32, uint64) {
	v, err := json.Marshal(value)
	if err != nil {
		v = []byte(fmt.Sprint(value))
	}
	kh := sha256.Sum256([]byte(key))
	vh := sha256.Sum256(append(append([]byte(key), 0), v...))
	return binary.BigEndian.Uint32(kh[:4]), binary.BigEndian.Uint64(vh[:8])
}

var fingerprintValues = []any{
	nil, true, false, "", "Globex", "Company 123456", "2024-03-01T09:30:00Z", "R&D <EU>", `Quote "Co"`,
	`back\slash`, "Tab\tNewline\nCo", "\x00\x1f\x7f", "Ünïcødé GmbH", "株式会社テスト", "Emoji 🚀", "a\u2028b",
	"\xff\xfe", json.Number("0"), json.Number("42"), json.Number("-7"), json.Number("1523447.0400000000"),
	json.Number("-0.5"), json.Number("007"), json.Number("1e5"), json.Number(""), json.Number("NaN"),
	json.Number("1."), json.Number(".5"), 42, 1.5, int64(-3), map[string]any{"x": 1}, make(chan int),
}

func TestFingerprintIsWhatItAlwaysWas(t *testing.T) {
	for _, key := range []string{"plan", "", "ünï", "a\x00b"} {
		for _, v := range fingerprintValues {
			raw, err := userpilot.Encode(v)
			if err != nil {
				// No JSON form: the mapping refuses it, it never reaches the index.
				_, merr := json.Marshal(v)
				assert.Error(t, merr, "%#v has a JSON form", v)
				continue
			}
			wantK, wantV := fingerprintByMarshal(key, v)
			gotK, gotV := fingerprint(recordSHA256, key, raw)
			assert.Equal(t, wantK, gotK, "key %q", key)
			assert.Equal(t, wantV, gotV, "key %q, value %#v", key, v)
		}
	}
}

func FuzzFingerprintIsWhatItAlwaysWas(f *testing.F) {
	f.Add("name", "Globex", "12.50")
	f.Add("k", "<&>\"\\", "-0")
	f.Fuzz(func(t *testing.T, key, text, number string) {
		for _, v := range []any{text, json.Number(number)} {
			raw, err := userpilot.Encode(v)
			if err != nil {
				continue // not a valid number: json.Marshal refuses it too
			}
			wantK, wantV := fingerprintByMarshal(key, v)
			gotK, gotV := fingerprint(recordSHA256, key, raw)
			if wantK != gotK || wantV != gotV {
				t.Fatalf("key %q value %#v: fingerprint differs from json.Marshal's", key, v)
			}
		}
	})
}

// TestRecordsOfTheFirstFingerprintsStayValid: an index written with SHA-256
// fingerprints is read as it was; a record all of whose keys are sent
// again is written with xxHash, and one an update leaves keys of out keeps
// SHA-256 (the kept keys' fingerprints cannot be made again).
func TestRecordsOfTheFirstFingerprintsStayValid(t *testing.T) {
	x := openStore(t)

	// Company 1 as the first release wrote it: plan "pro", seats 3.
	v1 := []byte{recordSHA256}
	for _, kv := range []struct {
		k string
		v any
	}{{"plan", "pro"}, {"seats", json.Number("3")}} {
		kh, vh := fingerprintByMarshal(kv.k, kv.v)
		v1 = binary.BigEndian.AppendUint32(v1, kh)
		v1 = binary.BigEndian.AppendUint64(v1, vh)
	}
	putRecord(t, x, "1", v1)
	version := func() byte { return getRecord(t, x, "1")[0] }
	unchanged := func(md map[string]any) bool {
		same, err := x.Unchanged("1", userpilottest.Metadata(md))
		require.NoError(t, err)
		return same
	}
	assert.True(t, unchanged(map[string]any{"plan": "pro", "seats": json.Number("3")}))
	assert.False(t, unchanged(map[string]any{"plan": "free"}))

	require.NoError(t, x.Record([]userpilot.Company{{CompanyID: "1", Metadata: userpilottest.Metadata(map[string]any{"plan": "free"})}}))
	assert.Equal(t, byte(recordSHA256), version(), "seats was kept: the record stays as it was made")
	assert.True(t, unchanged(map[string]any{"plan": "free", "seats": json.Number("3")}))

	require.NoError(t, x.Record([]userpilot.Company{{CompanyID: "1", Metadata: userpilottest.Metadata(map[string]any{"plan": "pro", "seats": json.Number("4")})}}))
	assert.Equal(t, byte(recordValue), version(), "every key sent: written anew")
	assert.True(t, unchanged(map[string]any{"plan": "pro", "seats": json.Number("4")}))
	assert.False(t, unchanged(map[string]any{"seats": json.Number("3")}))
}
