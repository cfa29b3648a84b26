package related

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
)

// ErrSchema is wrapped when a related table, the companies table or an
// expression no longer fits what the config says (a column dropped while
// pgpilot streams): the operator must fix it, retrying fails again.
var ErrSchema = errors.New("related tables do not fit the mapping")

// Plan is the mapping's related tables and companies.where compiled
// against the database: the queries that re-read companies, the key of
// each value they return, and the description of the rows they make.
type Plan struct {
	companies row.Table
	// idType is the companies company_id column's type, as format_type
	// prints it: ids are passed as text and cast to it.
	idType string
	idCol  string
	where  string
	// fullIdentity: the companies table has REPLICA IDENTITY FULL, so a
	// DELETE carries the old row for companies.where to judge.
	fullIdentity bool
	// entries are the related entries, in config order, with their query.
	entries []entry
	// rel describes the rows Read makes: the company id, then every
	// related key in config order.
	rel *row.Relation
	// tables are the related tables, each with the columns a row's
	// company id is in (two entries may read one table by two columns).
	tables map[row.Table][]string
}

// entry is one query of a re-read: a related entry's (cfg), or the
// companies row's own sql: keys (row).
type entry struct {
	cfg  mapping.Related
	row  []mapping.Field
	sql  string
	keys int // how many values it returns after the company id (its keys)
}

// table is what the entry reads, for messages.
func (e entry) table(p *Plan) string {
	if e.row != nil {
		return p.companies.String()
	}
	return e.cfg.Table
}

// IsRelated reports whether rel describes rows of related values (made by
// a Plan) rather than rows of a table.
func IsRelated(rel *row.Relation) bool { return rel != nil && rel.Kind == row.RelatedValues }

// Mapper compiles the mapping of rows of related values (rel, made by a
// Plan): the company id in the first column, each key in its own column,
// typed as the config says or, without a type, by the query's result type
// (as companies.metadata is by the column's type).
func Mapper(c mapping.Companies, rel *row.Relation) (*mapping.Mapper, error) {
	mc := mapping.Companies{Kind: c.Kind, File: c.File, CompanyID: rel.Columns[0].Name}
	// Each key is its own column of the re-read, holding what the row's
	// column (or the expression) gave: a path, labels and on_null apply
	// to it here, as they do to a companies row's column.
	value := func(f mapping.Field) mapping.Field {
		f.Column, f.SQL = f.Key, ""
		return f
	}
	for _, f := range c.Metadata {
		if f.SQL != "" {
			mc.Metadata = append(mc.Metadata, value(f))
		}
	}
	for _, r := range c.Related {
		for _, f := range r.Metadata {
			mc.Metadata = append(mc.Metadata, value(f))
		}
		for _, a := range r.Aggregate {
			mc.Metadata = append(mc.Metadata, mapping.Field{Key: a.Key, Column: a.Key, Type: a.Type, Line: a.Line})
		}
	}
	m, err := mapping.Compile(mc, "the related values", rel.Columns)
	if err != nil || rel.Keys == nil {
		return m, err
	}
	// A backfill's rows set only its keys (a key it clears is sent as
	// null by the companies row's mapping, or, when the mapping has it
	// again, sent as it is now).
	return m.Restrict(append(slices.Clone(rel.Keys.Set), rel.Keys.Clear...), nil), nil
}

// Configured reports whether the mapping reads related tables, filters
// companies or has sql: keys: only then is a Plan (and the stage) needed.
func Configured(c mapping.Companies) bool {
	return len(c.Related) > 0 || c.Where != "" || len(rowExpressions(c)) > 0
}

// rowExpressions are the sql: keys of the companies row.
func rowExpressions(c mapping.Companies) []mapping.Field {
	var out []mapping.Field
	for _, f := range c.Metadata {
		if f.SQL != "" {
			out = append(out, f)
		}
	}
	return out
}

// Keys lists the keys a Plan of c reads, in its Relation's order.
func Keys(c mapping.Companies) []string {
	var keys []string
	for _, f := range rowExpressions(c) {
		keys = append(keys, f.Key)
	}
	for _, r := range c.Related {
		keys = append(keys, r.Keys()...)
	}
	return keys
}

