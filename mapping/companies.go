package mapping

import (
	"fmt"
	"strings"
)

// Companies is the mapping of one table's rows to Userpilot company profiles.
// It is also how every stage takes the users: section (Users.Entity): Kind
// is then User, CompanyID the user_id column, and the messages name the
// users section.
type Companies struct {
	// Kind is what the rows become: Company (the zero value) or User.
	Kind Entity

	// OnDelete is the policy for deleted rows: ignore (default), mark or
	// delete; OnDeleteMetadata is what mark sends (default deleted: true).
	OnDelete         string
	OnDeleteMetadata map[string]any

	Table     string  // as written
	Schema    string  // "public" when the table is unqualified
	Name      string  // unquoted table name
	CompanyID string  // column name
	Metadata  []Field // in file order

	// Related are the lookups and aggregates over other tables' rows that
	// add metadata keys (companies.related), in file order.
	Related []Related
	// Where, when not "", is the SQL condition a companies row must match
	// to be synced (companies.where); WhereLine is its line.
	Where     string
	WhereLine int

	// KeepRemovedKeys (removed_keys: keep) leaves a key dropped from the
	// mapping as Userpilot holds it; by default (clear) each company's is
	// sent once as null, so no orphan property stays behind.
	KeepRemovedKeys bool

	// File and CompanyIDLine locate the mapping in its file so that Compile's
	// messages can point at the line to edit. Both are zero for a Companies
	// built in code.
	File          string
	CompanyIDLine int
}

// Field maps one metadata key to what it reads: a column, a key inside a
// json or jsonb column (Path), or an SQL expression on the row (SQL); its
// value may then be replaced by a label (Values).
type Field struct {
	Key    string // metadata key sent to Userpilot
	Column string // column name, as Postgres spells it; "" when SQL is set
	// Path, when not nil, reads a key inside the json or jsonb Column: one
	// object key per element, outermost first (path: company.size is
	// [company size]; path: [subscribed.quantity] one key holding a dot).
	Path []string
	// SQL, when not "", is an expression Postgres evaluates on the row
	// (the companies row, or a lookup's related row); its result is the
	// value. Column is then "".
	SQL string
	// Type is the JSON type sent: TypeAuto lets the column's Postgres
	// type decide (the JSON value's own type under Path, the
	// expression's result type for SQL); with Values, the labels' type.
	Type Type
	// Values, when not nil, maps the value's text (as Postgres prints it,
	// or a JSON scalar's under Path) to the label sent in its place;
	// Default, when not nil, is the label of a value not in Values
	// (without it, such a value is a bad value).
	Values  []Label
	Default *string
	// KeepNull (on_null: keep) leaves the key out when its value is
	// NULL (or null under Path), so Userpilot keeps the value it has;
	// by default a null is sent and clears it.
	KeepNull bool
	Line     int // line of the key in the file, 0 when built in code
	// PII acknowledges (pii: true) that the column holds personal data and
	// that sending it to Userpilot is cleared: no warning for it (see
	// PersonalData).
	PII bool
}

// Label is one entry of a Field's values: the value's text and what is
// sent in its place.
type Label struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// Derived reports whether f computes its value from the column rather
// than sending the column's value as it is.
func (f Field) Derived() bool {
	return f.Path != nil || f.Values != nil || f.Default != nil || f.SQL != ""
}

// Type is the JSON type a metadata value is sent as.
type Type string

// The types a metadata entry may ask for.
const (
	TypeAuto    Type = ""
	TypeString  Type = "string"
	TypeNumber  Type = "number"
	TypeBoolean Type = "boolean"
	TypeDate    Type = "date"
)

// ConfigError is one problem in the configuration file, with the line and
// the dotted key to edit. Msg says what is wrong, Fix what to do about it
// ("" when Msg says it all). Compile reports its problems as ConfigErrors
// too, keyed by metadata key.
type ConfigError struct {
	File string
	Line int
	Key  string
	Msg  string
	Fix  string
}

// Error formats the problem as FILE:LINE: KEY: MSG, leaving out what is
// unknown. The fix is not part of it: a list of problems (ConfigErrors)
// prints each fix on a line of its own.
func (e *ConfigError) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		b.WriteString(e.File + ": ")
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ConfigErrors is every problem found in one configuration file, in line
// order: what Parse and Load return when the file is bad.
type ConfigErrors []*ConfigError

// Error prints one problem a line, each followed by its fix, indented, on a
// line of its own:
//
//	p.yaml:3: postgres.slot: "PgPilot-1" is not a valid replication slot name
//	  fix: use 1 to 63 lower-case letters, digits and underscores, e.g. slot: pgpilot
func (es ConfigErrors) Error() string {
	var b strings.Builder
	for i, e := range es {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
		if e.Fix != "" {
			b.WriteString("\n  fix: " + e.Fix)
		}
	}
	return b.String()
}

// Unwrap returns the problems, so that errors.As finds each *ConfigError.
func (es ConfigErrors) Unwrap() []error {
	errs := make([]error, len(es))
	for i, e := range es {
		errs[i] = e
	}
	return errs
}
