package mapping

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/pgpilot/pgpilot/userpilot"
)

// class groups Postgres types by the JSON value they can become.
type class int

const (
	classStructured class = iota // json, jsonb, bytea, arrays, ranges, composites, unknown types
	classNumber
	classBoolean
	classDate
	classText
)

// OIDs pgtype has no constant for.
const (
	moneyOID = 790
)

func classOf(oid uint32) class {
	switch oid {
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.OIDOID,
		pgtype.Float4OID, pgtype.Float8OID, pgtype.NumericOID:
		return classNumber
	case pgtype.BoolOID:
		return classBoolean
	case pgtype.DateOID, pgtype.TimestampOID, pgtype.TimestamptzOID:
		return classDate
	case pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID, pgtype.NameOID, pgtype.QCharOID,
		pgtype.UUIDOID, pgtype.InetOID, pgtype.CIDROID, pgtype.MacaddrOID, pgtype.Macaddr8OID,
		pgtype.TimeOID, pgtype.TimetzOID, pgtype.IntervalOID, moneyOID, pgtype.XMLOID:
		return classText
	}
	return classStructured
}

// freeText reports whether a text-class column can hold arbitrary text. Only
// those may be read as a number, boolean or date row by row: a uuid or an
// interval never parses as one, so such a mapping is refused at Compile
// rather than failing on every row.
func freeText(oid uint32) bool {
	switch oid {
	case pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID, pgtype.NameOID, pgtype.QCharOID:
		return true
	}
	return false
}

// conversion is how one column's text becomes one JSON value, chosen once
// by Compile.
type conversion int

const (
	textAsIs         conversion = iota // the Postgres text, as a string
	boolAsText                         // bool → "true" / "false"
	numberFromNumber                   // decoded by pgx, exact
	numberFromText                     // parsed per row as an exact decimal
	boolFromBool                       // decoded by pgx
	boolFromText                       // true/false/t/f/yes/no/on/off/1/0
	dateFromDate                       // decoded by pgx, printed in UTC
	dateFromText                       // RFC 3339 or Postgres ISO text
)

// converter turns the text of one column into a JSON value. It holds the
// codec resolved at Compile so that a row costs no type lookup.
type converter struct {
	conv  conversion
	oid   uint32
	codec pgtype.Codec
	types *pgtype.Map
}

// value converts text. The error is a reason for a RowError.
func (c converter) value(text []byte) (any, error) {
	if v, ok := c.fast(text); ok {
		return v, nil
	}
	return c.decode(text)
}

// appendJSON appends text's JSON value to dst, encoded once (the no-op
// index, the bulk sizing and the body all use these bytes).
func (c converter) appendJSON(dst, text []byte) ([]byte, error) {
	if b, ok := c.appendFastJSON(dst, text); ok {
		return b, nil
	}
	v, err := c.value(text)
	if err != nil {
		return dst, err
	}
	enc, err := userpilot.Encode(v)
	if err != nil {
		return dst, err
	}
	return append(dst, enc...), nil
}

