package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/internal/fix"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
)

// initCommand writes a commented starter config for one table, from its
// catalog and a sample of its rows: what maps directly is mapped, and what
// needs the operator's word (personal data, keys inside jsonb, labels for
// integer codes, related tables) is offered commented out. It reads only.
func initCommand(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pgpilot init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	tableArg := fs.String("table", "", "the companies table, SCHEMA.TABLE (required)")
	usersArg := fs.String("users-table", "", "the users table, SCHEMA.TABLE: a users: section syncs its rows as Userpilot users, each with its company")
	sample := fs.Int("sample", 200, "rows read for the keys of json columns and the values of integer codes")
	out := fs.String("out", "", "write the config to FILE (which must not exist) instead of standard output")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: pgpilot init --table SCHEMA.TABLE [--users-table SCHEMA.TABLE] [--sample N] [--out FILE]\n\n"+
			"Writes a commented starter config for the table, connecting with $DATABASE_URL (read only).\n\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *tableArg == "" {
		return usageError{fix.With(errors.New("--table is required"), "name the table whose rows are your companies, e.g. pgpilot init --table public.accounts")}
	}
	if *sample < 1 {
		return usageError{fmt.Errorf("--sample %d: want at least 1 row", *sample)}
	}
	companies, err := config.ParseTable(*tableArg)
	if err != nil {
		return usageError{fmt.Errorf("--table: %w", err)}
	}
	var users *row.Table
	if *usersArg != "" {
		u, err := config.ParseTable(*usersArg)
		if err != nil {
			return usageError{fmt.Errorf("--users-table: %w", err)}
		}
		users = &u
	}
	if *out != "" {
		if _, err := os.Stat(*out); err == nil {
			return usageError{fix.With(fmt.Errorf("--out %s: the file exists", *out), "choose another path, or move the file away: init never overwrites a config")}
		}
	}
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		return usageError{fix.With(errors.New("DATABASE_URL is not set"),
			"export DATABASE_URL='postgres://pgpilot:…@host:5432/app?sslmode=verify-full' (the role pgpilot will use), then run init again")}
	}

	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := replication.ConnectSQL(ctx, url)
	if err != nil {
		return fix.With(fmt.Errorf("DATABASE_URL: %w", err), "check DATABASE_URL: the host, the role, its password and the database")
	}
	defer conn.Close(context.Background())

	s, err := surveyDatabase(ctx, conn, companies, users, *sample)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	w := &starter{b: &b, s: s, keys: map[string]bool{}}
	w.write()
	if *out == "" {
		_, err = stdout.Write(b.Bytes())
		fmt.Fprint(stderr, w.summary("the config above"))
		return err
	}
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("write %s: %w", *out, err)
	}
	if _, err := f.Write(b.Bytes()); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", *out, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", *out, err)
	}
	fmt.Fprint(stderr, w.summary(*out))
	return nil
}

// survey is what init read of the database.
type survey struct {
	database  string
	version   int
	standby   bool
	user      string
	companies tableSurvey
	users     *tableSurvey
	related   []foreignKey // tables whose rows reference the companies table
	// usersRelated are the tables whose rows reference the users table.
	usersRelated []foreignKey
	publication  struct {
		exists, hasTable, mayCreate bool
	}
}

// tableSurvey is one table: its columns, its key and a sample of its rows.
type tableSurvey struct {
	table row.Table
	cols  []surveyColumn
	key   []string // primary key, or replica identity index; nil when none
	// identityProblem is why the table could not be published as it is
	// ("" when it can).
	identityProblem string
	rows            int // rows sampled
	// toCompanies is the column of this table (the users table) that
	// references the companies table, "" when none does.
	toCompanies string
}

// surveyColumn is a column as init describes it.
type surveyColumn struct {
	row.Column
	generated string   // the expression of a generated column
	labels    []string // an enum type's labels
	notNull   bool
	values    []*string // the sampled values, as text (nil: NULL)
}

// foreignKey is a table whose column references the companies table's
// company id: offered as a related entry.
type foreignKey struct {
	table           row.Table
	column          string
	identityProblem string // the ALTER TABLE a related entry needs, or ""
	indexed         bool
}

