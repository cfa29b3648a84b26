package mapping

import (
	"encoding/json"
	"strconv"

	"github.com/jackc/pgx/v5/pgtype"
)

// Fast paths for the values every change carries. Postgres prints an
// integer, a numeric, a boolean, a date or a timestamp in one canonical
// text form (the session uses DateStyle ISO and TimeZone UTC); when the
// text is in that form, its JSON value can be written from the text itself,
// without pgx decoding it into an int, a big.Int or a time.Time and the
// result being formatted again. That is most of a row's cost and
// allocations. Anything else (another form, NaN, infinity, a BC date, a
// bad value) takes the long way, converter.decode, which the fast paths
// are tested to match exactly (TestFastPathsMatchTheLongWay, FuzzFastPaths).

// fast converts text when it is in canonical form; ok is false otherwise.
func (c converter) fast(text []byte) (v any, ok bool) {
	switch c.conv {
	case numberFromNumber:
		if c.plainNumber(text) {
			return json.Number(text), true
		}
	case boolFromBool, boolAsText:
		if len(text) != 1 || text[0] != 't' && text[0] != 'f' {
			return nil, false
		}
		b := text[0] == 't'
		if c.conv == boolAsText {
			return strconv.FormatBool(b), true
		}
		return b, true
	case dateFromDate:
		if s, ok := isoTimestamp(c.oid, text); ok {
			return s, true
		}
	}
	return nil, false
}

// fastJSON is appendFastJSON into a buffer of its own.
func (c converter) fastJSON(text []byte) (json.RawMessage, bool) {
	b, ok := c.appendFastJSON(nil, text)
	return b, ok
}

// appendFastJSON appends the JSON of text to dst straight from the row's
// bytes when it is in canonical form; ok is false otherwise (dst is then
// returned as it was), and the value takes the long way (decode, then
// userpilot.Encode), which gives the same bytes.
func (c converter) appendFastJSON(dst, text []byte) ([]byte, bool) {
	switch c.conv {
	case textAsIs:
		if plainASCII(text) {
			return append(append(append(dst, '"'), text...), '"'), true
		}
	case numberFromNumber:
		if c.plainNumber(text) {
			return append(dst, text...), true
		}
	case numberFromText:
		// A text column (or a JSON string) read as a number: a plain
		// decimal is its own JSON, digit for digit ("741.00" stays so).
		if plainDecimal(text) {
			return append(dst, text...), true
		}
	case boolFromBool, boolAsText:
		if len(text) != 1 || text[0] != 't' && text[0] != 'f' {
			return dst, false
		}
		switch {
		case c.conv == boolFromBool && text[0] == 't':
			return append(dst, "true"...), true
		case c.conv == boolFromBool:
			return append(dst, "false"...), true
		case text[0] == 't':
			return append(dst, `"true"`...), true
		}
		return append(dst, `"false"`...), true
	case dateFromDate:
		n := len(dst)
		if b, ok := appendISOTimestamp(append(dst, '"'), c.oid, text); ok {
			return append(b, '"'), true
		}
		return dst[:n], false
	case dateFromText:
		// A text (or a JSON string) read as a date: the forms most sent
		// are Postgres's own and RFC 3339 in UTC.
		n := len(dst)
		for _, oid := range [...]uint32{pgtype.DateOID, pgtype.TimestamptzOID, pgtype.TimestampOID} {
			if b, ok := appendISOTimestamp(append(dst[:n], '"'), oid, text); ok {
				return append(b, '"'), true
			}
		}
		if b, ok := appendRFC3339UTC(append(dst[:n], '"'), text); ok {
			return append(b, '"'), true
		}
		return dst[:n], false
	}
	return dst, false
}

// appendRFC3339UTC appends text, RFC 3339 in UTC (2024-03-01T09:30:00Z,
// 2024-03-01T09:30:00.50Z), as time.Format writes it back (no trailing
// zeros in the fraction); ok is false for any other form.
func appendRFC3339UTC(dst, text []byte) ([]byte, bool) {
	if len(text) < 20 || text[10] != 'T' || text[len(text)-1] != 'Z' {
		return dst, false
	}
	// The same text with Postgres's separator and offset is what
	// appendISOTimestamp checks and writes.
	var iso [40]byte
	if len(text)+2 > len(iso) {
		return dst, false
	}
	n := copy(iso[:], text[:len(text)-1])
	iso[10] = ' '
	n += copy(iso[n:], "+00")
	return appendISOTimestamp(dst, pgtype.TimestamptzOID, iso[:n])
}

// plainNumber reports whether text, of a numberFromNumber column, is a
// number in the canonical form fast takes as is.
func (c converter) plainNumber(text []byte) bool {
	switch c.oid {
	case pgtype.Int2OID:
		return plainInteger(text, 16)
	case pgtype.Int4OID:
		return plainInteger(text, 32)
	case pgtype.Int8OID:
		return plainInteger(text, 64)
	case pgtype.NumericOID:
		return plainDecimal(text)
	}
	return false
}

