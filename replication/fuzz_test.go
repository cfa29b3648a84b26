package replication_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/userpilot"
)

// FuzzDecodeToPayload feeds arbitrary bytes as a pgoutput Relation message
// and a row message (Insert, Update, Delete) through the stream's decoding,
// then the mapping, then the JSON sent to Userpilot: nothing may panic, and
// every payload produced has a company_id and primitive metadata only.
// The seed corpus (testdata/fuzz/FuzzDecodeToPayload) holds real messages
// of the companies table, built per the pgoutput protocol.
func FuzzDecodeToPayload(f *testing.F) {
	f.Fuzz(func(t *testing.T, relationMsg, rowMsg []byte) {
		ctx := context.Background()
		rel, ch, ok, err := replication.DecodeRow(ctx, relationMsg, rowMsg, replication.IdentityTypes{})
		if err != nil {
			t.Fatalf("decodeRelation: %v", err)
		}
		if !ok {
			return
		}
		for _, typ := range []mapping.Type{mapping.TypeAuto, mapping.TypeString} {
			c := mapping.Companies{CompanyID: rel.Columns[0].Name}
			cols := make([]row.Column, len(rel.Columns))
			for i, col := range rel.Columns {
				cols[i] = row.Column{Name: col.Name, TypeOID: col.TypeOID, TypeName: col.TypeName}
				c.Metadata = append(c.Metadata, mapping.Field{Key: fmt.Sprintf("c%d", i), Column: col.Name, Type: typ})
			}
			mapper, err := mapping.Compile(c, rel.Table.String(), cols)
			if err != nil {
				continue // refused at start, with a message: never reaches a row
			}
			for _, vals := range [][]row.Value{ch.Values, ch.Old} {
				mv := make([]row.Value, len(vals))
				for i, v := range vals {
					mv[i] = row.Value{Text: v.Text, Null: v.Null, Unchanged: v.Unchanged}
				}
				id, err := mapper.Identify(mv)
				if err != nil {
					continue // set aside as a dead letter
				}
				checkPayload(t, userpilot.Company{CompanyID: id.CompanyID, Metadata: id.Metadata})
			}
		}
	})
}

// checkPayload asserts that co, as JSON, is a payload Userpilot accepts.
func checkPayload(t *testing.T, co userpilot.Company) {
	t.Helper()
	body, err := json.Marshal(co)
	if err != nil {
		t.Fatalf("payload does not encode: %v (%#v)", err, co)
	}
	var got struct {
		CompanyID *string        `json:"company_id"`
		Metadata  map[string]any `json:"metadata"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("payload is not JSON: %v: %s", err, body)
	}
	if got.CompanyID == nil || *got.CompanyID == "" {
		t.Fatalf("payload without company_id: %s", body)
	}
	for k, v := range got.Metadata {
		switch v.(type) {
		case nil, bool, string, json.Number:
		default:
			t.Fatalf("metadata %q is %T, not a primitive: %s", k, v, body)
		}
	}
}
