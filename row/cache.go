package row

// PerRelation holds one value derived from each description of a table (a
// compiled mapping, where its key columns are): derived once when a
// description is first met, by pointer, since Postgres describing the table
// again makes a new Relation. Descriptions in use are few (the stream's and
// a snapshot's take turns), so it forgets them all rather than track age.
// Not safe for concurrent use: each stage owns its own.
type PerRelation[T any] struct {
	m map[*Relation]T
}

// maxDescriptions bounds PerRelation: old descriptions are not met again.
const maxDescriptions = 8

// Get returns the value derived for rel, deriving it with make the first
// time. An error is returned, and nothing kept, so that a description that
// cannot be used fails again the next time it is met.
func (c *PerRelation[T]) Get(rel *Relation, make func(*Relation) (T, error)) (T, error) {
	if v, ok := c.m[rel]; ok {
		return v, nil
	}
	v, err := make(rel)
	if err != nil {
		return v, err
	}
	if c.m == nil || len(c.m) >= maxDescriptions {
		c.m = map[*Relation]T{}
	}
	c.m[rel] = v
	return v, nil
}
