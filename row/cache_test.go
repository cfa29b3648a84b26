package row

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPerRelationDerivesOncePerDescription(t *testing.T) {
	var c PerRelation[int]
	calls := 0
	derive := func(rel *Relation) (int, error) { calls++; return len(rel.Columns), nil }
	a := &Relation{Columns: []Column{{Name: "id"}}}
	b := &Relation{Columns: []Column{{Name: "id"}, {Name: "plan"}}} // the table described anew

	for range 3 {
		v, err := c.Get(a, derive)
		require.NoError(t, err)
		assert.Equal(t, 1, v)
	}
	v, err := c.Get(b, derive)
	require.NoError(t, err)
	assert.Equal(t, 2, v)
	assert.Equal(t, 2, calls, "once for each description, by pointer")
}

func TestPerRelationKeepsNoFailure(t *testing.T) {
	var c PerRelation[int]
	rel := &Relation{}
	fail := errors.New("the mapping does not fit")
	_, err := c.Get(rel, func(*Relation) (int, error) { return 0, fail })
	assert.ErrorIs(t, err, fail)
	v, err := c.Get(rel, func(*Relation) (int, error) { return 7, nil })
	require.NoError(t, err, "a description that failed is derived again")
	assert.Equal(t, 7, v)
}

func TestPerRelationStaysSmall(t *testing.T) {
	var c PerRelation[int]
	for i := range 100 {
		_, err := c.Get(&Relation{ID: uint32(i)}, func(*Relation) (int, error) { return i, nil })
		require.NoError(t, err)
	}
	assert.LessOrEqual(t, len(c.m), maxDescriptions)
}
