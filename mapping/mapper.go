package mapping

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/userpilot"
)

// RowError says why one row cannot be mapped. It is a problem with the data,
// not with the mapping: the caller sets the row aside and carries on.
type RowError struct {
	Entity Entity // whose id: the company's (zero) or the user's
	Key    string // metadata key; empty for the id column
	Column string
	Reason string
}

// Error names the key and column, then the reason.
func (e *RowError) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("%s (column %q): %s", e.Entity.IDKey(), e.Column, e.Reason)
	}
	return fmt.Sprintf("metadata %q (column %q): %s", e.Key, e.Column, e.Reason)
}

// Mapper turns rows of one table into identify-company payloads. It is immutable
// after Compile and safe for concurrent use.
type Mapper struct {
	kind      Entity
	columns   []row.Column
	companyID int // index into columns: the company's id, or the user's
	fields    []compiledField
	// membership is the index in fields of the user's company
	// (MembershipKey), -1 when there is none.
	membership int
}

type compiledField struct {
	key    string
	column int // index into columns
	converter
	// path and labels derive the value from the column's text (nil: the
	// column's value as it is).
	path   *jsonPath
	labels *labels
	// keepNull leaves the key out when its value is null (on_null: keep).
	keepNull bool
	// membership: the user's company (MembershipKey), whose empty text
	// is no company, as NULL is.
	membership bool
	// null: a key the mapping dropped, which a backfill sends as null
	// (Restrict); no column is read.
	null bool
	// what names the source in messages: `column "x"`, `column "x", path a.b`.
	what string
}

// Compile checks the mapping against the table's columns and prepares the
// conversion of each mapped column. table names the table in messages
// (e.g. public.companies). Every problem is reported, each a *ConfigError
// carrying the file and line from c when it has them.
func Compile(c Companies, table string, columns []row.Column) (*Mapper, error) {
	types := pgtype.NewMap()
	m := &Mapper{kind: c.Kind, columns: append([]row.Column(nil), columns...), companyID: -1, membership: -1}
	var errs ConfigErrors
	fail := func(line int, key, format string, args ...any) {
		// The messages below end in "; fix: …": the fix travels as its
		// own field, printed on a line of its own.
		msg, fix, _ := strings.Cut(fmt.Sprintf(format, args...), "; fix: ")
		errs = append(errs, &ConfigError{File: c.File, Line: line, Key: key, Msg: msg, Fix: fix})
	}

	if i, msg := findColumn(columns, c.CompanyID, table); msg != "" {
		fail(c.CompanyIDLine, c.Kind.IDKey(), "%s", msg)
	} else {
		col := columns[i]
		switch classOf(col.TypeOID) {
		case classNumber, classText:
			m.companyID = i
		default:
			fail(c.CompanyIDLine, c.Kind.IDKey(), "column %q is %s, which cannot identify a %s; fix: choose a column of an integer, numeric, text or uuid type", col.Name, typeName(col), c.Kind)
		}
	}

	for _, f := range c.Metadata {
		if f.SQL != "" {
			continue // evaluated by Postgres (see package related), not read from the row
		}
		key := "metadata " + strconv.Quote(f.Key)
		membership := c.Kind == User && f.Membership()
		if membership {
			key = MembershipKey
		}
		i, msg := findColumn(columns, f.Column, table)
		if msg != "" {
			fail(f.Line, key, "%s", msg)
			continue
		}
		cf := compiledField{key: f.Key, column: i, keepNull: f.KeepNull, membership: membership, what: fmt.Sprintf("column %q", f.Column)}
		if f.Path != nil {
			cf.what += ", path " + strings.Join(f.Path, ".")
		}
		if membership {
			// The company's id, sent as Userpilot's company, not as
			// metadata: the same columns identify a company as
			// companies.company_id may read.
			if cl := classOf(columns[i].TypeOID); cl != classNumber && cl != classText {
				fail(f.Line, key, "column %q is %s, which cannot identify a company; fix: choose the column holding the user's company's id (an integer, numeric, text or uuid type, the values of companies.company_id)", f.Column, typeName(columns[i]))
				continue
			}
		}
		if f.Derived() {
			cf.path, cf.labels, msg = compileDerived(f, columns[i], types)
		} else {
			cf.conv, msg = chooseConversion(columns[i], f.Type)
		}
		if msg != "" {
			fail(f.Line, key, "%s", msg)
			continue
		}
		cf.oid, cf.types = columns[i].TypeOID, types
		if t, ok := types.TypeForOID(cf.oid); ok {
			cf.codec = t.Codec
		}
		if membership {
			m.membership = len(m.fields)
		}
		m.fields = append(m.fields, cf)
	}

	if len(errs) > 0 {
		return nil, errs
	}
	return m, nil
}

