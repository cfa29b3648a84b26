package mapping

import "fmt"

// Related is one entry of companies.related: rows of another table that
// belong to a company through CompanyID (its value equals the company's
// company_id). It is a lookup (Metadata: the columns of the company's first
// row in OrderBy's order) or an aggregate (Aggregate: SQL aggregate
// expressions over all of the company's rows), never both.
//
// An entry of users.related is the same with Kind User: CompanyID then
// holds the column with the user's id (user_id: in the file).
type Related struct {
	// Kind is the section the entry belongs to: Company or User.
	Kind      Entity
	Table     string // as written
	Schema    string
	Name      string
	CompanyID string
	// OrderBy is a lookup's ORDER BY list, as written ("" when the table
	// holds at most one row per company).
	OrderBy   string
	Metadata  []Field
	Aggregate []Aggregate

	Line, TableLine, CompanyIDLine, OrderByLine int
	// Index is the entry's place in the list, for messages
	// (companies.related[Index]).
	Index int
}

// Aggregate maps one metadata key to an SQL aggregate expression over the
// company's related rows (`count(*)`, `max(last_login_at)`).
type Aggregate struct {
	Key  string
	SQL  string
	Type Type // TypeAuto: the expression's result type decides
	Line int
}

// IsLookup reports whether r reads one row's columns (else it aggregates).
func (r Related) IsLookup() bool { return len(r.Aggregate) == 0 }

// Path is the entry's dotted key, for messages.
func (r Related) Path() string { return fmt.Sprintf("%s.related[%d]", r.Kind.Section(), r.Index) }

// Keys are the metadata keys r sets, in file order.
func (r Related) Keys() []string {
	var keys []string
	for _, f := range r.Metadata {
		keys = append(keys, f.Key)
	}
	for _, a := range r.Aggregate {
		keys = append(keys, a.Key)
	}
	return keys
}
