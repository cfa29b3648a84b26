package mapping

import (
	"bytes"
	"errors"
	"unicode/utf8"
)

// A key inside a json or jsonb column is read from the column's text as
// the stream carries it, in process: no round trip to Postgres, and no
// decoding of the document into maps. The reader below walks the text to
// the value at the path and returns that value's own text, so a number
// keeps its digits as Postgres printed them (2178.00 stays 2178.00) and a
// change costs no allocation unless a string holds escapes.

// jsonKind is what a path leads to.
type jsonKind uint8

const (
	jsonMissing jsonKind = iota // the path is not there, or runs through a non-object
	jsonNull
	jsonString
	jsonNumber
	jsonBool
	jsonObject
	jsonArray
)

func (k jsonKind) String() string {
	return [...]string{"missing", "null", "a string", "a number", "a boolean", "an object", "an array"}[k]
}

var errNotJSON = errors.New("is not valid JSON")

// jsonAt returns the value at path in doc (a JSON document as Postgres
// prints json or jsonb): its kind and its text (a string's with its
// quotes). A path that is missing, or runs through a value that is not an
// object, is jsonMissing. lastWins takes the last of duplicate keys, as
// Postgres's -> does on json (jsonb has none, and the first match ends the
// search).
func jsonAt(doc []byte, path []string, lastWins bool) (jsonKind, []byte, error) {
	i := skipSpace(doc, 0)
	for _, seg := range path {
		if i >= len(doc) || doc[i] != '{' {
			if i >= len(doc) {
				return 0, nil, errNotJSON
			}
			return jsonMissing, nil, nil
		}
		found := -1
		i = skipSpace(doc, i+1)
		if i < len(doc) && doc[i] == '}' {
			return jsonMissing, nil, nil
		}
		for {
			if i >= len(doc) || doc[i] != '"' {
				return 0, nil, errNotJSON
			}
			end, ok := stringEnd(doc, i)
			if !ok {
				return 0, nil, errNotJSON
			}
			match := keyEquals(doc[i+1:end-1], seg)
			i = skipSpace(doc, end)
			if i >= len(doc) || doc[i] != ':' {
				return 0, nil, errNotJSON
			}
			i = skipSpace(doc, i+1)
			start := i
			if i, ok = valueEnd(doc, i); !ok {
				return 0, nil, errNotJSON
			}
			if match {
				found = start
				if !lastWins {
					break
				}
			}
			i = skipSpace(doc, i)
			if i < len(doc) && doc[i] == ',' {
				i = skipSpace(doc, i+1)
				continue
			}
			if i < len(doc) && doc[i] == '}' {
				break
			}
			return 0, nil, errNotJSON
		}
		if found < 0 {
			return jsonMissing, nil, nil
		}
		i = found
	}
	end, ok := valueEnd(doc, i)
	if !ok {
		return 0, nil, errNotJSON
	}
	v := doc[i:end]
	switch v[0] {
	case '"':
		return jsonString, v, nil
	case '{':
		return jsonObject, v, nil
	case '[':
		return jsonArray, v, nil
	case 't', 'f':
		return jsonBool, v, nil
	case 'n':
		return jsonNull, v, nil
	}
	return jsonNumber, v, nil
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// stringEnd returns the index after the string starting at b[i] ('"').
// A long string (a large document's) is skipped with IndexByte, which
// reads many bytes at a time.
func stringEnd(b []byte, i int) (int, bool) {
	j := i + 1
	for {
		q := bytes.IndexByte(b[j:], '"')
		if q < 0 {
			return 0, false
		}
		e := bytes.IndexByte(b[j:j+q], '\\')
		if e < 0 {
			return j + q + 1, true
		}
		j += e + 2 // the escaped character, whatever it is
		if j > len(b) {
			return 0, false
		}
	}
}

// valueEnd returns the index after the value starting at b[i].
func valueEnd(b []byte, i int) (int, bool) {
	if i >= len(b) {
		return 0, false
	}
	switch c := b[i]; {
	case c == '"':
		return stringEnd(b, i)
	case c == '{' || c == '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end, ok := stringEnd(b, j)
				if !ok {
					return 0, false
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, true
				}
			}
		}
		return 0, false
	case c == 't':
		return literalEnd(b, i, "true")
	case c == 'f':
		return literalEnd(b, i, "false")
	case c == 'n':
		return literalEnd(b, i, "null")
	case c == '-' || isDigit(c):
		j := i + 1
		for j < len(b) && (isDigit(b[j]) || b[j] == '.' || b[j] == 'e' || b[j] == 'E' || b[j] == '+' || b[j] == '-') {
			j++
		}
		return j, true
	}
	return 0, false
}