// findColumn returns the index of the column called name, or a message
// listing the table's columns (and a differently-cased match, the usual
// mistake: Postgres folds unquoted names to lower case).
func findColumn(columns []row.Column, name, table string) (int, string) {
	for i, col := range columns {
		if col.Name == name {
			return i, ""
		}
	}
	const maxListed = 20
	names := make([]string, 0, min(len(columns), maxListed)+1)
	hint := ""
	for _, col := range columns {
		if len(names) < maxListed {
			names = append(names, col.Name)
		}
		if hint == "" && strings.EqualFold(col.Name, name) {
			hint = fmt.Sprintf("; did you mean %q?", col.Name)
		}
	}
	if len(columns) > maxListed {
		names = append(names, "…")
	}
	return -1, fmt.Sprintf("column %q does not exist in %s (columns: %s)%s", name, table, strings.Join(names, ", "), hint)
}

// chooseConversion decides, once, how the column becomes the requested JSON
// type, or explains why it cannot.
func chooseConversion(col row.Column, t Type) (conversion, string) {
	cl := classOf(col.TypeOID)
	switch t {
	case TypeAuto:
		switch cl {
		case classNumber:
			return numberFromNumber, ""
		case classBoolean:
			return boolFromBool, ""
		case classDate:
			return dateFromDate, ""
		case classText:
			return textAsIs, ""
		}
		return 0, fmt.Sprintf("column %q is %s, which is not a primitive value (Userpilot accepts string, number, boolean or null); fix: add type: string to send its text, or map a scalar column", col.Name, typeName(col))
	case TypeString:
		if cl == classBoolean {
			return boolAsText, ""
		}
		return textAsIs, ""
	case TypeNumber:
		switch {
		case cl == classNumber:
			return numberFromNumber, ""
		case freeText(col.TypeOID):
			return numberFromText, ""
		}
	case TypeBoolean:
		switch {
		case cl == classBoolean:
			return boolFromBool, ""
		case freeText(col.TypeOID):
			return boolFromText, ""
		}
	case TypeDate:
		switch {
		case cl == classDate:
			return dateFromDate, ""
		case freeText(col.TypeOID):
			return dateFromText, ""
		}
	default:
		return 0, fmt.Sprintf("unknown type %q; fix: use string, number, boolean or date, or leave type out", string(t))
	}
	return 0, fmt.Sprintf("column %q is %s, which cannot be sent as a %s; fix: %s", col.Name, typeName(col), t, mismatchFix(cl, t))
}

func mismatchFix(cl class, t Type) string {
	auto := map[class]string{classNumber: "a number", classBoolean: "a boolean", classDate: "a date", classText: "a string"}[cl]
	if auto == "" {
		return fmt.Sprintf("write type: string to send its text, or map a column that holds a %s", t)
	}
	return fmt.Sprintf("remove type: %s to send it as %s, write type: string to send its text, or map a column that holds a %s", t, auto, t)
}

func typeName(col row.Column) string {
	if col.TypeName != "" {
		return col.TypeName
	}
	return fmt.Sprintf("of type OID %d", col.TypeOID)
}

// Columns returns the column list the mapper was compiled for; Identify's
// values follow its order.
func (m *Mapper) Columns() []row.Column {
	return append([]row.Column(nil), m.columns...)
}

// CompanyID reads only the row's company id: a DELETE carries no more than
// the old replica identity, so its other columns are not there to map.
func (m *Mapper) CompanyID(values []row.Value) (string, error) {
	if len(values) != len(m.columns) {
		return "", fmt.Errorf("map row: got %d values for %d columns; the table's columns changed: compile the mapping again", len(values), len(m.columns))
	}
	idCol := m.columns[m.companyID]
	id := values[m.companyID]
	switch {
	case id.Unchanged:
		return "", &RowError{Entity: m.kind, Column: idCol.Name, Reason: "Postgres did not send the value (an unchanged TOASTed value); fix: ALTER TABLE ... REPLICA IDENTITY FULL, or choose a shorter column"}
	case id.Null:
		return "", &RowError{Entity: m.kind, Column: idCol.Name, Reason: fmt.Sprintf("is NULL; every %s needs an id (fix: make the column NOT NULL, or choose another column)", m.kind)}
	case len(id.Text) == 0:
		return "", &RowError{Entity: m.kind, Column: idCol.Name, Reason: fmt.Sprintf("is empty; every %s needs an id (fix: choose a column that always holds one)", m.kind)}
	}
	return string(id.Text), nil
}

