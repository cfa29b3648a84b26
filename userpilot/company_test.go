package userpilot_test

import (
	"context"
	"encoding/json"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/userpilot"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// The bulk path sizes a job from JSONSize without writing the records, so
// it must be the body's length exactly, whatever the text escapes to.
func TestJSONSizeIsTheLengthOfTheBody(t *testing.T) {
	for _, co := range []userpilot.Company{
		{CompanyID: "4711", Metadata: userpilottest.Metadata(map[string]any{"name": "Globex", "plan": "pro", "seats": json.Number("42"),
			"trial": false, "signed_up_at": "2024-03-01T09:30:00Z", "notes": nil})},
		{CompanyID: `Quote "Co"`, Metadata: userpilottest.Metadata(map[string]any{"name": "R&D <EU>", "tabs": "Tab\tNewline\nCo\x00"})},
		{CompanyID: "7", Metadata: userpilottest.Metadata(map[string]any{"ünï": "Ünïcødé GmbH 株式会社テスト Emoji 🚀", "sep": "a\u2028b\u2029c"})},
		{CompanyID: "8", Metadata: userpilottest.Metadata(map[string]any{"bad utf-8": "\xff\xfe\xfd", "int": 42, "float": 1.5, "big": 1e300})},
		{CompanyID: "9", Metadata: userpilottest.Metadata(map[string]any{})},
		{CompanyID: "10"},
	} {
		body := co.AppendJSON(nil)
		assert.Equal(t, len(body), co.JSONSize(), "%s", body)
		var decoded struct {
			CompanyID string         `json:"company_id"`
			Metadata  map[string]any `json:"metadata"`
		}
		require.NoError(t, json.Unmarshal(body, &decoded), "%s", body)
		assert.Equal(t, co.CompanyID, decoded.CompanyID)
		assert.NotNil(t, decoded.Metadata, "metadata is an object, never null: %s", body)
	}
}

// The body carries each value as json.Marshal writes it: the same bytes
// the no-op index fingerprints.
func TestEncodeWritesWhatJSONMarshalWrites(t *testing.T) {
	for _, v := range []any{nil, true, false, "", "Globex", "R&D <EU>", `Quote "Co"`, "Tab\tNewline\nCo", "\x7f", "Ünïcødé",
		"\xff\xfe", "a\u2028b", json.Number("0"), json.Number("42"), json.Number("-7"), json.Number("1523447.0400000000"),
		json.Number("1e5"), 42, 1.5, int64(-3)} {
		want, err := json.Marshal(v)
		require.NoError(t, err)
		got, err := userpilot.Encode(v)
		require.NoError(t, err)
		assert.Equal(t, string(want), string(got), "%#v", v)
	}
}

// A value with no JSON form never becomes metadata: it is refused where
// it is encoded (the mapping sets such a row aside), not in a job's body.
func TestEncodeRefusesAValueWithoutJSONForm(t *testing.T) {
	_, err := userpilot.Encode(make(chan int))
	assert.Error(t, err)
	_, err = userpilot.MetadataOf(map[string]any{"x": make(chan int)})
	assert.ErrorContains(t, err, `metadata "x"`)
}

// TestBulkBodyIsTheCompaniesAsJSON: a body written company by company is
// {"companies":[…]} with each company as AppendJSON writes it; one that
// would pass the limit is left out, and the body stays as it was.
func TestBulkBodyIsTheCompaniesAsJSON(t *testing.T) {
	var empty userpilot.BulkBody
	assert.JSONEq(t, `{"companies":[]}`, string(empty.JSON()))

	a := userpilot.Company{CompanyID: "a", Metadata: userpilot.Metadata{"plan": json.RawMessage(`"pro"`)}}
	b := userpilot.Company{CompanyID: "b<", Metadata: userpilot.Metadata{}}
	var body userpilot.BulkBody
	body.Add(a)
	want := `{"companies":[` + string(a.AppendJSON(nil)) + `]}`
	assert.Equal(t, want, string(body.JSON()))
	assert.False(t, body.AddWithin(b, len(want)+3), "b does not fit")
	assert.Equal(t, want, string(body.JSON()))
	assert.Equal(t, 1, body.Len())
	require.True(t, body.AddWithin(b, 1000))
	assert.Equal(t, `{"companies":[`+string(a.AppendJSON(nil))+`,`+string(b.AppendJSON(nil))+`]}`, string(body.JSON()))
	assert.Equal(t, `{"began":"x",`+string(body.JSON()[1:]), string(body.AppendCompanies([]byte(`{"began":"x",`)))+"}")
	assert.Equal(t, 2, body.Len())
}

// TestAddSeqWithinIsAddWithinFromASequence: a company added from a
// sequence of its keys (AddSeqWithin), or from its metadata's members
// written by the caller with MetadataKey (AddMembersWithin, or into the
// body, AppendMembersWithin, as delivery writes its packed metadata), is
// the company AddWithin writes from a
// map: byte for byte when the keys come sorted, the same JSON in the order
// they come otherwise; the limit and an empty company_id are met the same
// way.
func TestAddSeqWithinIsAddWithinFromASequence(t *testing.T) {
	type kv struct{ k, v string }
	ways := []struct {
		name string
		add  func(b *userpilot.BulkBody, id string, kvs []kv, limit int) bool
	}{
		{"AddSeqWithin", func(b *userpilot.BulkBody, id string, kvs []kv, limit int) bool {
			return b.AddSeqWithin(id, func(yield func(string, json.RawMessage) bool) {
				for _, kv := range kvs {
					if !yield(kv.k, json.RawMessage(kv.v)) {
						return
					}
				}
			}, limit)
		}},
		{"AddMembersWithin", func(b *userpilot.BulkBody, id string, kvs []kv, limit int) bool {
			var members []byte
			for i, kv := range kvs {
				if i > 0 {
					members = append(members, ',')
				}
				members = append(append(members, userpilot.MetadataKey(kv.k)...), kv.v...)
			}
			return b.AddMembersWithin(id, members, limit)
		}},
		{"AppendMembersWithin", func(b *userpilot.BulkBody, id string, kvs []kv, limit int) bool {
			return b.AppendMembersWithin(id, func(dst []byte) []byte {
				for i, kv := range kvs {
					if i > 0 {
						dst = append(dst, ',')
					}
					dst = append(append(dst, userpilot.MetadataKey(kv.k)...), kv.v...)
				}
				return dst
			}, limit)
		}},
	}
	tests := []struct {
		name string
		id   string
		kvs  []kv // in the order yielded
	}{
		{"sorted keys", "4711", []kv{{"name", `"Globex"`}, {"plan", `"pro"`}, {"seats", "42"}}},
		{"mapping order", "4712", []kv{{"seats", "42"}, {"name", `"Globex"`}, {"trial", "false"}, {"created_at", `"2024-03-01T00:00:00Z"`}}},
		{"nulls", "7", []kv{{"plan", "null"}, {"deleted", "null"}}},
		{"no metadata", "8", nil},
		{"escapes in the id and keys", `Quote "Co" <&>`, []kv{{"ünï", `"Ünïcødé"`}, {"tab\tkey", "1.50"}}},
		{"no company_id", "", []kv{{"plan", `"free"`}}},
	}
	for _, way := range ways {
		t.Run(way.name, func(t *testing.T) {
			var seqBody, mapBody userpilot.BulkBody
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					co := userpilot.Company{CompanyID: tt.id, Metadata: userpilot.Metadata{}}
					for _, kv := range tt.kvs {
						co.Metadata[kv.k] = json.RawMessage(kv.v)
					}
					var one userpilot.BulkBody
					require.True(t, way.add(&one, tt.id, tt.kvs, 0))
					want := `{"companies":[` + string(co.AppendJSON(nil)) + `]}`
					assert.JSONEq(t, want, string(one.JSON()))
					assert.Equal(t, len(want), one.Size())
					sorted := sort.SliceIsSorted(tt.kvs, func(i, j int) bool { return tt.kvs[i].k < tt.kvs[j].k })
					if sorted {
						assert.Equal(t, want, string(one.JSON()), "keys yielded sorted: the bytes AddWithin writes")
					}

					// Into a body that holds companies already, against a limit.
					before := string(seqBody.JSON())
					after := seqBody.Size() + len(co.AppendJSON(nil)) // its size with co
					if seqBody.Len() > 0 {
						after++ // the comma
					}
					assert.False(t, way.add(&seqBody, tt.id, tt.kvs, after-1), "one byte past the limit")
					assert.Equal(t, before, string(seqBody.JSON()), "the body is as it was")
					require.True(t, way.add(&seqBody, tt.id, tt.kvs, after))
					require.True(t, mapBody.AddWithin(co, 0))
					assert.JSONEq(t, string(mapBody.JSON()), string(seqBody.JSON()))
					assert.Equal(t, mapBody.Size(), seqBody.Size())
					assert.Equal(t, mapBody.Len(), seqBody.Len())
				})
			}
			// The body with a record without a company_id is refused before
			// it is sent, as one written by AddWithin is.
			c, err := userpilot.New(userpilot.Options{APIKey: "k", Endpoint: "http://127.0.0.1:1"})
			require.NoError(t, err)
			for _, body := range []userpilot.BulkBody{seqBody, mapBody} {
				// (Nothing listens there: a body sent would be retried until
				// the context ends.)
				ctx, cancel := context.WithTimeout(t.Context(), time.Second)
				_, err = c.BulkIdentify(ctx, body)
				cancel()
				var rej *userpilot.RejectedError
				require.ErrorAs(t, err, &rej)
				assert.ErrorContains(t, err, "record 5")
			}
		})
	}
}