func literalEnd(b []byte, i int, lit string) (int, bool) {
	if len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit {
		return i + len(lit), true
	}
	return 0, false
}

// keyEquals reports whether raw, a JSON string's text between its quotes,
// is the key k once its escapes are read.
func keyEquals(raw []byte, k string) bool {
	if !hasBackslash(raw) {
		return string(raw) == k
	}
	var buf [utf8.UTFMax]byte
	j := 0
	for i := 0; i < len(raw); {
		if raw[i] != '\\' {
			if j >= len(k) || raw[i] != k[j] {
				return false
			}
			i++
			j++
			continue
		}
		r, n := unescape(raw[i:])
		if n == 0 {
			return false
		}
		i += n
		w := utf8.EncodeRune(buf[:], r)
		if j+w > len(k) || string(buf[:w]) != k[j:j+w] {
			return false
		}
		j += w
	}
	return j == len(k)
}

func hasBackslash(b []byte) bool {
	for _, c := range b {
		if c == '\\' {
			return true
		}
	}
	return false
}

// unescape reads one escape at the start of b, returning its rune and
// length (0 when it is not one); a surrogate pair is one rune.
func unescape(b []byte) (rune, int) {
	if len(b) < 2 || b[0] != '\\' {
		return 0, 0
	}
	switch b[1] {
	case '"', '\\', '/':
		return rune(b[1]), 2
	case 'b':
		return '\b', 2
	case 'f':
		return '\f', 2
	case 'n':
		return '\n', 2
	case 'r':
		return '\r', 2
	case 't':
		return '\t', 2
	case 'u':
		r, ok := hex4(b[2:])
		if !ok {
			return 0, 0
		}
		if r >= 0xd800 && r < 0xdc00 && len(b) >= 12 && b[6] == '\\' && b[7] == 'u' {
			if lo, ok := hex4(b[8:]); ok && lo >= 0xdc00 && lo < 0xe000 {
				return (r-0xd800)<<10 + (lo - 0xdc00) + 0x10000, 12
			}
		}
		if r >= 0xd800 && r < 0xe000 {
			return utf8.RuneError, 6
		}
		return r, 6
	}
	return 0, 0
}

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case isDigit(c):
			r = r<<4 | rune(c-'0')
		case 'a' <= c && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case 'A' <= c && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// jsonText is a scalar's text as values: and type: read it: a string's
// characters (its escapes read; a copy only when it has any), a number's
// digits, true or false.
func jsonText(kind jsonKind, raw []byte) ([]byte, error) {
	if kind != jsonString {
		return raw, nil
	}
	inner := raw[1 : len(raw)-1]
	if !hasBackslash(inner) {
		return inner, nil
	}
	out := make([]byte, 0, len(inner))
	for i := 0; i < len(inner); {
		if inner[i] != '\\' {
			out = append(out, inner[i])
			i++
			continue
		}
		r, n := unescape(inner[i:])
		if n == 0 {
			return nil, errNotJSON
		}
		out = utf8.AppendRune(out, r)
		i += n
	}
	return out, nil
}