// jsonSlack is what a value's JSON usually adds to its text: the quotes of
// a string, "T…Z" of a date ("T00:00:00Z" after a bare date).
const jsonSlack = 12

// Identify maps one row; values[i] belongs to columns[i] as passed to Compile
// (positional, no per-row maps). A row that cannot be mapped yields a
// *RowError; a values slice of the wrong length is the caller's bug (the
// table changed without a new Compile) and yields a plain error. Nothing
// of values is kept (every string in the result is a copy), so the caller
// may reuse them.
func (m *Mapper) Identify(values []row.Value) (userpilot.Company, error) {
	var few [16]json.RawMessage
	vals := few[:0]
	if len(m.fields) > len(few) {
		vals = make([]json.RawMessage, 0, len(m.fields))
	}
	vals = vals[:len(m.fields)]
	// Every value's JSON goes into one buffer (Map sizes it): one
	// allocation per row, not one per value.
	companyID, _, err := m.Map(values, nil, vals)
	var bad BadValues
	if err != nil && !errors.As(err, &bad) {
		// The id, when known, is kept, so the row set aside can be found.
		return userpilot.Company{CompanyID: companyID}, err
	}
	out := userpilot.Company{CompanyID: companyID, Metadata: make(userpilot.Metadata, len(m.fields))}
	for i, v := range vals {
		if v != nil {
			out.Metadata[m.fields[i].key] = v
		}
	}
	// With BadValues, the keys that could be read are mapped still.
	return out, err
}

// IdentifyUser is Identify for a mapping of users (Users.Entity): the
// user's company, MembershipKey's value, is taken out of the metadata into
// CompanyID ("" when the user has none).
func (m *Mapper) IdentifyUser(values []row.Value) (userpilot.User, error) {
	co, err := m.Identify(values)
	u := userpilot.User{UserID: co.CompanyID, Metadata: co.Metadata}
	if raw, ok := u.Metadata[MembershipKey]; ok {
		delete(u.Metadata, MembershipKey)
		u.CompanyID = CompanyOf(raw)
	}
	return u, err
}

// CompanyOf is the company id a MembershipKey value holds (Map's JSON
// string), "" for none: nil (left out) or null.
func CompanyOf(v json.RawMessage) string {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' && plainASCII(v[1:len(v)-1]) {
		// The usual id, read in place (the string is its text): with
		// json.Unmarshal its target was on the heap for every user of
		// a bulk body.
		return string(v[1 : len(v)-1])
	}
	var id string
	if len(v) == 0 || json.Unmarshal(v, &id) != nil {
		return ""
	}
	return id
}

// Membership is the index in Keys (and Map's values) of the user's
// company, MembershipKey; -1 when the mapping has none.
func (m *Mapper) Membership() int { return m.membership }

// Entity is what the mapped rows become: companies or users.
func (m *Mapper) Entity() Entity { return m.kind }

// Keys returns the metadata keys, in the mapping's order: Map's values
// follow it.
func (m *Mapper) Keys() []string {
	keys := make([]string, len(m.fields))
	for i, f := range m.fields {
		keys[i] = f.key
	}
	return keys
}

// Map is Identify without a map, for a caller that keeps metadata in a
// form of its own (delivery packs it): vals (one per key of Keys) gets each
// key's JSON, or nil where the row leaves the key out (an unchanged TOAST
// value, and the keys derived from it: Userpilot keeps what it has; a
// null under on_null: keep); userpilot.Null for NULL. The JSON is
// appended to buf, which is returned (grown, so that the caller may reuse
// it for the next row); vals share its bytes until the caller writes it
// again. The company id is returned with a *RowError when it is known.
//
// One bad value costs one key: a value that cannot be read as its type
// leaves its key out (nil), the others are mapped, and the error is
// BadValues, naming each key held back and its value.
func (m *Mapper) Map(values []row.Value, buf []byte, vals []json.RawMessage) (string, []byte, error) {
	if len(values) != len(m.columns) {
		return "", buf, fmt.Errorf("map row: got %d values for %d columns; the table's columns changed: compile the mapping again", len(values), len(m.columns))
	}
	if len(vals) != len(m.fields) {
		return "", buf, fmt.Errorf("map row: room for %d values for %d keys", len(vals), len(m.fields))
	}
	companyID, err := m.CompanyID(values)
	if err != nil {
		return "", buf, err
	}
	// Each key's JSON is a slice of buf capped at its end. A value the
	// estimate did not leave room for grows the buffer; the slices taken
	// before keep the old one, which nothing writes again.
	size := 0
	for i := range m.fields {
		size += m.fields[i].room(values)
	}
	buf = slices.Grow(buf, size)
	var bad BadValues
	for i := range m.fields {
		f := &m.fields[i]
		if f.null {
			vals[i] = userpilot.Null
			continue
		}
		v := values[f.column]
		switch {
		case v.Unchanged:
			// Userpilot merges metadata: leaving the key out keeps the
			// value it already has, which is the value Postgres kept (and
			// so are the keys derived from it).
			vals[i] = nil
			continue
		case v.Null:
			vals[i] = f.nullValue() // null clears the value in Userpilot
			continue
		}
		if f.membership && len(v.Text) == 0 {
			vals[i] = userpilot.Null // no company, as NULL
			continue
		}
		start := len(buf)
		var err error
		buf, err = f.appendValue(buf, v.Text)
		switch {
		case err == errNull:
			buf = buf[:start]
			vals[i] = f.nullValue()
		case err != nil:
			buf = buf[:start]
			vals[i] = nil
			bad = append(bad, BadValue{Key: f.key, Source: f.what, Reason: err.Error()})
		default:
			vals[i] = json.RawMessage(buf[start:len(buf):len(buf)])
		}
	}
	if bad != nil {
		return companyID, buf, bad
	}
	return companyID, buf, nil
}

