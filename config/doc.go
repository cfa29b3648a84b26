// Package config loads pgpilot's configuration file (the mapping file,
// mapping.example.yaml): it reads the YAML, replaces ${VAR} references,
// keeps secrets out of every message, checks each section and applies the
// defaults the stages declare. It stands above the stages it configures
// (delivery, snapshot, state, metrics, userpilot): the companies section
// becomes a mapping.Companies and the users section a mapping.Users, what
// package mapping turns rows into payloads with. Apart from reading the file (and userpilot.api_key_file)
// it does no I/O.
//
// # The configuration file
//
// The file has seven sections: postgres, userpilot, state, delivery, http,
// companies and users; state, delivery and http are optional, and a file
// has companies, users or both (neither is an error naming both).
// mapping.example.yaml at the repository root documents every key. Unknown
// keys, at any level, are errors that list the allowed keys; a key written
// twice is an error. Every problem is reported at once, each
// as FILE:LINE: KEY: what is wrong, with its fix on the line below (a
// *ConfigError, whose Fix field holds the fix, in a ConfigErrors list, so
// errors.As finds each).
//
// Required: postgres.url, userpilot.api_key; in a companies section
// table, company_id and metadata with at least one entry; in a users
// section table, user_id, and metadata unless company_id is set.
//
// Defaults:
//
//	postgres.slot         pgpilot
//	postgres.publication  pgpilot
//	userpilot.endpoint    https://analytex.userpilot.io
//	userpilot.rate_limit  10 (requests per second)
//	userpilot.bulk_rate   20 (records per second in bulk jobs, the estimate's start; 0: no bulk path)
//	delivery.max_retained_wal  256MB (slot's retained WAL before outbox mode; 0: never)
//	delivery.stall_after       1m (work owed and nothing moving before pgpilot says it is stalled)
//	delivery.outbox_after      5m (Userpilot failing this long: outbox mode)
//	delivery.warn_retained_wal 1GB (slot's retained WAL before a warning; 0: never)
//	http.listen           none (no HTTP server)
//	http.unready_after    5m (Userpilot failing this long: /readyz answers 503)
//	state.dir             pgpilot-state
//
// # Environment variables
//
// ${VAR} anywhere inside a value is replaced by the environment variable VAR;
// a value may hold several. The replacement happens after the YAML is parsed,
// so a variable's value can never change the file's structure and line
// numbers stay right. $${ is a literal ${. An unset variable is an error that
// names it. A variable set to the empty string counts as "not written" for
// keys that have a default, and is an error for required keys. Inside the
// {column: ..., type: ...} form, quote a value that uses a variable
// ({column: "${COL}"}): YAML reads { and } there as structure.
//
// # Secrets
//
// The values of postgres.url (which may hold a password) and
// userpilot.api_key never appear in a message, even when they are invalid.
// No message echoes a value that came from an environment variable either: it
// names the variable instead. As a last guard, any message that would contain
// the URL, its password or the API key has them replaced by [redacted].
//
// # Keys
//
// postgres.url is a libpq URL (postgres:// or postgresql://) or a key=value
// connection string. It is checked lightly here (a URL must parse); pgx
// parses it for real when connecting.
//
// postgres.slot must match ^[a-z0-9_]{1,63}$, Postgres's rule for replication
// slot names. postgres.publication is 1 to 63 bytes without NUL, used exactly
// as written.
//
// userpilot.endpoint is `us` (https://analytex.userpilot.io), `eu`
// (https://analytex-eu.userpilot.io) or an absolute URL without a path (a
// trailing slash is dropped). It must be https, because the API key travels
// in a request header; http is accepted only for loopback hosts (localhost,
// 127.0.0.0/8, ::1), where test stand-ins run.
//
// userpilot.rate_limit is the number of requests per second, greater than 0.
// Userpilot allows 600 requests per minute per API key, hence the default 10.
//
// state.dir, when relative, is resolved against the directory that contains
// the configuration file, not the working directory: `pgpilot run --config
// /etc/pgpilot.yaml` finds the same checkpoint wherever it is started. A
// leading ~ is not expanded (it is an error); write ${HOME}/... instead.
//
// http.listen is host:port (host may be empty for every interface, or an
// IPv6 address in brackets) with a numeric port from 1 to 65535. It serves
// /metrics (Prometheus), /healthz and /readyz; see package metrics.
//
// delivery.warn_retained_wal and delivery.max_retained_wal are sizes as
// postgresql.conf writes them: a number with an optional unit B, kB, MB, GB
// or TB (powers of 1024).
//
// companies.table is `name` or `schema.name` (schema public when left out).
// As in SQL, unquoted parts are folded to lower case and double-quoted parts
// are taken as written: '"My Schema"."Companies"' (quote the whole value in
// YAML, since it starts with a double quote).
//
// companies.company_id names the column whose value is the company's id.
//
// companies.metadata maps each Userpilot metadata key to a column, or to a
// value derived from the row:
//
//	name: name                                            # key: column
//	monthly_spend: {column: spend, type: number}          # key: {column, type}
//	contact: {column: contact_email, pii: true}           # key: {column, type, pii}
//	plan: {column: custom_attributes, path: plan_name}    # a key inside json/jsonb
//	seats: {column: attrs, path: [subscribed.quantity]}   # a list: a key holding a dot
//	status: {column: status, values: {0: active}, default: unknown}
//	tier: {sql: "case when seats > 100 then 'large' else 'small' end"}
//	notes: {column: notes, on_null: keep}
//
// type is optional; two keys may read the same column. What each form
// means is package mapping's (and docs/configure.md's).
// companies.removed_keys (clear or keep) says what a backfill after a
// mapping change does with a key the mapping dropped.
//
// pii: true (default false) acknowledges that the column holds personal
// data and that sending it to Userpilot is cleared. check and preview warn
// of every other key whose column looks like personal data (see
// LooksPersonal and Companies.PersonalData: email, phone, address, birth
// date, national id, passport, IP address, a person's name; or a domain
// type named so, or inet). Nothing is refused either way.
//
// # Users
//
// users maps a table of users: user_id names the id column, company_id
// the column holding the user's company's id (optional; NULL is no
// company), and the other keys are companies' (metadata in every form,
// related entries naming their column user_id:, where, on_delete,
// removed_keys). users.company_from, a many-to-many membership table, is
// refused with the fix. The metadata key users.company_id
// (mapping.MembershipKey) is reserved in every section: it is how the
// stages carry a user's company (see mapping.Users.Entity).
//
// # Related tables and where
//
// companies.related is a list of entries, each a table, its company_id
// column and either metadata: (a lookup of one row, the first in order_by's
// order; the same forms and types as companies.metadata) or aggregate:
// (key: expression, or key: {sql: expression, type: ...}). companies.where
// is one SQL condition on the companies row. Parse checks each expression,
// order_by and where lexically (one piece of SQL: no comment, semicolon or
// unbalanced parenthesis, see internal/sqltext) and that every metadata key
// has one source across metadata, related entries and on_delete_metadata;
// package related checks the rest against Postgres.
package config