func surveyDatabase(ctx context.Context, conn *pgx.Conn, companies row.Table, users *row.Table, sample int) (*survey, error) {
	s := &survey{}
	srv, err := replication.ReadServer(ctx, conn)
	if err != nil {
		return nil, err
	}
	s.version, s.standby = srv.Major(), srv.InRecovery
	if err := conn.QueryRow(ctx, `SELECT current_database(), current_user`).Scan(&s.database, &s.user); err != nil {
		return nil, fmt.Errorf("read the database's name: %w", err)
	}
	if s.companies, err = surveyTable(ctx, conn, companies, sample); err != nil {
		return nil, err
	}
	if users != nil {
		u, err := surveyTable(ctx, conn, *users, sample)
		if err != nil {
			return nil, err
		}
		s.users = &u
		if id := companyIDColumn(u); id != "" {
			if s.usersRelated, err = referencing(ctx, conn, *users, id); err != nil {
				return nil, err
			}
		}
	}
	if id := companyIDColumn(s.companies); id != "" {
		if s.related, err = referencing(ctx, conn, companies, id); err != nil {
			return nil, err
		}
		if s.users != nil {
			for _, fk := range s.related {
				if fk.table == s.users.table {
					s.users.toCompanies = fk.column
				}
			}
		}
	}
	pub, exists, err := replication.ReadPublication(ctx, conn, config.DefaultPublication)
	if err != nil {
		return nil, err
	}
	s.publication.exists = exists
	tables := s.tables()
	if exists {
		missing, err := replication.MissingFromPublication(ctx, conn, pub.Name, tables)
		if err != nil {
			return nil, err
		}
		s.publication.hasTable = len(missing) == 0
	} else {
		err := conn.QueryRow(ctx, `SELECT has_database_privilege(current_database(), 'CREATE')
			AND (SELECT bool_and(pg_has_role(c.relowner, 'USAGE')) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			     WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[])))`,
			tableSchemas(tables), tableNames(tables)).Scan(&s.publication.mayCreate)
		if err != nil {
			return nil, fmt.Errorf("read the privileges on %s: %w", quotedTables(tables), err)
		}
	}
	return s, nil
}

// tables are the tables the file maps: the companies table, and the users
// table when there is one.
func (s *survey) tables() []row.Table {
	tables := []row.Table{s.companies.table}
	if s.users != nil && s.users.table != s.companies.table {
		tables = append(tables, s.users.table)
	}
	return tables
}

// surveyTable reads t's columns (generated ones and enum labels included),
// its key, and the text of sample rows.
func surveyTable(ctx context.Context, conn *pgx.Conn, t row.Table, sample int) (tableSurvey, error) {
	ts := tableSurvey{table: t}
	rows, err := conn.Query(ctx, `
		SELECT a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod), a.attnotnull,
		       CASE WHEN a.attgenerated <> '' THEN coalesce(pg_get_expr(d.adbin, d.adrelid), '') ELSE '' END,
		       coalesce((SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = a.atttypid), '{}')
		FROM pg_attribute a
		JOIN pg_class c ON c.oid = a.attrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
		WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
		ORDER BY a.attnum`, t.Schema, t.Name)
	if err != nil {
		return ts, fmt.Errorf("read the columns of %s: %w", t, err)
	}
	for rows.Next() {
		var c surveyColumn
		if err := rows.Scan(&c.Name, &c.TypeOID, &c.TypeName, &c.notNull, &c.generated, &c.labels); err != nil {
			return ts, fmt.Errorf("read the columns of %s: %w", t, err)
		}
		ts.cols = append(ts.cols, c)
	}
	if err := rows.Err(); err != nil {
		return ts, fmt.Errorf("read the columns of %s: %w", t, err)
	}
	if len(ts.cols) == 0 {
		return ts, usageError{fix.With(fmt.Errorf("%w: %s", replication.ErrTableMissing, t),
			"name a table this role can see, as schema.table (\\dt in psql lists them)")}
	}
	types := replication.NewTypeResolver(conn)
	for i := range ts.cols {
		if ts.cols[i].TypeOID, err = types.Resolve(ctx, ts.cols[i].TypeOID); err != nil {
			return ts, err
		}
	}
	if key, err := replication.KeyColumns(ctx, conn, t); err == nil {
		ts.key = key
	} else if !errors.Is(err, replication.ErrNoKey) {
		return ts, err
	}
	if ts.identityProblem, err = replication.ReplicaIdentityProblem(ctx, conn, t); err != nil {
		return ts, err
	}

	// The sample: every column as text, the first rows the table gives.
	exprs := make([]string, len(ts.cols))
	for i, c := range ts.cols {
		exprs[i] = pgx.Identifier{c.Name}.Sanitize() + "::text"
	}
	rows, err = conn.Query(ctx, fmt.Sprintf("SELECT %s FROM %s LIMIT %d", strings.Join(exprs, ", "), t.Quoted(), sample))
	if err != nil {
		return ts, fmt.Errorf("read a sample of %s: %w", t, err)
	}
	defer rows.Close()
	for rows.Next() {
		vals := make([]*string, len(ts.cols))
		ptrs := make([]any, len(vals))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return ts, fmt.Errorf("read a sample of %s: %w", t, err)
		}
		for i := range vals {
			ts.cols[i].values = append(ts.cols[i].values, vals[i])
		}
		ts.rows++
	}
	if err := rows.Err(); err != nil {
		return ts, fmt.Errorf("read a sample of %s: %w", t, err)
	}
	return ts, nil
}