// plainASCII reports whether JSON writes text as is between quotes:
// printable ASCII without '"', '\\' or the HTML characters json.Marshal
// escapes.
func plainASCII(text []byte) bool {
	for _, c := range text {
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// decode converts text the long way: pgx decodes it, and the result is
// written out for JSON. It is the reference the fast paths must match.
func (c converter) decode(text []byte) (any, error) {
	switch c.conv {
	case textAsIs:
		return string(text), nil
	case boolAsText:
		b, err := c.decodeBool(text)
		if err != nil {
			return nil, err
		}
		return strconv.FormatBool(b), nil
	case numberFromNumber:
		return c.decodeNumber(text)
	case numberFromText:
		var n pgtype.Numeric
		if err := n.ScanScientific(strings.TrimSpace(string(text))); err != nil {
			return nil, fmt.Errorf("cannot read %s as a number", quoteValue(text))
		}
		return numericNumber(n), nil
	case boolFromBool:
		return c.decodeBool(text)
	case boolFromText:
		switch strings.ToLower(strings.TrimSpace(string(text))) {
		case "true", "t", "yes", "on", "1":
			return true, nil
		case "false", "f", "no", "off", "0":
			return false, nil
		}
		return nil, fmt.Errorf("cannot read %s as a boolean (accepted: true/false, t/f, yes/no, on/off, 1/0)", quoteValue(text))
	case dateFromDate:
		v, err := c.codec.DecodeValue(c.types, c.oid, pgtype.TextFormatCode, text)
		if err != nil {
			return nil, fmt.Errorf("cannot decode %s: %w", quoteValue(text), err)
		}
		return dateValue(v), nil
	case dateFromText:
		return c.parseDate(text)
	}
	return nil, fmt.Errorf("unknown conversion %d", c.conv)
}

func (c converter) decodeBool(text []byte) (bool, error) {
	v, err := c.codec.DecodeValue(c.types, c.oid, pgtype.TextFormatCode, text)
	if err != nil {
		return false, fmt.Errorf("cannot decode %s as a boolean: %w", quoteValue(text), err)
	}
	b, ok := v.(bool)
	if !ok {
		return false, fmt.Errorf("cannot decode %s as a boolean: pgx returned %T", quoteValue(text), v)
	}
	return b, nil
}

// decodeNumber decodes a number-class column with pgx and writes it as an
// exact JSON number. NaN and ±Infinity have no JSON form and become null.
func (c converter) decodeNumber(text []byte) (any, error) {
	v, err := c.codec.DecodeValue(c.types, c.oid, pgtype.TextFormatCode, text)
	if err != nil {
		return nil, fmt.Errorf("cannot decode %s as a number: %w", quoteValue(text), err)
	}
	switch n := v.(type) {
	case int16:
		return json.Number(strconv.FormatInt(int64(n), 10)), nil
	case int32:
		return json.Number(strconv.FormatInt(int64(n), 10)), nil
	case int64:
		return json.Number(strconv.FormatInt(n, 10)), nil
	case uint32:
		return json.Number(strconv.FormatUint(uint64(n), 10)), nil
	case float32:
		return floatNumber(float64(n), n)
	case float64:
		return floatNumber(n, n)
	case pgtype.Numeric:
		return numericNumber(n), nil
	}
	return nil, fmt.Errorf("cannot decode %s as a number: pgx returned %T", quoteValue(text), v)
}

// floatNumber writes f in the shortest form that reads back as the same
// float4 or float8 (orig keeps the width), as encoding/json does: plain digits
// between 1e-6 and 1e21, exponent notation outside.
func floatNumber(f float64, orig any) (any, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, nil
	}
	b, err := json.Marshal(orig)
	if err != nil {
		return nil, fmt.Errorf("write %v as JSON: %w", orig, err)
	}
	return json.Number(b), nil
}

// numericNumber writes a numeric exactly, digit for digit and without an
// exponent, as pgx prints it; no float64 on the way. NaN and ±Infinity
// become null.
func numericNumber(n pgtype.Numeric) any {
	if !n.Valid || n.NaN || n.InfinityModifier != pgtype.Finite {
		return nil
	}
	if n.Int == nil || n.Int.Sign() == 0 && n.Exp > 0 {
		// pgx prints zero with a positive exponent ("00" parses so) as
		// "00", which is not JSON.
		return json.Number("0")
	}
	b, err := n.MarshalJSON()
	if err != nil {
		return nil
	}
	return json.Number(b)
}

// dateValue prints a decoded date or timestamp as RFC 3339 in UTC. Values
// RFC 3339 cannot express (±infinity, years before 1 or after 9999) become
// null.
func dateValue(v any) any {
	t, ok := v.(time.Time)
	if !ok {
		return nil // pgtype.InfinityModifier
	}
	t = t.UTC()
	if t.Year() < 1 || t.Year() > 9999 {
		return nil
	}
	return t.Format(time.RFC3339Nano)
}

// parseDate reads a text column as a date: RFC 3339, or the ISO forms
// Postgres prints for timestamptz, timestamp (taken as UTC) and date.
func (c converter) parseDate(text []byte) (any, error) {
	s := strings.TrimSpace(string(text))
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return dateValue(t), nil
	}
	candidates := []string{s}
	if len(s) > 10 && s[10] == 'T' {
		candidates = append(candidates, s[:10]+" "+s[11:]) // ISO 8601 without a zone
	}
	for _, cand := range candidates {
		for _, oid := range []uint32{pgtype.TimestamptzOID, pgtype.TimestampOID, pgtype.DateOID} {
			typ, ok := c.types.TypeForOID(oid)
			if !ok {
				continue
			}
			if v, err := typ.Codec.DecodeValue(c.types, oid, pgtype.TextFormatCode, []byte(cand)); err == nil {
				return dateValue(v), nil
			}
		}
	}
	return nil, fmt.Errorf("cannot read %s as a date (expected RFC 3339 like 2024-03-01T09:30:00Z, or Postgres ISO like 2024-03-01 09:30:00+00)", quoteValue(text))
}

// quoteValue quotes a row value for a message, cut short so that one odd
// value cannot flood a log line.
func quoteValue(text []byte) string {
	const max = 64
	if len(text) > max {
		return strconv.Quote(string(text[:max])) + "…"
	}
	return strconv.Quote(string(text))
}
