package config

import (
	"fmt"
	"github.com/pgpilot/pgpilot/mapping"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/pgpilot/pgpilot/internal/sqltext"
)

// fieldKeys are the keys of a metadata entry's {column, ...} form.
var fieldKeys = []string{"column", "path", "sql", "type", "values", "default", "on_null", "pii"}

func (p *parser) metadata(parent section) []mapping.Field {
	const fix = "add metadata: with one key: column line per value to send, e.g. name: name"
	s, ok := p.section(parent, "metadata", nil, true, fix)
	if !ok {
		return nil
	}
	if len(s.node.Content) == 0 {
		p.fail(s.line, s.path, "has no entries", fix)
		return nil
	}
	var fields []mapping.Field
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

// field reads one metadata entry: `key: column` or `key: {column, path,
// sql, type, values, default, on_null, pii}`.
func (p *parser) field(parent section, k, v *yaml.Node) (mapping.Field, bool) {
	key := parent.keyOf(k.Value)
	if k.Value == "" {
		p.fail(k.Line, key, "a metadata key must not be empty", "name the key as Userpilot should show it")
		return mapping.Field{}, false
	}
	if p.reserved(k, key) {
		return mapping.Field{}, false
	}
	col := plainColumn(k.Value)
	shape := fmt.Sprintf("write %s: %s or %s: {column: %s, type: number}", k.Value, col, k.Value, col)
	f := mapping.Field{Key: k.Value, Line: k.Line}
	switch {
	case v.Kind == yaml.ScalarNode && !(v.Tag == "!!null" && v.Style == 0):
		c, ok := p.scalarOf(entry{key: k, value: v}, key, shape)
		if !ok || !p.nonEmpty(c, key, shape) {
			return f, false
		}
		f.Column = c.text
		return f, true
	case v.Kind == yaml.MappingNode:
		return p.fieldForm(key, k, v, shape)
	default:
		p.fail(k.Line, key, "column must be a string ("+shape+")", "")
		return f, false
	}
}

// fieldForm reads the {column, ...} form of a metadata entry; every
// problem in it is reported, not only the first.
func (p *parser) fieldForm(key string, k, v *yaml.Node, shape string) (mapping.Field, bool) {
	f := mapping.Field{Key: k.Value, Line: k.Line}
	inner := p.mappingEntries(v, key, k.Line, fieldKeys)
	ok := true
	// bad is a key written with a value that was reported already.
	bad := func(name string, present bool, s scalar) bool {
		_, written := inner.entries[name]
		return !present && written && !s.null
	}
	col, hasCol := p.value(inner, "column")
	sql, hasSQL := p.value(inner, "sql")
	switch {
	case bad("column", hasCol, col) || bad("sql", hasSQL, sql):
		ok = false
	case hasCol && hasSQL:
		p.fail(k.Line, key, "has both column and sql", "keep one: column: reads a column, sql: evaluates an expression on the row")
		ok = false
	case hasCol:
		if !p.nonEmpty(col, inner.keyOf("column"), shape) {
			ok = false
		}
		f.Column = col.text
	case hasSQL:
		const sqlFix = `write one expression on the row, e.g. sql: "case when seats > 100 then 'large' else 'small' end", without comments or semicolons`
		if !p.nonEmpty(sql, inner.keyOf("sql"), sqlFix) {
			ok = false
		} else if err := sqltext.Check(sql.text); err != nil {
			p.fail(sql.line, inner.keyOf("sql"), sql.show()+" is not one SQL expression: "+strings.TrimPrefix(err.Error(), sqltext.ErrCondition.Error()+": "), sqlFix)
			ok = false
		}
		f.SQL = sql.text
	default:
		p.fail(col.line, inner.keyOf("column"), "missing", shape)
		ok = false
	}

	if t, present := p.value(inner, "type"); present && t.text != "" {
		f.Type = mapping.Type(t.text)
		if !validType(f.Type) {
			p.fail(t.line, inner.keyOf("type"), t.show()+" is not a type; allowed: string, number, boolean, date (leave type out to let the column's Postgres type decide)", "")
			ok = false
		}
	} else if bad("type", present, t) {
		ok = false
	}

	if e, written := inner.entries["path"]; written {
		path, pathOK := p.path(inner.keyOf("path"), e)
		f.Path = path
		ok = ok && pathOK
		if hasSQL && !hasCol {
			// An expression's jsonb result could be read by a path too,
			// but the path belongs in the expression then: one place.
			p.fail(e.key.Line, inner.keyOf("path"), "reads inside a json or jsonb column, not an expression",
				"write the path in the expression (sql: \"attrs #>> '{company,size}'\"), or map column: with path:")
			ok = false
		}
	}

	if e, written := inner.entries["values"]; written {
		labels, labelsOK := p.labels(inner.keyOf("values"), e)
		f.Values = labels
		ok = ok && labelsOK
	}
	if d, present := p.value(inner, "default"); present {
		f.Default = &d.text
		if f.Values == nil {
			p.fail(d.line, inner.keyOf("default"), "is the label of a value values: does not list, and there is no values:",
				"add values: {0: active, 1: suspended}, or remove default")
			ok = false
		}
	} else if bad("default", present, d) {
		ok = false
	}

	if n, present := p.value(inner, "on_null"); present {
		switch n.text {
		case "clear":
		case "keep":
			f.KeepNull = true
		default:
			p.fail(n.line, inner.keyOf("on_null"), n.show()+" is not a null policy",
				"write on_null: clear (a NULL clears the key in Userpilot, the default) or on_null: keep (a NULL leaves Userpilot's value as it is)")
			ok = false
		}
	} else if bad("on_null", present, n) {
		ok = false
	}

	if v, present := p.value(inner, "pii"); present {
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
			ok = false
		}
	} else if bad("pii", present, v) {
		ok = false
	}
	return f, ok
}