// referencing lists the single-column foreign keys of other tables that
// reference t's column, with what a related entry over each would need.
func referencing(ctx context.Context, conn *pgx.Conn, t row.Table, column string) ([]foreignKey, error) {
	rows, err := conn.Query(ctx, `
		SELECT rn.nspname, rc.relname, ra.attname
		FROM pg_constraint k
		JOIN pg_class c ON c.oid = k.confrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_attribute fa ON fa.attrelid = k.confrelid AND fa.attnum = k.confkey[1]
		JOIN pg_class rc ON rc.oid = k.conrelid JOIN pg_namespace rn ON rn.oid = rc.relnamespace
		JOIN pg_attribute ra ON ra.attrelid = k.conrelid AND ra.attnum = k.conkey[1]
		WHERE k.contype = 'f' AND n.nspname = $1 AND c.relname = $2 AND fa.attname = $3
		  AND cardinality(k.conkey) = 1 AND k.conrelid <> k.confrelid
		ORDER BY rn.nspname, rc.relname, ra.attname`, t.Schema, t.Name, column)
	if err != nil {
		return nil, fmt.Errorf("read the foreign keys into %s: %w", t, err)
	}
	var fks []foreignKey
	for rows.Next() {
		var fk foreignKey
		if err := rows.Scan(&fk.table.Schema, &fk.table.Name, &fk.column); err != nil {
			return nil, fmt.Errorf("read the foreign keys into %s: %w", t, err)
		}
		fks = append(fks, fk)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the foreign keys into %s: %w", t, err)
	}
	for i := range fks {
		if fks[i].identityProblem, err = replication.RelatedIdentityProblem(ctx, conn, fks[i].table, fks[i].column); err != nil {
			return nil, err
		}
		if fks[i].indexed, err = replication.HasIndexOn(ctx, conn, fks[i].table, fks[i].column); err != nil {
			return nil, err
		}
	}
	return fks, nil
}

// companyIDColumn is the column whose value is a row's id: the primary key
// (or replica identity index) when it is one column, else a column named
// id, else "".
func companyIDColumn(t tableSurvey) string {
	if len(t.key) == 1 {
		return t.key[0]
	}
	for _, c := range t.cols {
		if c.Name == "id" {
			return c.Name
		}
	}
	return ""
}

// starter writes the config: each line and its comment in two columns.
type starter struct {
	b    *bytes.Buffer
	s    *survey
	keys map[string]bool // metadata keys used, active or offered
	kind mapping.Entity  // the section being written

	mapped, personal, jsonKeys, codes, generated, structured int
}

// line writes indent, text and, aligned after it, "# comment".
func (w *starter) line(indent int, text, comment string) {
	l := strings.Repeat(" ", indent) + text
	if comment != "" {
		if l != strings.Repeat(" ", indent) {
			l = fmt.Sprintf("%-44s", l) + " "
		}
		l += "# " + comment
	}
	w.b.WriteString(strings.TrimRight(l, " ") + "\n")
}

// bullet writes a comment paragraph as a list item: "#   - " and a
// hanging indent.
func (w *starter) bullet(text string) {
	for i, l := range wrap(text, 70) {
		if i == 0 {
			w.b.WriteString("#   - " + l + "\n")
		} else {
			w.b.WriteString("#     " + l + "\n")
		}
	}
}

// statement writes an SQL statement to run, under a bullet.
func (w *starter) statement(sql string) {
	w.b.WriteString("#         " + sql + "\n")
}

// comment writes a paragraph of comment lines at indent.
func (w *starter) comment(indent int, text string) {
	for _, l := range wrap(text, 76-indent) {
		w.line(indent, "", l)
	}
}

