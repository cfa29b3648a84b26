package mapping

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgpilot/pgpilot/row"
)

// A derived key (path:, values:) is compiled, like a plain one, into what
// a row's text goes through: a path into the column's JSON, then a label,
// or a conversion of the JSON scalar to the type asked for. Each step
// appends to the row's buffer; nothing is allocated on the way unless a
// value needs the long way (a string with escapes, a number in another
// form), as for plain columns.

// jsonPath reads a key inside a json or jsonb column.
type jsonPath struct {
	keys     []string
	lastWins bool // json (not jsonb) may repeat a key: the last one counts, as for ->
	// text converts the scalar's text for type: string, number, boolean
	// or date; nil for TypeAuto (the JSON value's own type).
	text *converter
	// typ is the type asked for, for messages.
	typ Type
}

// labels are a key's values: (each value's text → its label's JSON) and
// default:.
type labels struct {
	json     map[string][]byte
	fallback []byte // nil: a value not listed is a bad value
	longest  int    // the longest label's JSON, to size the row's buffer
}

// errNull says the value is null: sent as null, or left out (on_null:
// keep).
var errNull = fmt.Errorf("null")

// appendPath appends the JSON of the value at p in doc (the column's
// text), converted as p says; errNull when it is null or missing.
func (p *jsonPath) appendPath(dst, doc []byte) ([]byte, error) {
	kind, raw, err := jsonAt(doc, p.keys, p.lastWins)
	if err != nil {
		return dst, fmt.Errorf("%s %w", quoteValue(doc), err)
	}
	return p.appendScalar(dst, kind, raw)
}

func (p *jsonPath) appendScalar(dst []byte, kind jsonKind, raw []byte) ([]byte, error) {
	switch kind {
	case jsonMissing, jsonNull:
		return dst, errNull
	case jsonObject, jsonArray:
		if p.typ != TypeString {
			return dst, fmt.Errorf("%s at %s is %s, which is not a primitive value (Userpilot accepts string, number, boolean or null); fix: add type: string to send its JSON text, or point path at a key inside it",
				quoteValue(raw), p.describe(), kind)
		}
		return p.text.appendJSON(dst, raw)
	}
	if p.text == nil {
		// The JSON value's own type: a number, true or false as printed; a
		// string copied as is when JSON and userpilot.Encode would write
		// it so, else read and written again.
		if kind != jsonString || plainASCII(raw[1:len(raw)-1]) {
			return append(dst, raw...), nil
		}
		text, err := jsonText(kind, raw)
		if err != nil {
			return dst, fmt.Errorf("%s %w", quoteValue(raw), err)
		}
		return textConverter.appendJSON(dst, text)
	}
	if kind == jsonBool && p.typ == TypeNumber || kind != jsonString && p.typ == TypeDate {
		return dst, fmt.Errorf("cannot read %s (%s at %s) as a %s", raw, kind, p.describe(), p.typ)
	}
	if kind == jsonBool && p.typ == TypeBoolean || kind == jsonNumber && p.typ == TypeNumber {
		return append(dst, raw...), nil
	}
	text, err := jsonText(kind, raw)
	if err != nil {
		return dst, fmt.Errorf("%s %w", quoteValue(raw), err)
	}
	return p.text.appendJSON(dst, text)
}

func (p *jsonPath) describe() string {
	return "path " + strings.Join(p.keys, ".")
}

// label appends the label of text (a column's text, or a JSON scalar's).
func (l *labels) appendLabel(dst, text []byte) ([]byte, error) {
	if j, ok := l.json[string(text)]; ok {
		return append(dst, j...), nil
	}
	if l.fallback != nil {
		return append(dst, l.fallback...), nil
	}
	return dst, fmt.Errorf("%s is not one of the values: listed, and there is no default; fix: add it to values:, or add default: with the label for the others", quoteValue(text))
}

// textConverter writes any text as a JSON string.
var textConverter = &converter{conv: textAsIs}

