package config

import (
	"fmt"
	"strings"

	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/row"
)

// The keys of the companies: section (on_delete is read in ondelete.go).
var (
	companiesKeys = []string{"table", "company_id", "metadata", "on_delete", "on_delete_metadata", "related", "where", "removed_keys"}
)

func (p *parser) companies(s section) mapping.Companies {
	c := mapping.Companies{File: p.file}
	if v, ok := p.required(s, "table", "write table: public.companies (the table to mirror)"); ok {
		schema, name, pr := parseTable(v.text)
		if pr.msg != "" {
			p.fail(v.line, s.keyOf("table"), v.show()+" "+pr.msg, pr.fix)
		}
		c.Table, c.Schema, c.Name = v.text, schema, name
	}
	if v, ok := p.required(s, "company_id", "write company_id: id (the column holding the company's id)"); ok {
		c.CompanyID, c.CompanyIDLine = v.text, v.line
	}
	c.Metadata = p.metadata(s)
	p.removedKeys(s, &c)
	p.onDelete(s, &c)
	c.Related = p.related(s, mapping.Company)
	p.where(s, &c)
	p.uniqueKeys(&c, s)
	return c
}

// parseTable splits `name` or `schema.name`, folding unquoted parts to lower
// case and unquoting "quoted" parts as Postgres does.
func parseTable(s string) (schema, name string, pr problem) {
	const fix = `write name or schema.name; quote parts that have capitals or other characters, e.g. table: '"My Schema"."Companies"'`
	var parts []string
	for i := 0; ; {
		part, next, msg := parseIdent(s, i)
		if msg != "" {
			return "", "", problem{msg, fix}
		}
		parts = append(parts, part)
		if next == len(s) {
			break
		}
		if s[next] != '.' {
			return "", "", problem{"is not a table name", fix}
		}
		i = next + 1
	}
	switch len(parts) {
	case 1:
		return "public", parts[0], problem{}
	case 2:
		return parts[0], parts[1], problem{}
	default:
		return "", "", problem{"has more than two parts", "write name or schema.name (the database comes from postgres.url)"}
	}
}

// parseIdent reads one identifier starting at s[i], returning it and the
// index after it.
func parseIdent(s string, i int) (string, int, string) {
	if i < len(s) && s[i] == '"' {
		var b strings.Builder
		for j := i + 1; j < len(s); j++ {
			if s[j] != '"' {
				b.WriteByte(s[j])
				continue
			}
			if j+1 < len(s) && s[j+1] == '"' {
				b.WriteByte('"')
				j++
				continue
			}
			if b.Len() == 0 {
				return "", 0, "has an empty quoted name"
			}
			if b.Len() > 63 {
				return "", 0, "has a name longer than Postgres's 63 bytes"
			}
			return b.String(), j + 1, ""
		}
		return "", 0, "has a quote without its closing quote"
	}
	j := i
	for j < len(s) && s[j] != '.' {
		c := s[j]
		ok := c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80 || (j > i && (c == '$' || c >= '0' && c <= '9'))
		if !ok {
			return "", 0, fmt.Sprintf("has the character %q, which needs quotes", c)
		}
		j++
	}
	if j == i {
		return "", 0, "has an empty name"
	}
	if j-i > 63 {
		return "", 0, "has a name longer than Postgres's 63 bytes"
	}
	return foldASCII(s[i:j]), j, ""
}

// foldASCII lower-cases like Postgres folds unquoted identifiers: ASCII only.
func foldASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// plainColumn suggests the metadata key itself as the column in messages,
// when it could be one.
func plainColumn(key string) string {
	for _, c := range key {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return "column_name"
		}
	}
	return key
}

func validType(t mapping.Type) bool {
	switch t {
	case mapping.TypeString, mapping.TypeNumber, mapping.TypeBoolean, mapping.TypeDate:
		return true
	}
	return false
}

// ParseTable reads a table name as companies.table takes it: name or
// schema.name, the schema public when left out, unquoted parts folded to
// lower case and double-quoted ones taken as written.
func ParseTable(s string) (row.Table, error) {
	schema, name, pr := parseTable(s)
	if pr.msg != "" {
		return row.Table{}, fmt.Errorf("table %q %s; %s", s, pr.msg, pr.fix)
	}
	return row.Table{Schema: schema, Name: name}, nil
}