func isDigit(b byte) bool { return '0' <= b && b <= '9' }

// plainInteger reports whether text is an integer as Postgres prints one
// (an optional '-', digits without a leading zero, not "-0") that fits in
// bits: then the number pgx would decode prints back as text, exactly.
func plainInteger(text []byte, bits int) bool {
	digits := text
	if len(digits) > 0 && digits[0] == '-' {
		digits = digits[1:]
	}
	if len(digits) == 0 || digits[0] == '0' && len(text) > 1 {
		return false
	}
	for _, b := range digits {
		if !isDigit(b) {
			return false
		}
	}
	if len(digits) < 18 && bits == 64 || len(digits) < 9 && bits == 32 || len(digits) < 4 && bits == 16 {
		return true // fits, whatever the digits
	}
	_, err := strconv.ParseInt(string(text), 10, bits)
	return err == nil
}

// plainDecimal reports whether text is a finite numeric as Postgres prints
// one: an optional '-', an integer part without leading zeros, optionally
// '.' and at least one digit, and not a negative zero. pgx reads it into
// digits and an exponent and numericNumber prints those back as the same
// text, trailing zeros included.
func plainDecimal(text []byte) bool {
	i := 0
	neg := len(text) > 0 && text[0] == '-'
	if neg {
		i++
	}
	start := i
	for i < len(text) && isDigit(text[i]) {
		i++
	}
	if i == start || i-start > 1 && text[start] == '0' {
		return false
	}
	nonZero := text[start] != '0'
	if i < len(text) {
		if text[i] != '.' {
			return false
		}
		i++
		frac := i
		for i < len(text) && isDigit(text[i]) {
			nonZero = nonZero || text[i] != '0'
			i++
		}
		if i == frac || i != len(text) {
			return false
		}
	}
	return !neg || nonZero
}

// isoTimestamp writes a date, timestamp or timestamptz printed in ISO
// style in UTC (2024-03-01, 2024-03-01 09:30:00.5, 2024-03-01
// 09:30:00.5+00) as RFC 3339 in UTC (2024-03-01T00:00:00Z,
// 2024-03-01T09:30:00.5Z), the text dateValue gives for it. ok is false
// for a 5-digit or BC year, infinity, an offset other than +00 (TimeZone is
// not UTC), more than six fractional digits, or an impossible date.
func isoTimestamp(oid uint32, text []byte) (string, bool) {
	b, ok := appendISOTimestamp(nil, oid, text)
	return string(b), ok
}

// appendISOTimestamp is isoTimestamp appending to dst (dst is returned as
// it was when ok is false).
func appendISOTimestamp(dst []byte, oid uint32, text []byte) ([]byte, bool) {
	if len(text) < 10 || text[4] != '-' || text[7] != '-' {
		return dst, false
	}
	year, ok1 := number(text[0:4])
	month, ok2 := number(text[5:7])
	day, ok3 := number(text[8:10])
	if !ok1 || !ok2 || !ok3 || year < 1 || month < 1 || month > 12 || day < 1 || day > daysIn(year, month) {
		return dst, false
	}
	if oid == pgtype.DateOID {
		if len(text) != 10 {
			return dst, false
		}
		return append(append(dst, text...), "T00:00:00Z"...), true
	}
	if len(text) < 19 || text[10] != ' ' || text[13] != ':' || text[16] != ':' {
		return dst, false
	}
	hour, ok1 := number(text[11:13])
	minute, ok2 := number(text[14:16])
	second, ok3 := number(text[17:19])
	if !ok1 || !ok2 || !ok3 || hour > 23 || minute > 59 || second > 59 {
		return dst, false
	}
	rest := text[19:]
	var frac []byte
	if len(rest) > 0 && rest[0] == '.' {
		n := 1
		for n < len(rest) && isDigit(rest[n]) {
			n++
		}
		if n == 1 || n > 7 {
			return dst, false
		}
		frac, rest = rest[1:n], rest[n:]
	}
	switch {
	case oid == pgtype.TimestamptzOID && string(rest) == "+00":
	case oid == pgtype.TimestampOID && len(rest) == 0:
	default:
		return dst, false
	}
	for len(frac) > 0 && frac[len(frac)-1] == '0' {
		frac = frac[:len(frac)-1] // RFC 3339 as Go writes it: no trailing zeros
	}
	dst = append(append(append(dst, text[:10]...), 'T'), text[11:19]...)
	if len(frac) > 0 {
		dst = append(append(dst, '.'), frac...)
	}
	return append(dst, 'Z'), true
}

// number reads a fixed-width run of decimal digits.
func number(digits []byte) (int, bool) {
	n := 0
	for _, b := range digits {
		if !isDigit(b) {
			return 0, false
		}
		n = n*10 + int(b-'0')
	}
	return n, true
}

// daysIn is the length of a month of the (proleptic) Gregorian calendar.
func daysIn(year, month int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}