// compileDerived prepares f's path and labels for col, or says why it
// cannot. conv is then the conversion of the column itself (for a plain
// key), unused for a derived one.
func compileDerived(f Field, col row.Column, types *pgtype.Map) (*jsonPath, *labels, string) {
	var path *jsonPath
	if f.Path != nil {
		if col.TypeOID != pgtype.JSONBOID && col.TypeOID != pgtype.JSONOID {
			return nil, nil, fmt.Sprintf("column %q is %s; path: reads a key inside a json or jsonb column; fix: map the column without path:, or name a json or jsonb column", col.Name, typeName(col))
		}
		path = &jsonPath{keys: f.Path, lastWins: col.TypeOID == pgtype.JSONOID}
		if f.Values == nil {
			path.typ = f.Type
			if f.Type != TypeAuto {
				path.text = textTo(f.Type, types)
			}
		}
	} else if f.Values != nil && classOf(col.TypeOID) == classStructured && col.TypeOID != pgtype.JSONOID && col.TypeOID != pgtype.JSONBOID {
		// An array's or a range's text could be listed, but never as the
		// operator reads it: refused rather than never matching.
		return nil, nil, fmt.Sprintf("column %q is %s, whose values values: cannot list; fix: map a scalar column, or an expression with sql:", col.Name, typeName(col))
	} else if f.Values != nil && (col.TypeOID == pgtype.JSONBOID || col.TypeOID == pgtype.JSONOID) {
		return nil, nil, fmt.Sprintf("column %q is %s: values: lists a key's values; fix: add path: with the key inside it", col.Name, typeName(col))
	}
	if f.Values == nil {
		if f.Default != nil {
			return nil, nil, "default: is the label of a value values: does not list; fix: add values:, or remove default"
		}
		return path, nil, ""
	}
	l := &labels{json: make(map[string][]byte, len(f.Values))}
	label := textTo(f.Type, types)
	if f.Type == TypeAuto {
		label = textConverter
	}
	encode := func(to string) ([]byte, string) {
		j, err := label.appendJSON(nil, []byte(to))
		if err != nil {
			return nil, fmt.Sprintf("label %q cannot be sent as a %s: %v; fix: write a label of that type, or remove type: to send the labels as strings", to, f.Type, err)
		}
		l.longest = max(l.longest, len(j))
		return j, ""
	}
	for _, v := range f.Values {
		from, msg := valueText(v.From, col, path != nil)
		if msg != "" {
			return nil, nil, msg
		}
		if l.json[from], msg = encode(v.To); msg != "" {
			return nil, nil, msg
		}
	}
	if f.Default != nil {
		var msg string
		if l.fallback, msg = encode(*f.Default); msg != "" {
			return nil, nil, msg
		}
	}
	return path, l, ""
}

// textTo is the conversion of a text (a JSON scalar's, a label) to t.
func textTo(t Type, types *pgtype.Map) *converter {
	c := &converter{oid: pgtype.TextOID, types: types}
	switch t {
	case TypeNumber:
		c.conv = numberFromText
	case TypeBoolean:
		c.conv = boolFromText
	case TypeDate:
		c.conv = dateFromText
	default:
		c.conv = textAsIs
	}
	return c
}

// valueText is a values: entry's value as the row will print it: an
// integer without leading zeros, a boolean as t or f (Postgres's text),
// anything else as written. A value the column can never hold is refused.
func valueText(from string, col row.Column, inJSON bool) (string, string) {
	if inJSON {
		return from, "" // a JSON scalar: a string's characters, a number's digits, true or false
	}
	switch col.TypeOID {
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID:
		n, err := strconv.ParseInt(strings.TrimSpace(from), 10, 64)
		if err != nil {
			return "", fmt.Sprintf("values: %q is not an integer, and column %q is %s; fix: list the column's values as Postgres prints them", from, col.Name, typeName(col))
		}
		return strconv.FormatInt(n, 10), ""
	case pgtype.BoolOID:
		switch strings.ToLower(strings.TrimSpace(from)) {
		case "true", "t", "yes", "on", "1":
			return "t", ""
		case "false", "f", "no", "off", "0":
			return "f", ""
		}
		return "", fmt.Sprintf("values: %q is not a boolean, and column %q is boolean; fix: list true and false", from, col.Name)
	}
	return from, ""
}
