// Package sqltext checks SQL text an operator writes into the config or on
// the command line (a condition, an expression, an ORDER BY list) before
// pgpilot pastes it into a query of its own: it must stay one piece of that
// query, never end it, comment out the rest, or close a parenthesis pgpilot
// opened. It is pure: Postgres itself then plans the query (EXPLAIN) to
// find what else is wrong.
package sqltext

import (
	"errors"
	"fmt"
	"strings"
)

// ErrCondition is wrapped when a WHERE condition is not one plain SQL
// condition that chunk queries can hold.
var ErrCondition = errors.New("not one SQL condition")

// Check refuses a WHERE condition that would change the chunk
// query's shape rather than filter its rows: a comment (which comments out
// the rest of the query, the keyset bound and the parenthesis pgpilot
// closes), a semicolon (a second statement), or a parenthesis closed that
// it did not open (which would let an OR escape the keyset bound, so every
// chunk read the same rows), or an unterminated string or quoted name.
// Strings, quoted names and dollar-quoted strings may hold anything.
func Check(where string) error {
	fail := func(why string) error { return fmt.Errorf("%w: %s", ErrCondition, why) }
	depth := 0
	for i := 0; i < len(where); i++ {
		c := where[i]
		next := byte(0)
		if i+1 < len(where) {
			next = where[i+1]
		}
		switch {
		case c == '\'' || c == '"':
			// E'...' strings escape with backslashes; every kind doubles
			// its quote.
			backslash := c == '\'' && i > 0 && (where[i-1] == 'E' || where[i-1] == 'e') && (i == 1 || !isNameByte(where[i-2]))
			j := i + 1
			for ; j < len(where); j++ {
				if backslash && where[j] == '\\' {
					j++
					continue
				}
				if where[j] == c {
					if j+1 < len(where) && where[j+1] == c {
						j++
						continue
					}
					break
				}
			}
			if j >= len(where) {
				return fail(fmt.Sprintf("the %c opened at character %d is never closed", c, i+1))
			}
			i = j
		case c == '$' && (i == 0 || !isNameByte(where[i-1])):
			tag := dollarTag(where[i:])
			if tag == "" {
				continue // a parameter ($1), which Postgres refuses itself
			}
			end := strings.Index(where[i+len(tag):], tag)
			if end < 0 {
				return fail(fmt.Sprintf("the dollar-quoted string opened at character %d is never closed", i+1))
			}
			i += len(tag) + end + len(tag) - 1
		case c == '-' && next == '-', c == '/' && next == '*':
			return fail("it holds a comment (" + string([]byte{c, next}) + "), which would comment out the rest of pgpilot's chunk query")
		case c == ';':
			return fail("it holds a semicolon: one condition, not statements")
		case c == '(':
			depth++
		case c == ')':
			if depth--; depth < 0 {
				return fail(fmt.Sprintf("the parenthesis at character %d closes one it did not open", i+1))
			}
		}
	}
	if depth > 0 {
		return fail("a parenthesis it opens is never closed")
	}
	return nil
}

func isNameByte(c byte) bool {
	return c == '_' || c == '$' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c >= 0x80
}

// dollarTag returns the $tag$ s starts with, or "".
func dollarTag(s string) string {
	for j := 1; j < len(s); j++ {
		c := s[j]
		switch {
		case c == '$':
			return s[:j+1]
		case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80 || (j > 1 && c >= '0' && c <= '9'):
		default:
			return ""
		}
	}
	return ""
}
