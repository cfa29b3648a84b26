// Package mapping loads pgpilot's configuration file and turns rows of the
// mirrored table into Userpilot identify-company payloads. It is pure: apart
// from reading the file in Load it does no I/O.
//
// # The configuration file
//
// The file has six sections: postgres, userpilot, state, delivery, http
// and companies; state, delivery and http are optional.
// mapping.example.yaml at the repository root documents every key. Unknown
// keys, at any level, are errors that list the allowed keys; a key written
// twice is an error. Every problem is reported at once, each
// as FILE:LINE: KEY: what is wrong, with its fix on the line below (a
// *ConfigError, whose Fix field holds the fix, in a ConfigErrors list, so
// errors.As finds each).
//
// Required: postgres.url, userpilot.api_key, companies.table,
// companies.company_id and companies.metadata with at least one entry.
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
// companies.metadata maps each Userpilot metadata key to a column, in one of
// two forms:
//
//	name: name                                   # key: column
//	monthly_spend: {column: spend, type: number} # key: {column, type}
//	contact: {column: contact_email, pii: true}  # key: {column, type, pii}
//
// type is optional; two keys may read the same column.
//
// pii: true (default false) acknowledges that the column holds personal
// data and that sending it to Userpilot is cleared. check and preview warn
// of every other key whose column looks like personal data (see
// LooksPersonal and Companies.PersonalData: email, phone, address, birth
// date, national id, passport, IP address, a person's name; or a domain
// type named so, or inet). Nothing is refused either way.
//
// # Types
//
// Userpilot accepts only primitive metadata values: string, number, boolean
// and null. Column types fall in five classes:
//
//	number      int2, int4, int8, oid, float4, float8, numeric
//	boolean     bool
//	date        date, timestamp, timestamptz
//	text        text, varchar, char(n), name, "char", uuid, inet, cidr, macaddr,
//	            macaddr8, time, timetz, interval, money, xml; also enums,
//	            citext and domains over these (the caller resolves them)
//	structured  everything else: json, jsonb, bytea, arrays, ranges,
//	            composites, geometric types, unknown types
//
// Without type, the class decides: number → number, boolean → boolean,
// date → date, text → string; a structured column is refused (add
// type: string to send its text).
//
// With type:
//
//	string   any column; its Postgres text as is, but a boolean becomes "true"/"false"
//	number   number columns, or text-typed columns (text, varchar, char, name) parsed per row
//	boolean  bool columns, or text-typed columns parsed per row: true/false, t/f,
//	         yes/no, on/off, 1/0, any case, surrounding spaces ignored
//	date     date/timestamp columns, or text-typed columns parsed per row:
//	         RFC 3339, or Postgres's ISO text (2024-03-01 09:30:00+00,
//	         2024-03-01 09:30:00 taken as UTC, 2024-03-01)
//
// Any other combination is refused by Compile, naming the key, the column
// and its type, and the fix. That includes reading a number, boolean or date
// out of a uuid, inet, interval, money or similar column, whose text never
// holds one: it would fail on every row, so it fails once, at start-up.
//
// The company_id column must be of the number or text class. Its value is
// sent as the Postgres text, always as a JSON string; a NULL, empty or
// unchanged-TOASTed value makes the row a *RowError.
//
// # Values
//
// Rows arrive as Postgres text output (DateStyle ISO, TimeZone UTC,
// extra_float_digits 3) and are decoded with pgx's pgtype codecs:
//
//   - Integers and oid: the exact decimal digits, as a JSON number.
//   - numeric: exact, digit for digit, in plain notation (no float on the
//     way): numeric(38,10) 1234567890123456789012345678.0123456789 is sent
//     as written.
//   - float4, float8: the shortest text that reads back as the same float,
//     in plain digits between 1e-6 and 1e21 and exponent notation outside
//     (as encoding/json writes floats), e.g. 0.1, 1e+21.
//   - NaN and ±Infinity (numeric or float) have no JSON form: sent as null.
//   - bool: true or false.
//   - date, timestamp, timestamptz: an RFC 3339 string in UTC,
//     2024-03-01T09:30:00Z, with fractional seconds only when non-zero
//     (2024-03-01T09:30:00.123456Z). A date is midnight UTC; a timestamp
//     without time zone is taken as UTC. ±infinity and years outside
//     0001–9999 (BC dates included), which RFC 3339 cannot express, are sent
//     as null.
//   - text-class columns: the text as is.
//   - NULL: null, which clears the value in Userpilot.
//   - An unchanged TOASTed value (Postgres did not send it): the key is left
//     out of the payload, so Userpilot keeps the value it has. It is never
//     sent as null.
//
// A value that cannot be converted (text that is not a number, say) makes the
// row a *RowError naming the key, the column and the reason.
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
package mapping