func (w *starter) write() {
	s := w.s
	t := s.companies
	w.comment(0, fmt.Sprintf("pgpilot configuration for %s, written by `pgpilot init` from the catalog and %d sampled rows of database %q (Postgres %d).",
		t.table, t.rows, s.database, s.version))
	w.comment(0, "Lines that start with # are offers and notes: uncomment what Userpilot should receive. Every key, its default and its rule: docs/configure.md.")
	w.line(0, "", "")
	w.line(0, "", "Then:  pgpilot check   --config THIS_FILE    (each problem with its fix)")
	w.line(0, "", "       pgpilot preview --config THIS_FILE --limit 5")
	w.line(0, "", "       pgpilot run     --config THIS_FILE")
	w.line(0, "", "")
	w.writeDatabaseNeeds()
	w.b.WriteString("\n")
	w.line(0, "postgres:", "")
	w.line(2, "url: ${DATABASE_URL}", "the role needs REPLICATION and SELECT on the tables")
	w.line(2, "slot: "+config.DefaultSlot, "created by `pgpilot run`")
	w.line(2, "publication: "+config.DefaultPublication, "")
	w.b.WriteString("\n")
	w.line(0, "userpilot:", "")
	w.line(2, "api_key: ${USERPILOT_API_KEY}", "")
	w.line(2, "endpoint: us", "or eu, for Userpilot's EU region")
	w.b.WriteString("\n")
	w.line(0, "state:", "")
	w.line(2, "dir: ./pgpilot-state", "the checkpoint: keep it on a persistent volume")
	w.b.WriteString("\n")
	w.writeCompanies()
	if s.users != nil {
		w.b.WriteString("\n")
		w.writeUsers()
	}
}