// Tables lists the related tables of c, each once, in config order; the
// companies table, which a related entry may read too, is published and
// streamed anyway, and is not listed.
func Tables(c mapping.Companies) []row.Table {
	var out []row.Table
	seen := map[row.Table]bool{{Schema: c.Schema, Name: c.Name}: true}
	for _, r := range c.Related {
		t := row.Table{Schema: r.Schema, Name: r.Name}
		if !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	return out
}

// Compile checks c's related entries and where against the database on
// conn and prepares their queries. Each problem the operator fixes in the
// config is a *mapping.ConfigError with the file and line (together a
// mapping.ConfigErrors): a table or column that does not exist, an
// expression or an order Postgres refuses, a lookup without order_by on a
// table that may hold several rows per company, a result that is not a
// primitive value. Postgres plans each query (nothing runs). A role that
// may not read a table gets a *replication.ReadRightError with the GRANTs
// instead: Postgres would refuse every plan with "permission denied",
// which is not the config's fault. c may be a users mapping
// (mapping.Users.Entity): the re-reads are then per user, and the
// messages name the users section.
func Compile(ctx context.Context, conn *pgx.Conn, c mapping.Companies) (*Plan, error) {
	return compile(ctx, conn, c, true)
}

// CompileReads is Compile for a reader of related values that streams
// nothing (preview): what only the stream needs (REPLICA IDENTITY FULL
// for companies.where, to judge a row's old version) is not asked.
func CompileReads(ctx context.Context, conn *pgx.Conn, c mapping.Companies) (*Plan, error) {
	return compile(ctx, conn, c, false)
}

func compile(ctx context.Context, conn *pgx.Conn, c mapping.Companies, streams bool) (*Plan, error) {
	companies := row.Table{Schema: c.Schema, Name: c.Name}
	cols, err := replication.TableColumns(ctx, conn, companies)
	if err != nil {
		return nil, err
	}
	var role string
	if err := conn.QueryRow(ctx, `SELECT current_user::text`).Scan(&role); err != nil {
		return nil, fmt.Errorf("read the current role: %w", err)
	}
	section, noun := c.Kind.Section(), c.Kind.String()
	if err := replication.ReadRights(ctx, conn, append([]row.Table{companies}, Tables(c)...), role,
		fmt.Sprintf("so pgpilot cannot read what %s.related and %s.where name", section, section)); err != nil {
		return nil, err
	}
	generated, err := replication.GeneratedColumns(ctx, conn, companies)
	if err != nil {
		return nil, err
	}
	// What the stream carries of a companies row: Postgres leaves the
	// generated columns out.
	streamed := slices.DeleteFunc(slices.Clone(cols), func(col row.Column) bool { _, ok := generated[col.Name]; return ok })
	p := &Plan{companies: companies, idCol: c.CompanyID, where: c.Where, tables: map[row.Table][]string{}}
	for _, col := range cols {
		if col.Name == c.CompanyID {
			p.idType = col.TypeName
		}
	}
	if p.idType == "" {
		return nil, mapping.ConfigErrors{{File: c.File, Line: c.CompanyIDLine, Key: section + "." + c.Kind.IDKey(),
			Msg: fmt.Sprintf("column %q does not exist in %s", c.CompanyID, companies)}}
	}
	var errs mapping.ConfigErrors
	fail := func(line int, key, msg, fix string) {
		errs = append(errs, &mapping.ConfigError{File: c.File, Line: line, Key: key, Msg: msg, Fix: fix})
	}
	if c.Where != "" {
		if err := explain(ctx, conn, fmt.Sprintf("SELECT 1 FROM %s AS %s WHERE (%s)", companies.Quoted(), pgx.Identifier{companies.Name}.Sanitize(), c.Where)); err != nil {
			fail(c.WhereLine, section+".where", fmt.Sprintf("%q does not work on %s: %s", c.Where, companies, pgMessage(err)),
				"write one condition on the "+section+" row, as after WHERE (e.g. where: not is_test)")
		} else if err := explain(ctx, conn, p.whereSQL(&row.Relation{Table: companies, Columns: streamed})); err != nil {
			fix := "write one condition on the " + section + " row's own columns, as after WHERE (e.g. where: not is_test)"
			if len(generated) > 0 {
				fix += "; generated columns (" + strings.Join(slices.Sorted(maps.Keys(generated)), ", ") +
					") are not streamed: write what they compute instead"
			}
			fail(c.WhereLine, section+".where", fmt.Sprintf("%q cannot be judged on a streamed row of %s: %s", c.Where, companies, pgMessage(err)), fix)
		}
		if p.fullIdentity, err = replication.ReplicaIdentityFull(ctx, conn, companies); err != nil {
			return nil, err
		}
		if !p.fullIdentity && streams {
			fail(c.WhereLine, section+".where", fmt.Sprintf("needs REPLICA IDENTITY FULL on %s: to tell a %s that stops matching (sent as deleted) "+
				"from one that never matched (never sent), pgpilot judges the old row too, and Postgres streams it only under FULL", companies, noun),
				fmt.Sprintf("run on the primary: ALTER TABLE %s REPLICA IDENTITY FULL;", companies.Quoted()))
		}
	}
	if len(errs) > 0 {
		// Every re-read holds the condition: its error would repeat.
		return nil, errs
	}
	// The values' Relation names the entity's table, so that delivery
	// knows whose values they are (a users' plan beside a companies').
	rel := &row.Relation{Kind: row.RelatedValues, Table: companies, Columns: []row.Column{{Name: "", TypeOID: 25, TypeName: "text"}}}
	types := replication.NewTypeResolver(conn)
	// The result of a query's values, typed as Postgres plans them.
	describe := func(sql string, keys []string) (bool, error) {
		desc, err := conn.Prepare(ctx, "", sql)
		if err != nil {
			return false, nil
		}
		for i, key := range keys {
			fd := desc.Fields[1+i]
			oid, err := types.Resolve(ctx, fd.DataTypeOID)
			if err != nil {
				return false, err
			}
			name, err := types.Name(ctx, fd.DataTypeOID, fd.TypeModifier)
			if err != nil {
				return false, err
			}
			rel.Columns = append(rel.Columns, row.Column{Name: key, TypeOID: oid, TypeName: name})
		}
		return true, nil
	}
	if exprs := rowExpressions(c); len(exprs) > 0 {
		// The companies row's sql: keys: re-read on every change of the
		// row, as a related entry over the companies table is.
		e := entry{row: exprs, keys: len(exprs), sql: p.rowSQL(exprs)}
		var keys []string
		for _, f := range exprs {
			keys = append(keys, f.Key)
		}
		ok, err := describe(e.sql, keys)
		if err != nil {
			return nil, err
		}
		if !ok {
			for _, f := range exprs {
				if err := explain(ctx, conn, p.rowSQL([]mapping.Field{f})); err != nil {
					fail(f.Line, section+".metadata."+f.Key, fmt.Sprintf("%q does not work on %s: %s", f.SQL, companies, pgMessage(err)),
						"write one expression on the "+section+" row's columns, e.g. case when seats > 100 then 'large' else 'small' end")
				}
			}
		} else {
			p.tables[companies] = append(p.tables[companies], c.CompanyID)
			p.entries = append(p.entries, e)
		}
	}
	for _, r := range c.Related {
		t := row.Table{Schema: r.Schema, Name: r.Name}
		rcols, err := replication.TableColumns(ctx, conn, t)
		if errors.Is(err, replication.ErrTableMissing) {
			fail(r.TableLine, r.Path()+".table", fmt.Sprintf("table %s does not exist (or this role cannot see it)", t), "check the name, and GRANT SELECT on it to pgpilot's role")
			continue
		}
		if err != nil {
			return nil, err
		}
		rcid := -1
		for i, col := range rcols {
			if col.Name == r.CompanyID {
				rcid = i
			}
		}
		if rcid < 0 {
			fail(r.CompanyIDLine, r.Path()+"."+r.Kind.IDKey(), fmt.Sprintf("column %q does not exist in %s (columns: %s)", r.CompanyID, t, columnNames(rcols)),
				"name the column of "+t.String()+" that holds the "+r.Kind.String()+"'s id")
			continue
		}
		if !slices.Contains(p.tables[t], r.CompanyID) {
			p.tables[t] = append(p.tables[t], r.CompanyID)
		}
		e := entry{cfg: r}
		if r.IsLookup() {
			// The columns must exist and map to primitives, as
			// companies.metadata's do.
			if _, err := mapping.Compile(mapping.Companies{Kind: r.Kind, File: c.File, CompanyID: r.CompanyID, CompanyIDLine: r.CompanyIDLine, Metadata: r.Metadata}, t.String(), rcols); err != nil {
				var ces mapping.ConfigErrors
				if errors.As(err, &ces) {
					for _, ce := range ces {
						ce.Key = strings.Replace(ce.Key, "metadata ", r.Path()+".metadata ", 1)
						if ce.Fix == "" {
							ce.Fix = "name a column of " + t.String()
						}
						errs = append(errs, ce)
					}
					continue
				}
				return nil, err
			}
			if r.OrderBy == "" {
				unique, err := replication.UniqueOn(ctx, conn, t, r.CompanyID)
				if err != nil {
					return nil, err
				}
				if !unique {
					fail(r.Line, r.Path(), fmt.Sprintf("%s may hold several rows per %s (no unique index on %q alone), and without order_by which one is sent is left to chance", t, r.Kind, r.CompanyID),
						"add order_by: the order whose first row wins, e.g. order_by: updated_at desc, id desc (or a unique index on "+r.CompanyID+")")
					continue
				}
			}
			pk, err := replication.KeyColumns(ctx, conn, t)
			if err != nil && !errors.Is(err, replication.ErrNoKey) {
				return nil, err
			}
			e.sql = p.lookupSQL(t, r, pk)
			e.keys = len(r.Metadata)
		} else {
			e.sql = p.aggregateSQL(t, r.CompanyID, r.Aggregate)
			e.keys = len(r.Aggregate)
		}
		ok, err := describe(e.sql, r.Keys())
		if err != nil {
			return nil, err
		}
		if !ok {
			fail(p.blame(ctx, conn, t, r, explain(ctx, conn, e.sql)))
			continue
		}
		p.entries = append(p.entries, e)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	p.rel = rel
	if len(p.entries) > 0 {
		// The values must map to primitives: an aggregate's result type is
		// known only now.
		if _, err := Mapper(c, rel); err != nil {
			var ces mapping.ConfigErrors
			if errors.As(err, &ces) {
				exprs := rowExpressions(c)
				for _, ce := range ces {
					ce.Key = strings.Replace(ce.Key, "metadata ", section+".related key ", 1)
					for _, f := range exprs {
						if ce.Key == section+".related key "+strconv.Quote(f.Key) {
							ce.Key = section + ".metadata." + f.Key
						}
					}
					ce.Msg = strings.Replace(ce.Msg, "column ", "the value of ", 1)
				}
			}
			return nil, err
		}
	}
	return p, nil
}

// blame says which part of an entry Postgres refused: the query is
// planned again without each part in turn.
func (p *Plan) blame(ctx context.Context, conn *pgx.Conn, t row.Table, r mapping.Related, err error) (int, string, string, string) {
	msg := fmt.Sprintf("Postgres refuses the re-read of %s: %s", t, pgMessage(err))
	if r.IsLookup() {
		for _, f := range r.Metadata {
			if f.SQL == "" {
				continue
			}
			one := r
			one.Metadata, one.OrderBy = []mapping.Field{f}, ""
			if e := explain(ctx, conn, p.lookupSQL(t, one, nil)); e != nil {
				return f.Line, r.Path() + ".metadata." + f.Key, fmt.Sprintf("%q does not work on %s: %s", f.SQL, t, pgMessage(e)),
					"write one expression on the columns of " + t.String()
			}
		}
		if r.OrderBy != "" {
			bare := r
			bare.OrderBy = ""
			if explain(ctx, conn, p.lookupSQL(t, bare, nil)) == nil {
				return r.OrderByLine, r.Path() + ".order_by", fmt.Sprintf("%q does not work on %s: %s", r.OrderBy, t, pgMessage(err)),
					"write the columns of " + t.String() + " as after ORDER BY, e.g. updated_at desc, id desc"
			}
		}
		return r.Line, r.Path(), msg, idFix(r)
	}
	for _, a := range r.Aggregate {
		if e := explain(ctx, conn, p.aggregateSQL(t, r.CompanyID, []mapping.Aggregate{a})); e != nil {
			return a.Line, r.Path() + ".aggregate." + a.Key, fmt.Sprintf("%q does not work on %s: %s", a.SQL, t, pgMessage(e)),
				"write one aggregate expression over the table's rows, e.g. count(*), max(last_login_at), count(*) filter (where active)"
		}
	}
	return r.Line, r.Path(), msg, idFix(r)
}

// idFix is blame's fix when no part alone is to blame: the id column's
// type, most likely.
func idFix(r mapping.Related) string {
	key := r.Kind.Section() + "." + r.Kind.IDKey()
	return fmt.Sprintf("check the table's columns and the %s column's type (it must compare with %s)", r.Kind.IDKey(), key)
}

func explain(ctx context.Context, conn *pgx.Conn, sql string) error {
	_, err := conn.Prepare(ctx, "", sql)
	return err
}

func pgMessage(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Message + " (SQLSTATE " + pgErr.Code + ")"
	}
	return err.Error()
}

func columnNames(cols []row.Column) string {
	names := make([]string, 0, len(cols))
	for _, c := range cols {
		names = append(names, c.Name)
	}
	return strings.Join(names, ", ")
}

// aliases are the names the queries give the companies table and the
// related one: each its own name, so an expression may qualify a column
// with the table's name (users.active), unless both share it.
func (p *Plan) aliases(t row.Table) (companies, rel string) {
	companies = pgx.Identifier{p.companies.Name}.Sanitize()
	rel = pgx.Identifier{t.Name}.Sanitize()
	if t.Name == p.companies.Name {
		rel = `"related"`
	}
	return companies, rel
}

// filter is the WHERE of every re-read: the companies asked for ($1, their
// ids as text, cast to the company_id column's type so its index serves)
// that match companies.where. A company that does not exist, or does not
// match, gets no row: its related keys are not sent (they would make
// Userpilot create the profile of a deleted or filtered-out company).
func (p *Plan) filter(calias string) string {
	f := fmt.Sprintf("%s.%s = ANY($1::text[]::%s[])", calias, pgx.Identifier{p.idCol}.Sanitize(), p.idType)
	if p.where != "" {
		f += " AND (" + p.where + ")"
	}
	return f
}

// lookupSQL reads, per company, the first related row in order_by's order
// (then the table's key, so that ties always pick the same row), or NULLs
// when it has none.
func (p *Plan) lookupSQL(t row.Table, r mapping.Related, key []string) string {
	calias, ralias := p.aliases(t)
	var sel, inner []string
	for i, f := range r.Metadata {
		name := strconv.Quote("pgpilot " + strconv.Itoa(i))
		if f.SQL != "" {
			inner = append(inner, "("+f.SQL+") AS "+name)
		} else {
			inner = append(inner, ralias+"."+pgx.Identifier{f.Column}.Sanitize()+" AS "+name)
		}
		sel = append(sel, "r."+name)
	}
	order := r.OrderBy
	for _, k := range key {
		if order != "" {
			order += ", "
		}
		order += ralias + "." + pgx.Identifier{k}.Sanitize()
	}
	if order != "" {
		order = " ORDER BY " + order
	}
	inner = append(inner, `1 AS "pgpilot rows"`)
	return fmt.Sprintf(`SELECT %s.%s::text, %s, r."pgpilot rows" FROM %s AS %s LEFT JOIN LATERAL (SELECT %s FROM %s AS %s WHERE %s.%s = %s.%s%s LIMIT 1) AS r ON true WHERE %s`,
		calias, pgx.Identifier{p.idCol}.Sanitize(), strings.Join(sel, ", "), p.companies.Quoted(), calias,
		strings.Join(inner, ", "), t.Quoted(), ralias, ralias, pgx.Identifier{r.CompanyID}.Sanitize(), calias, pgx.Identifier{p.idCol}.Sanitize(), order,
		p.filter(calias))
}

// aggregateSQL computes, per company, each aggregate over its related rows
// (an aggregate over no rows: count 0, max NULL), and how many rows that
// was (for the metrics). Each expression is parenthesised: a comma in it
// makes a row value, which no key can send, never a second column.
func (p *Plan) aggregateSQL(t row.Table, rcid string, aggs []mapping.Aggregate) string {
	calias, ralias := p.aliases(t)
	var sel, inner []string
	for i, a := range aggs {
		name := strconv.Quote("pgpilot " + strconv.Itoa(i))
		inner = append(inner, "("+a.SQL+") AS "+name)
		sel = append(sel, "a."+name)
	}
	return fmt.Sprintf(`SELECT %s.%s::text, %s, a."pgpilot rows" FROM %s AS %s CROSS JOIN LATERAL (SELECT %s, count(*) AS "pgpilot rows" FROM %s AS %s WHERE %s.%s = %s.%s) AS a WHERE %s`,
		calias, pgx.Identifier{p.idCol}.Sanitize(), strings.Join(sel, ", "), p.companies.Quoted(), calias,
		strings.Join(inner, ", "), t.Quoted(), ralias, ralias, pgx.Identifier{rcid}.Sanitize(), calias, pgx.Identifier{p.idCol}.Sanitize(),
		p.filter(calias))
}

// rowSQL evaluates, per company, the sql: keys on its own row (named as
// the table, so an expression may qualify a column with the table's
// name). Each expression is parenthesised, as an aggregate is.
func (p *Plan) rowSQL(exprs []mapping.Field) string {
	calias, _ := p.aliases(p.companies)
	var sel []string
	for i, f := range exprs {
		sel = append(sel, "("+f.SQL+") AS "+strconv.Quote("pgpilot "+strconv.Itoa(i)))
	}
	return fmt.Sprintf(`SELECT %s.%s::text, %s, 1 AS "pgpilot rows" FROM %s AS %s WHERE %s`,
		calias, pgx.Identifier{p.idCol}.Sanitize(), strings.Join(sel, ", "), p.companies.Quoted(), calias, p.filter(calias))
}

// Relation describes the rows Read returns.
func (p *Plan) Relation() *row.Relation { return p.rel }

// Where is companies.where ("" for none).
func (p *Plan) Where() string { return p.where }

// CompanyColumns returns the columns of t whose values are a related
// row's company ids (one per entry reading t by another column), and
// whether t is a related table at all.
func (p *Plan) CompanyColumns(t row.Table) ([]string, bool) {
	c, ok := p.tables[t]
	return c, ok
}

// reads reports whether the plan reads any key of a backfill's (one it
// sets, or one it clears that the plan has again).
func (p *Plan) reads(keys *row.KeySet) bool {
	for _, k := range p.rel.Columns[1:] {
		if slices.Contains(keys.Set, k.Name) || slices.Contains(keys.Clear, k.Name) {
			return true
		}
	}
	return false
}

// HasRelated reports whether any related entry is configured.
func (p *Plan) HasRelated() bool { return len(p.entries) > 0 }

// Counts are what one Read did, for the metrics.
type Counts struct {
	Queries, Companies, Rows int64
}

// Read re-reads the related values of the companies ids (company ids as
// text) on q, one query per related entry whatever their number: a row per
// company that exists and matches companies.where, in Relation's columns,
// text as Postgres prints it. Companies it does not return have no row or
// do not match.
func (p *Plan) Read(ctx context.Context, q Querier, ids []string) (map[string][]row.Value, Counts, error) {
	out := map[string][]row.Value{}
	var n Counts
	if len(ids) == 0 || len(p.entries) == 0 {
		return out, n, nil
	}
	width := len(p.rel.Columns)
	offset := 1
	for i, e := range p.entries {
		rows, err := q.Query(ctx, e.sql, pgx.QueryResultFormats{pgx.TextFormatCode}, ids)
		if err != nil {
			return nil, n, fmt.Errorf("re-read %s for %d companies: %w", e.table(p), len(ids), err)
		}
		n.Queries++
		seen := map[string]bool{}
		for rows.Next() {
			raw := rows.RawValues()
			id := string(raw[0])
			vals, ok := out[id]
			if !ok {
				if i > 0 {
					// Not returned by the first query: it stopped existing
					// (or matching) in between. Queries share a snapshot,
					// so this does not happen; be safe anyway.
					continue
				}
				vals = make([]row.Value, width)
				vals[0] = row.Value{Text: []byte(id)}
				out[id] = vals
			}
			seen[id] = true
			for k := range e.keys {
				v := raw[1+k]
				if v == nil {
					vals[offset+k] = row.Value{Null: true}
				} else {
					vals[offset+k] = row.Value{Text: append([]byte(nil), v...)}
				}
			}
			if r := raw[1+e.keys]; r != nil {
				c, _ := strconv.ParseInt(string(r), 10, 64)
				n.Rows += c
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, n, fmt.Errorf("re-read %s for %d companies: %w", e.table(p), len(ids), err)
		}
		if i > 0 {
			for id := range out {
				if !seen[id] {
					delete(out, id)
				}
			}
		}
		offset += e.keys
	}
	n.Companies = int64(len(out))
	return out, n, nil
}

// Querier runs a query (a pgx.Tx, a *pgx.Conn).
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}