// room is how much of the row's buffer f's JSON is likely to take: a
// plain value's text and its quotes; a label, or a key inside a JSON
// document (a fraction of it, not the whole).
func (f *compiledField) room(values []row.Value) int {
	switch {
	case f.null:
		return 4
	case f.labels != nil:
		return f.labels.longest
	case f.path != nil:
		return 32
	}
	return len(values[f.column].Text) + jsonSlack
}

func (f *compiledField) nullValue() json.RawMessage {
	if f.keepNull {
		return nil // on_null: keep: Userpilot keeps what it has
	}
	return userpilot.Null
}

// appendValue appends the JSON of the column's text as f says; errNull
// when the value is null (a path that is missing, or leads to null).
func (f *compiledField) appendValue(dst, text []byte) ([]byte, error) {
	if f.path == nil && f.labels == nil {
		return f.appendJSON(dst, text)
	}
	if f.path == nil {
		return f.labels.appendLabel(dst, text)
	}
	if f.labels == nil {
		return f.path.appendPath(dst, text)
	}
	kind, raw, err := jsonAt(text, f.path.keys, f.path.lastWins)
	switch {
	case err != nil:
		return dst, fmt.Errorf("%s %w", quoteValue(text), err)
	case kind == jsonMissing || kind == jsonNull:
		return dst, errNull
	case kind == jsonObject || kind == jsonArray:
		return dst, fmt.Errorf("%s at %s is %s, which values: cannot list; fix: point path at a scalar", quoteValue(raw), f.path.describe(), kind)
	}
	scalar, err := jsonText(kind, raw)
	if err != nil {
		return dst, fmt.Errorf("%s %w", quoteValue(raw), err)
	}
	return f.labels.appendLabel(dst, scalar)
}

// BadValue is one key of a row whose value cannot be read as its type
// (a text "n/a" as a number, an object at a path): the key is held back,
// Userpilot keeps the value it has.
type BadValue struct {
	Key    string
	Source string // what it reads: `column "x"`, `column "x", path a.b`
	Reason string // names the value
}

// BadValues is the error of a row mapped without some of its keys: the
// others were mapped and go out.
type BadValues []BadValue

// Error names each key held back, what it reads and why, with its value.
func (bs BadValues) Error() string {
	var b strings.Builder
	for i, bv := range bs {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "metadata %q (%s): %s", bv.Key, bv.Source, bv.Reason)
	}
	b.WriteString(" (held back: the row's other keys are sent)")
	return b.String()
}

// HeldBack lists the keys held back.
func (bs BadValues) HeldBack() []string {
	keys := make([]string, len(bs))
	for i, bv := range bs {
		keys[i] = bv.Key
	}
	return keys
}

// Restrict returns a Mapper that maps only keys (those of m's among them),
// and sends each of null, a key the mapping no longer has, as null: what
// a backfill after a mapping change sends. m is unchanged.
func (m *Mapper) Restrict(keys, null []string) *Mapper {
	r := &Mapper{kind: m.kind, columns: m.columns, companyID: m.companyID, membership: -1}
	for _, f := range m.fields {
		if slices.Contains(keys, f.key) {
			if f.membership {
				r.membership = len(r.fields)
			}
			r.fields = append(r.fields, f)
		}
	}
	for _, k := range null {
		if !slices.ContainsFunc(m.fields, func(f compiledField) bool { return f.key == k }) {
			r.fields = append(r.fields, compiledField{key: k, null: true})
		}
	}
	return r
}