// path reads a path: `a.b.c` (dots separate keys) or `[a, b.c]` (a list,
// for a key holding a dot).
func (p *parser) path(key string, e entry) ([]string, bool) {
	const fix = "write path: company.size (dots separate nested keys), or path: [subscribed.quantity] (a list) when a key holds a dot"
	switch e.value.Kind {
	case yaml.ScalarNode:
		s, ok := p.scalarOf(e, key, fix)
		if !ok {
			if s.null {
				p.fail(e.key.Line, key, "is empty", fix)
			}
			return nil, false
		}
		if s.text == "" {
			p.fail(s.line, key, "is empty", fix)
			return nil, false
		}
		parts := strings.Split(s.text, ".")
		for _, part := range parts {
			if part == "" {
				p.fail(s.line, key, s.show()+" has an empty key between its dots", fix)
				return nil, false
			}
		}
		return parts, true
	case yaml.SequenceNode:
		if len(e.value.Content) == 0 {
			p.fail(e.key.Line, key, "is an empty list", fix)
			return nil, false
		}
		var parts []string
		for i, n := range e.value.Content {
			n = resolve(n)
			s, ok := p.scalarOf(entry{key: e.key, value: n}, fmt.Sprintf("%s[%d]", key, i), fix)
			if !ok || s.text == "" {
				if ok || s.null {
					p.fail(n.Line, fmt.Sprintf("%s[%d]", key, i), "is empty", fix)
				}
				return nil, false
			}
			parts = append(parts, s.text)
		}
		return parts, true
	}
	p.fail(e.key.Line, key, "must be a key or a list of keys, not "+kindName(e.value), fix)
	return nil, false
}

// labels reads values: a mapping of a value's text to its label, in the
// file's order.
func (p *parser) labels(key string, e entry) ([]mapping.Label, bool) {
	const fix = "write values: {0: active, 1: suspended}: each value as Postgres prints it, then the label to send"
	if e.value.Kind != yaml.MappingNode {
		p.fail(e.key.Line, key, "must be a mapping of values to labels, not "+kindName(e.value), fix)
		return nil, false
	}
	s := p.mappingEntries(e.value, key, e.key.Line, nil)
	if len(e.value.Content) == 0 {
		p.fail(e.key.Line, key, "has no entries", fix)
		return nil, false
	}
	ok := true
	labels := []mapping.Label{}
	for i := 0; i+1 < len(e.value.Content); i += 2 {
		k := resolve(e.value.Content[i])
		en, known := s.entries[k.Value]
		if !known || en.key != k {
			ok = false // a duplicate or bad key, already reported
			continue
		}
		if k.Tag == "!!null" {
			p.fail(k.Line, key, "a NULL is not a value values: maps (a NULL column is sent as null)", "remove this entry; on_null: keep leaves the key out instead")
			ok = false
			continue
		}
		v, present := p.scalarOf(en, s.keyOf(k.Value), fix)
		if !present {
			if v.null {
				p.fail(k.Line, s.keyOf(k.Value), "has no label", fix)
			}
			ok = false
			continue
		}
		labels = append(labels, mapping.Label{From: k.Value, To: v.text})
	}
	return labels, ok
}

// removedKeys reads companies.removed_keys (users.removed_keys).
func (p *parser) removedKeys(s section, c *mapping.Companies) {
	v, ok := p.value(s, "removed_keys")
	if !ok {
		return
	}
	switch v.text {
	case "clear":
	case "keep":
		c.KeepRemovedKeys = true
	default:
		p.fail(v.line, s.keyOf("removed_keys"), v.show()+" is not a policy",
			"write removed_keys: clear (a key dropped from the mapping is sent once as null, the default) or removed_keys: keep (Userpilot keeps its value)")
	}
}

// reserved refuses the metadata key k when it is mapping.MembershipKey, the
// name pgpilot gives a user's company on its way to Userpilot's company
// field: a key of that name would be sent as the company.
func (p *parser) reserved(k *yaml.Node, key string) bool {
	if k.Value != mapping.MembershipKey {
		return false
	}
	p.fail(k.Line, key, fmt.Sprintf("the metadata key %q is reserved: it is how pgpilot carries a user's company", k.Value),
		"rename the key; a user's company is mapped with users.company_id")
	return true
}
