package config

import (
	"fmt"
	"github.com/pgpilot/pgpilot/mapping"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/pgpilot/pgpilot/internal/sqltext"
)

var (
	relatedKeys      = []string{"table", "company_id", "order_by", "metadata", "aggregate"}
	usersRelatedKeys = []string{"table", "user_id", "order_by", "metadata", "aggregate"}
	aggregateKeys    = []string{"sql", "type"}
)

// related reads companies.related (or users.related, kind User: each entry
// names its column holding the user's id with user_id:), a list of lookups
// and aggregates.
func (p *parser) related(s section, kind mapping.Entity) []mapping.Related {
	keys, idKey, owner := relatedKeys, kind.IDKey(), "a company"
	if kind == mapping.User {
		keys, owner = usersRelatedKeys, "a user"
	}
	e, ok := s.entries["related"]
	if !ok || (e.value.Kind == yaml.ScalarNode && e.value.Tag == "!!null") {
		return nil
	}
	if e.value.Kind != yaml.SequenceNode {
		p.fail(e.key.Line, s.keyOf("related"), "must be a list of entries (- table: ...), not "+kindName(e.value),
			"write related: and under it one \"- table: public.subscriptions\" entry per table")
		return nil
	}
	var out []mapping.Related
	for i, n := range e.value.Content {
		n = resolve(n)
		path := fmt.Sprintf("%s[%d]", s.keyOf("related"), i)
		if n.Kind != yaml.MappingNode {
			p.fail(n.Line, path, "must be a mapping (table, "+idKey+", metadata or aggregate), not "+kindName(n), "")
			continue
		}
		es := p.mappingEntries(n, path, n.Line, keys)
		r := mapping.Related{Kind: kind, Index: i, Line: n.Line}
		if v, ok := p.required(es, "table", "write table: public.subscriptions (the table whose rows belong to "+owner+")"); ok {
			schema, name, pr := parseTable(v.text)
			if pr.msg != "" {
				p.fail(v.line, es.keyOf("table"), v.show()+" "+pr.msg, pr.fix)
			}
			r.Table, r.Schema, r.Name, r.TableLine = v.text, schema, name, v.line
		}
		if v, ok := p.required(es, idKey, fmt.Sprintf("write %s: %s (the column of this table that holds the %s's id)", idKey, idKey, kind)); ok {
			r.CompanyID, r.CompanyIDLine = v.text, v.line
		}
		_, hasMeta := es.entries["metadata"]
		_, hasAgg := es.entries["aggregate"]
		switch {
		case hasMeta && hasAgg:
			p.fail(n.Line, path, "has both metadata (a lookup of one row) and aggregate (over all rows)",
				"write two entries for the same table: one with metadata, one with aggregate")
		case !hasMeta && !hasAgg:
			p.fail(n.Line, path, "has neither metadata nor aggregate",
				"add metadata: {key: column} to send one row's columns, or aggregate: {key: count(*)} to send an aggregate")
		case hasMeta:
			r.Metadata = p.metadata(es)
		default:
			r.Aggregate = p.aggregates(es)
		}
		if v, ok := p.value(es, "order_by"); ok && v.text != "" {
			r.OrderBy, r.OrderByLine = v.text, v.line
			if hasAgg {
				p.fail(v.line, es.keyOf("order_by"), "is used only by a lookup (metadata:): an aggregate reads all rows", "remove order_by")
			} else if err := sqltext.Check(v.text); err != nil {
				p.fail(v.line, es.keyOf("order_by"), v.show()+" is not one ORDER BY list: "+strings.TrimPrefix(err.Error(), sqltext.ErrCondition.Error()+": "),
					"write the columns as after ORDER BY, e.g. order_by: updated_at desc, id desc, without comments or semicolons")
			}
		}
		out = append(out, r)
	}
	return out
}

