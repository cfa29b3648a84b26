package replication

import (
	"context"
	"fmt"

	"github.com/jackc/pglogrepl"

	"github.com/pgpilot/pgpilot/row"
)

// ReceiveWake lets tests stretch how long a receive waits.
var ReceiveWake = &receiveWake

// IdentityTypes resolves every type to itself, as the stream's TypeResolver
// does for the types pgx knows; unknown OIDs stay unknown, and the mapping
// must refuse them or send their text.
type IdentityTypes struct{}

// Resolve returns oid.
func (IdentityTypes) Resolve(_ context.Context, oid uint32) (uint32, error) { return oid, nil }

// Name is a made-up name of the type.
func (IdentityTypes) Name(_ context.Context, oid uint32, typmod int32) (string, error) {
	return fmt.Sprintf("type %d(%d)", oid, typmod), nil
}

// DecodeRow decodes a pgoutput Relation message and a row message the way
// the stream does, for the fuzz test in package replication_test (which
// runs the mapping too, and the mapping's imports import this package).
// ok is false where the input is not a relation with columns and a row;
// err is a Relation message the decoder refuses.
func DecodeRow(ctx context.Context, relationMsg, rowMsg []byte, types ColumnTypes) (rel *row.Relation, ch row.Change, ok bool, err error) {
	m, err := decodeMessage(relationMsg)
	if err != nil {
		return nil, row.Change{}, false, nil
	}
	rm, isRel := m.(*pglogrepl.RelationMessage)
	if !isRel || len(rm.Columns) == 0 {
		return nil, row.Change{}, false, nil
	}
	if rel, err = decodeRelation(ctx, rm, types); err != nil {
		return nil, row.Change{}, false, err
	}
	if !isRow(rowMsg) {
		return nil, row.Change{}, false, nil
	}
	r, err := decodeRow(rowMsg, &arena{})
	if err != nil {
		return nil, row.Change{}, false, nil
	}
	// The stream would refuse a row of another relation; mapping it anyway
	// reaches more of the mapping.
	return rel, r.change(rel), true, nil
}
