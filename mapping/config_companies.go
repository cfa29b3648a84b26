package mapping

import (
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"
)

// The keys of the companies: section (on_delete is read in ondelete.go) and
// of a metadata entry's {column, type} form.
var (
	companiesKeys = []string{"table", "company_id", "metadata", "on_delete", "on_delete_metadata", "related", "where"}
	fieldKeys     = []string{"column", "type", "pii"}
)

func (p *parser) companies(s section) Companies {
	c := Companies{File: p.file}
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
	p.onDelete(s, &c)
	c.Related = p.related(s)
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

func (p *parser) metadata(parent section) []Field {
	const fix = "add metadata: with one key: column line per value to send, e.g. name: name"
	s, ok := p.section(parent, "metadata", nil, true, fix)
	if !ok {
		return nil
	}
	if len(s.node.Content) == 0 {
		p.fail(s.line, s.path, "has no entries", fix)
		return nil
	}
	var fields []Field
	// Walk the node, not the map, to keep the file's order.
	for i := 0; i+1 < len(s.node.Content); i += 2 {
		k := resolve(s.node.Content[i])
		if e, ok := s.entries[k.Value]; !ok || e.key != k {
			continue // a duplicate or bad key, already reported
		}
		if f, ok := p.field(s, k, resolve(s.node.Content[i+1])); ok {
			fields = append(fields, f)
		}
	}
	return fields
}

// field reads one metadata entry: `key: column` or `key: {column, type,
// pii}`.
func (p *parser) field(parent section, k, v *yaml.Node) (Field, bool) {
	key := parent.keyOf(k.Value)
	if k.Value == "" {
		p.fail(k.Line, key, "a metadata key must not be empty", "name the key as Userpilot should show it")
		return Field{}, false
	}
	col := plainColumn(k.Value)
	shape := fmt.Sprintf("write %s: %s or %s: {column: %s, type: number}", k.Value, col, k.Value, col)
	f := Field{Key: k.Value, Line: k.Line}
	switch {
	case v.Kind == yaml.ScalarNode && !(v.Tag == "!!null" && v.Style == 0):
		c, ok := p.scalarOf(entry{key: k, value: v}, key, shape)
		if !ok || !p.nonEmpty(c, key, shape) {
			return f, false
		}
		f.Column = c.text
	case v.Kind == yaml.MappingNode:
		inner := p.mappingEntries(v, key, k.Line, fieldKeys)
		c, ok := p.value(inner, "column")
		if !ok {
			if _, written := inner.entries["column"]; !written || c.null {
				p.fail(c.line, inner.keyOf("column"), "missing", shape)
			}
			return f, false
		}
		if !p.nonEmpty(c, inner.keyOf("column"), shape) {
			return f, false
		}
		f.Column = c.text
		t, ok := p.value(inner, "type")
		if !ok {
			if _, written := inner.entries["type"]; written && !t.null {
				return f, false // a bad value, already reported
			}
		} else if t.text != "" {
			f.Type = Type(t.text)
			if !validType(f.Type) {
				p.fail(t.line, inner.keyOf("type"), t.show()+" is not a type; allowed: string, number, boolean, date (leave type out to let the column's Postgres type decide)", "")
				return f, false
			}
		}
		if v, ok := p.value(inner, "pii"); ok {
			// Acknowledges that the column holds personal data and that
			// sending it to Userpilot was cleared: check and preview stop
			// warning about it.
			switch strings.ToLower(strings.TrimSpace(v.text)) {
			case "true":
				f.PII = true
			case "false":
			default:
				p.fail(v.line, inner.keyOf("pii"), v.show()+" is not true or false",
					"write pii: true once sending this personal data to Userpilot is cleared, or leave it out")
				return f, false
			}
		} else if _, written := inner.entries["pii"]; written && !v.null {
			return f, false // a bad value, already reported
		}
	default:
		p.fail(k.Line, key, "column must be a string ("+shape+")", "")
		return f, false
	}
	return f, true
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

func validType(t Type) bool {
	switch t {
	case TypeString, TypeNumber, TypeBoolean, TypeDate:
		return true
	}
	return false
}