// aggregates reads an aggregate: section: `key: expression` or
// `key: {sql: expression, type: number}`.
func (p *parser) aggregates(parent section) []mapping.Aggregate {
	const fix = "write one key: expression line per value, e.g. user_count: count(*)"
	s, ok := p.section(parent, "aggregate", nil, true, fix)
	if !ok {
		return nil
	}
	if len(s.node.Content) == 0 {
		p.fail(s.line, s.path, "has no entries", fix)
		return nil
	}
	var out []mapping.Aggregate
	for i := 0; i+1 < len(s.node.Content); i += 2 {
		k, v := resolve(s.node.Content[i]), resolve(s.node.Content[i+1])
		if e, ok := s.entries[k.Value]; !ok || e.key != k {
			continue
		}
		key := s.keyOf(k.Value)
		if k.Value == "" {
			p.fail(k.Line, key, "a metadata key must not be empty", "name the key as Userpilot should show it")
			continue
		}
		if p.reserved(k, key) {
			continue
		}
		a := mapping.Aggregate{Key: k.Value, Line: k.Line}
		shape := fmt.Sprintf("write %s: count(*) or %s: {sql: count(*), type: number}", k.Value, k.Value)
		var expr scalar
		switch v.Kind {
		case yaml.ScalarNode:
			c, ok := p.scalarOf(entry{key: k, value: v}, key, shape)
			if !ok {
				if c.null {
					p.fail(k.Line, key, "missing its expression", shape)
				}
				continue
			}
			expr = c
		case yaml.MappingNode:
			inner := p.mappingEntries(v, key, k.Line, aggregateKeys)
			c, ok := p.value(inner, "sql")
			if !ok {
				if _, written := inner.entries["sql"]; !written || c.null {
					p.fail(c.line, inner.keyOf("sql"), "missing", shape)
				}
				continue
			}
			expr = c
			if t, ok := p.value(inner, "type"); ok && t.text != "" {
				a.Type = mapping.Type(t.text)
				if !validType(a.Type) {
					p.fail(t.line, inner.keyOf("type"), t.show()+" is not a type; allowed: string, number, boolean, date (leave type out to let the result's type decide)", "")
					continue
				}
			}
		default:
			p.fail(k.Line, key, "must be an SQL expression ("+shape+")", "")
			continue
		}
		if !p.nonEmpty(expr, key, shape) {
			continue
		}
		if err := sqltext.Check(expr.text); err != nil {
			p.fail(expr.line, key, expr.show()+" is not one SQL expression: "+strings.TrimPrefix(err.Error(), sqltext.ErrCondition.Error()+": "),
				"write one aggregate expression, e.g. count(*) filter (where active), without comments or semicolons, its parentheses balanced")
			continue
		}
		a.SQL = expr.text
		out = append(out, a)
	}
	return out
}

// where reads companies.where (users.where): one SQL condition on the row.
func (p *parser) where(s section, c *mapping.Companies) {
	v, ok := p.value(s, "where")
	if !ok || v.text == "" {
		return
	}
	if err := sqltext.Check(v.text); err != nil {
		p.fail(v.line, s.keyOf("where"), v.show()+" is not one SQL condition: "+strings.TrimPrefix(err.Error(), sqltext.ErrCondition.Error()+": "),
			"write one condition, as after WHERE, e.g. where: not is_test, without comments or semicolons, its parentheses balanced")
		return
	}
	c.Where, c.WhereLine = v.text, v.line
}

// uniqueKeys refuses a metadata key set twice: by metadata, by any related
// entry, or by on_delete_metadata (a key two sources write would flap
// between their values in Userpilot).
func (p *parser) uniqueKeys(c *mapping.Companies, s section) {
	first := map[string]string{}
	claim := func(key string, line int, where, path string) {
		if prev, dup := first[key]; dup {
			p.fail(line, path, fmt.Sprintf("metadata key %q is also set by %s", key, prev),
				"give each key one source: rename one of them")
			return
		}
		first[key] = where
	}
	section := c.Kind.Section()
	for _, f := range c.Metadata {
		claim(f.Key, f.Line, fmt.Sprintf("%s.metadata (line %d)", section, f.Line), section+".metadata."+f.Key)
	}
	for _, r := range c.Related {
		for _, f := range r.Metadata {
			claim(f.Key, f.Line, fmt.Sprintf("%s.metadata (line %d)", r.Path(), f.Line), r.Path()+".metadata."+f.Key)
		}
		for _, a := range r.Aggregate {
			claim(a.Key, a.Line, fmt.Sprintf("%s.aggregate (line %d)", r.Path(), a.Line), r.Path()+".aggregate."+a.Key)
		}
	}
	md, written := s.entries["on_delete_metadata"]
	switch {
	case written && md.value.Kind == yaml.MappingNode:
		for i := 0; i+1 < len(md.value.Content); i += 2 {
			k := resolve(md.value.Content[i])
			if _, ok := c.OnDeleteMetadata[k.Value]; ok {
				claim(k.Value, k.Line, section+".on_delete_metadata (line "+strconv.Itoa(k.Line)+")", section+".on_delete_metadata."+k.Value)
			}
		}
	case !written && c.OnDelete == mapping.OnDeleteMark:
		// The default mark, {deleted: true}, is a key too.
		line := s.line
		if e, ok := s.entries["on_delete"]; ok {
			line = e.key.Line
		}
		for k := range c.OnDeleteMetadata {
			claim(k, line, "on_delete: mark's default on_delete_metadata", section+".on_delete")
		}
	}
}