// writeDatabaseNeeds says what `check` will want of the database, with the
// statements to run.
func (w *starter) writeDatabaseNeeds() {
	s := w.s
	pub := sqlIdent(config.DefaultPublication)
	var names []string
	for _, t := range s.tables() {
		names = append(names, sqlName(t))
	}
	tables := strings.Join(names, ", ")
	w.line(0, "", "What `pgpilot check` will want of the database:")
	switch {
	case !s.publication.exists && s.standby:
		w.bullet(fmt.Sprintf("publication %s: this server is a standby, which cannot create it; run on the primary:", config.DefaultPublication))
		w.statement(fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s;", pub, tables))
	case s.publication.exists && s.publication.hasTable:
		w.bullet(fmt.Sprintf("publication %s exists and publishes %s.", config.DefaultPublication, tables))
	case s.publication.exists:
		w.bullet(fmt.Sprintf("publication %s exists without %s: unless pgpilot created it, run on the primary (ADD TABLE what it lacks):", config.DefaultPublication, tables))
		w.statement(fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s;", pub, tables))
	case s.publication.mayCreate:
		w.bullet(fmt.Sprintf("publication %s: `pgpilot run` creates it (role %s owns %s). To create it yourself, on the primary:",
			config.DefaultPublication, s.user, tables))
		w.statement(fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s;", pub, tables))
	default:
		w.bullet(fmt.Sprintf("publication %s: role %s may not create it; run on the primary, as the tables' owner:", config.DefaultPublication, s.user))
		w.statement(fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s;", pub, tables))
	}
	w.writeIdentityNeeds(s.companies, mapping.Company)
	if s.users != nil {
		w.writeIdentityNeeds(*s.users, mapping.User)
	}
	w.bullet("wal_level = logical, and a free replication slot and WAL sender (check says which is missing).")
}

// writeIdentityNeeds says what t's replica identity needs, for the
// section of kind.
func (w *starter) writeIdentityNeeds(t tableSurvey, kind mapping.Entity) {
	table := sqlName(t.table)
	switch {
	case len(t.key) == 0:
		w.bullet(fmt.Sprintf("%s has no primary key: snapshots page by one, and once published its UPDATEs need a replica identity. On the primary:", t.table))
		w.statement(fmt.Sprintf("ALTER TABLE %s ADD PRIMARY KEY (%s);", table, orPlaceholder(companyIDColumn(t), "the id column")))
	case t.identityProblem != "":
		w.bullet(t.identityProblem)
	default:
		w.bullet(fmt.Sprintf("replica identity of %s: the key (%s) serves. %s.where, or on_delete: mark|delete with a %s outside the key, need on the primary:",
			t.table, strings.Join(t.key, ", "), kind.Section(), kind.IDKey()))
		w.statement(fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL;", table))
	}
}

func (w *starter) writeCompanies() {
	s := w.s
	t := s.companies
	id := companyIDColumn(t)
	w.line(0, "companies:", "")
	w.line(2, "table: "+yamlScalar(tableName(t.table)), "")
	for _, c := range t.cols {
		if c.Name == id {
			w.line(2, "company_id: "+yamlScalar(id), idComment(t, c)+"; sent as a string")
		}
	}
	if id == "" {
		w.line(2, "company_id: id", "no single-column key: name the column holding the company's id")
	}
	w.line(2, "metadata:", "Userpilot key: column  (the column's type → what Userpilot receives)")
	active := w.writeMetadata(4, t, id)
	if active == 0 {
		w.comment(4, "No column maps directly: uncomment at least one entry above, or check refuses an empty metadata.")
	}
	w.writeRelated(mapping.Company, s.companies.table, s.related)
	w.line(2, "", "on_delete: ignore            ignore | mark | delete (docs/configure.md#deletes-and-truncates)")
	w.line(2, "", "where: not is_test           only the rows matching this condition are synced (needs REPLICA IDENTITY FULL)")
}

// writeMetadata writes one entry (or offer) per column but those in skip,
// and returns how many are active.
func (w *starter) writeMetadata(indent int, t tableSurvey, skip ...string) int {
	active := 0
	for _, c := range t.cols {
		if slices.Contains(skip, c.Name) {
			continue
		}
		key := w.key(c.Name, "")
		col := yamlScalar(c.Name)
		typ, primitive := mapping.AutoType(c.Column)
		personal := personalData(c, w.kind)
		switch {
		case c.generated != "":
			w.generated++
			w.comment(indent, fmt.Sprintf("%s: generated column (GENERATED ALWAYS AS (%s) STORED): Postgres does not stream generated columns, so it cannot be mapped; map the columns it is computed from.",
				c.Name, c.generated))
		case personal != "":
			w.personal++
			form := fmt.Sprintf("%s: {column: %s, pii: true}", yamlScalar(key), col)
			if !primitive {
				form = fmt.Sprintf("%s: {column: %s, type: string, pii: true}", yamlScalar(key), col)
			}
			w.offer(indent, form, fmt.Sprintf("%s → %s; personal data (%s): confirm with your legal and security teams, then uncomment",
				c.TypeName, typeWord(typ, primitive), personal))
		case !primitive:
			w.structured++
			w.writeStructured(indent, c, key)
		case touchedOnEveryUpdate.MatchString(strings.ToLower(c.Name)):
			w.offer(indent, fmt.Sprintf("%s: %s", yamlScalar(key), col),
				fmt.Sprintf("%s → %s; changes with every update: mapped, every update of the row is sent, even of columns Userpilot does not get", c.TypeName, typ))
		default:
			comment := fmt.Sprintf("%s → %s", c.TypeName, typ)
			if len(c.labels) > 0 {
				comment += " (" + strings.Join(c.labels, ", ") + ")"
			}
			w.line(indent, fmt.Sprintf("%s: %s", yamlScalar(key), col), comment)
			active++
			w.mapped++
			if codes := integerCodes(c); codes != nil {
				w.codes++
				labels := make([]string, len(codes))
				for i, v := range codes {
					labels[i] = v + `: "?"`
				}
				w.offer(indent, fmt.Sprintf("%s: {column: %s, values: {%s}}", yamlScalar(key), col, strings.Join(labels, ", ")),
					fmt.Sprintf("codes in the sample: %s; name them with values: (docs/configure.md) in place of the line above", strings.Join(codes, ", ")))
			}
		}
	}
	return active
}

// writeStructured offers a json, jsonb, array or other structured column:
// refused as it is, its keys (for json) offered with path:, its text with
// type: string.
func (w *starter) writeStructured(indent int, c surveyColumn, key string) {
	col := yamlScalar(c.Name)
	paths := jsonPaths(c)
	if len(paths) > 0 {
		w.comment(indent, fmt.Sprintf("%s (%s) is not a primitive value. Keys found in the %d sampled rows, offered with path: (docs/configure.md):",
			c.Name, c.TypeName, len(c.values)))
		for _, p := range paths {
			k := w.key(strings.Join(p.path, "_"), c.Name)
			w.jsonKeys++
			asText := ""
			if p.kind == "array" || p.kind == "object" {
				asText = ", type: string" // its JSON text: not a primitive either
			}
			w.offer(indent, fmt.Sprintf("%s: {column: %s, path: %s%s}", yamlScalar(k), col, pathForm(p.path), asText),
				fmt.Sprintf("%s, in %d of %d rows", p.kind, p.rows, len(c.values)))
		}
	} else {
		w.comment(indent, fmt.Sprintf("%s (%s) is not a primitive value: Userpilot takes strings, numbers, booleans and null.", c.Name, c.TypeName))
	}
	w.offer(indent, fmt.Sprintf("%s: {column: %s, type: string}", yamlScalar(key), col), "its whole text")
}

// offer writes a commented-out entry.
func (w *starter) offer(indent int, text, comment string) {
	w.line(indent, "# "+text, comment)
}

// writeRelated offers a related aggregate per table whose rows reference
// the table of the section of kind (fks).
func (w *starter) writeRelated(kind mapping.Entity, owner row.Table, fks []foreignKey) {
	if len(fks) == 0 {
		return
	}
	w.comment(2, fmt.Sprintf("Tables whose rows reference %s, offered as related aggregates (docs/configure.md#related-tables-and-where); each needs what its last line says:",
		owner))
	w.line(2, "# related:", "")
	for _, fk := range fks {
		w.line(2, "#   - table: "+yamlScalar(tableName(fk.table)), fmt.Sprintf("%s.%s references %s", fk.table.Name, fk.column, owner.Name))
		w.line(2, "#     "+kind.IDKey()+": "+yamlScalar(fk.column), "")
		w.line(2, "#     aggregate:", "")
		w.line(2, fmt.Sprintf("#       %s: count(*)", yamlScalar(w.key(fk.table.Name+"_count", ""))), "")
		var needs []string
		if fk.identityProblem != "" {
			needs = append(needs, fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL;", sqlName(fk.table)))
		}
		if !fk.indexed {
			needs = append(needs, fmt.Sprintf("CREATE INDEX CONCURRENTLY ON %s (%s);", sqlName(fk.table), sqlIdent(fk.column)))
		}
		if len(needs) == 0 {
			w.line(2, "#     # needs nothing more: its identity carries "+fk.column+", and an index starts with it", "")
		} else {
			w.line(2, "#     # needs, on the primary: "+strings.Join(needs, " "), "")
		}
	}
}

// writeUsers writes the users: section: the user id, the user's company
// from the column that references the companies table (commented out,
// with a note, when none does), the metadata as for companies (a users
// table's names are a person's: offered with pii: true), and the tables
// whose rows reference the users table as related offers.
func (w *starter) writeUsers() {
	u := w.s.users
	saved, savedKind := w.keys, w.kind
	defer func() { w.keys, w.kind = saved, savedKind }()
	w.keys, w.kind = map[string]bool{}, mapping.User // users' keys are their own
	uid := companyIDColumn(*u)
	w.line(0, "users:", "Userpilot users, each with its company (docs/configure.md#users)")
	w.line(2, "table: "+yamlScalar(tableName(u.table)), "")
	for _, c := range u.cols {
		if c.Name == uid {
			w.line(2, "user_id: "+yamlScalar(uid), idComment(*u, c)+"; sent as a string")
		}
	}
	if uid == "" {
		w.line(2, "user_id: id", "no single-column key: name the column holding the user's id")
	}
	if u.toCompanies != "" {
		w.line(2, "company_id: "+yamlScalar(u.toCompanies), fmt.Sprintf("references %s: the user's company; NULL: none", w.s.companies.table))
	} else {
		w.comment(2, fmt.Sprintf("No column of %s references %s: name the one holding each user's company (a membership table is refused: docs/configure.md#one-company-per-user):",
			u.table, w.s.companies.table))
		w.offer(2, "company_id: account_id", "")
	}
	// Written aside first: metadata: with no active entry under it would
	// be an empty section, which check refuses.
	saveB := w.b
	var entries bytes.Buffer
	w.b = &entries
	active := w.writeMetadata(4, *u, uid, u.toCompanies)
	w.b = saveB
	switch {
	case active > 0:
		w.line(2, "metadata:", "Userpilot key: column  (the column's type → what Userpilot receives)")
	case u.toCompanies != "":
		w.line(2, "# metadata:", "no column maps directly: uncomment entries below with it; without, each user's company is synced alone")
	default:
		w.line(2, "metadata:", "no column maps directly: uncomment at least one entry below, or check refuses an empty metadata")
	}
	w.b.Write(entries.Bytes())
	w.writeRelated(mapping.User, u.table, w.s.usersRelated)
	w.line(2, "", "on_delete: ignore            ignore | mark | delete (DELETE /v1/users, a GDPR erasure)")
	w.line(2, "", "where: not is_bot            only the users matching this condition are synced (needs REPLICA IDENTITY FULL)")
}

// summary is what init tells on stderr once the file is written.
func (w *starter) summary(where string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "pgpilot init: wrote %s: %d column(s) mapped", where, w.mapped)
	var offered []string
	for _, o := range []struct {
		n    int
		what string
	}{{w.personal, "personal-data column(s) to confirm"}, {w.jsonKeys, "json key(s)"}, {w.codes, "integer code column(s) to label"},
		{w.structured, "structured column(s)"}, {len(w.s.related) + len(w.s.usersRelated), "related table(s)"}} {
		if o.n > 0 {
			offered = append(offered, fmt.Sprintf("%d %s", o.n, o.what))
		}
	}
	if len(offered) > 0 {
		fmt.Fprintf(&b, "; offered commented out: %s", strings.Join(offered, ", "))
	}
	if w.generated > 0 {
		fmt.Fprintf(&b, "; %d generated column(s) left out (Postgres does not stream them)", w.generated)
	}
	b.WriteString("\n  next: read it, then pgpilot check --config FILE\n")
	return b.String()
}

// key returns a metadata key for name, unique in the file: prefixed with
// prefix (then numbered) when name is taken.
func (w *starter) key(name, prefix string) string {
	k := strings.Trim(nonKey.ReplaceAllString(name, "_"), "_")
	if k == "" {
		k = "value"
	}
	if w.keys[k] && prefix != "" {
		k = prefix + "_" + k
	}
	base := k
	for i := 2; w.keys[k]; i++ {
		k = base + "_" + strconv.Itoa(i)
	}
	w.keys[k] = true
	return k
}

var nonKey = regexp.MustCompile(`[^A-Za-z0-9_]+`)

// personalData says what personal data a column of a table of kind looks
// like it holds, by its name or declared type, as check and preview judge
// it ("" when none).
func personalData(c surveyColumn, kind mapping.Entity) string {
	probe := mapping.Companies{Kind: kind, Metadata: []mapping.Field{{Key: c.Name, Column: c.Name}}}
	found := probe.PersonalData([]row.Column{c.Column})
	if len(found) == 0 {
		return ""
	}
	return found[0].What + ", " + found[0].Because
}

// touchedOnEveryUpdate are names of columns an application sets at every
// update: the no-op index cannot skip a change to one.
var touchedOnEveryUpdate = regexp.MustCompile(`^(updated_at|updatedat|modified_at|modifiedat|last_modified|last_modified_at|updated_on|lock_version)$`)

// codeNames are column names (or their last word) that usually hold a code
// an application gives a meaning to: an integer "enum".
var codeNames = regexp.MustCompile(`(^|_)(status|state|kind|type|role|level|tier|plan|locale|category|stage|priority|visibility|mode|source|channel)$`)

// integerCodes returns the distinct values of an integer column that
// looks like it holds codes (by its name, with at most 12 values in the
// sample), in numeric order; nil otherwise.
func integerCodes(c surveyColumn) []string {
	if !strings.HasPrefix(c.TypeName, "smallint") && !strings.HasPrefix(c.TypeName, "integer") {
		return nil
	}
	if !codeNames.MatchString(strings.ToLower(c.Name)) {
		return nil
	}
	seen := map[int64]bool{}
	for _, v := range c.values {
		if v == nil {
			continue
		}
		n, err := strconv.ParseInt(*v, 10, 64)
		if err != nil {
			return nil
		}
		seen[n] = true
		if len(seen) > 12 {
			return nil
		}
	}
	if len(seen) == 0 {
		return nil
	}
	nums := make([]int64, 0, len(seen))
	for n := range seen {
		nums = append(nums, n)
	}
	sort.Slice(nums, func(i, j int) bool { return nums[i] < nums[j] })
	out := make([]string, len(nums))
	for i, n := range nums {
		out[i] = strconv.FormatInt(n, 10)
	}
	return out
}

// jsonPath is a key found inside a json column's sampled values.
type jsonPath struct {
	path []string
	kind string // string, number, boolean, array, object
	rows int    // sampled rows that have it
}

// jsonPaths returns the scalar keys (and arrays) found in a json or jsonb
// column's sampled values, nested objects followed three levels deep, most
// common first, at most 30.
func jsonPaths(c surveyColumn) []jsonPath {
	if c.TypeName != "json" && c.TypeName != "jsonb" {
		return nil
	}
	found := map[string]*jsonPath{}
	var walk func(prefix []string, v any, seen map[string]bool, depth int)
	walk = func(prefix []string, v any, seen map[string]bool, depth int) {
		obj, ok := v.(map[string]any)
		if !ok {
			return
		}
		for k, child := range obj {
			p := append(append([]string{}, prefix...), k)
			kind := jsonKind(child)
			if kind == "object" && depth < 3 {
				walk(p, child, seen, depth+1)
				continue
			}
			id := strings.Join(p, "\x00")
			jp := found[id]
			if jp == nil {
				jp = &jsonPath{path: p, kind: kind}
				found[id] = jp
			}
			if jp.kind != kind && kind != "null" {
				if jp.kind == "null" {
					jp.kind = kind
				} else {
					jp.kind = "mixed"
				}
			}
			if !seen[id] {
				seen[id] = true
				jp.rows++
			}
		}
	}
	for _, v := range c.values {
		if v == nil {
			continue
		}
		var doc any
		dec := json.NewDecoder(strings.NewReader(*v))
		dec.UseNumber()
		if dec.Decode(&doc) != nil {
			continue
		}
		walk(nil, doc, map[string]bool{}, 1)
	}
	out := make([]jsonPath, 0, len(found))
	for _, jp := range found {
		out = append(out, *jp)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].rows != out[j].rows {
			return out[i].rows > out[j].rows
		}
		return strings.Join(out[i].path, ".") < strings.Join(out[j].path, ".")
	})
	if len(out) > 30 {
		out = out[:30]
	}
	return out
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "string"
	case json.Number:
		return "number"
	case bool:
		return "boolean"
	case []any:
		return "array"
	default:
		return "object"
	}
}

// pathForm writes a path as the path: key takes it: dotted, or a list when
// a key holds a dot.
func pathForm(p []string) string {
	for _, k := range p {
		if strings.Contains(k, ".") {
			q := make([]string, len(p))
			for i, k := range p {
				q[i] = strconv.Quote(k)
			}
			return "[" + strings.Join(q, ", ") + "]"
		}
	}
	return yamlScalar(strings.Join(p, "."))
}

var plainYAML = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

// yamlScalar writes s as a YAML scalar: plain when it is a plain name,
// else double-quoted.
func yamlScalar(s string) string {
	if plainYAML.MatchString(s) && !yamlWords[strings.ToLower(s)] {
		return s
	}
	return strconv.Quote(s)
}

// sqlName writes t for a statement, quoting only the parts that need it.
func sqlName(t row.Table) string { return tableName(t) }

// sqlIdent writes a column name for a statement, quoted only when needed.
func sqlIdent(s string) string {
	if plainIdent.MatchString(s) {
		return s
	}
	return pgx.Identifier{s}.Sanitize()
}

// plainIdent is a name Postgres takes unquoted as it is.
var plainIdent = regexp.MustCompile(`^[a-z_][a-z0-9_$]*$`)

// yamlWords are plain names YAML would read as something else than a string.
var yamlWords = map[string]bool{"true": true, "false": true, "yes": true, "no": true, "on": true, "off": true, "null": true, "y": true, "n": true}

// tableName writes t as companies.table reads it: quoted parts where
// Postgres needs them.
func tableName(t row.Table) string {
	part := func(s string) string {
		if plainIdent.MatchString(s) {
			return s
		}
		return pgx.Identifier{s}.Sanitize()
	}
	return part(t.Schema) + "." + part(t.Name)
}

func idComment(t tableSurvey, c surveyColumn) string {
	what := "the primary key"
	if len(t.key) != 1 {
		what = "no single-column key: check that it is unique"
	}
	return fmt.Sprintf("%s, %s", c.TypeName, what)
}

func typeWord(t mapping.Type, primitive bool) string {
	if !primitive {
		return "its text (type: string)"
	}
	return string(t)
}

func orPlaceholder(s, placeholder string) string {
	if s == "" {
		return placeholder
	}
	return s
}

// wrap splits text into lines of at most width, at spaces.
func wrap(text string, width int) []string {
	var lines []string
	var cur strings.Builder
	for _, word := range strings.Fields(text) {
		if cur.Len() > 0 && cur.Len()+1+len(word) > width {
			lines = append(lines, cur.String())
			cur.Reset()
		}
		if cur.Len() > 0 {
			cur.WriteByte(' ')
		}
		cur.WriteString(word)
	}
	if cur.Len() > 0 {
		lines = append(lines, cur.String())
	}
	return lines
}
