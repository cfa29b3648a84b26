// Package mapping turns rows of the mirrored table into Userpilot
// identify-company payloads, as the companies section of the config file
// (package config loads it) describes: Compile checks the mapping against
// a table's columns and prepares each key's conversion; a Mapper maps a
// row by position, allocating nothing on the stream's hot path. It is
// pure: no I/O.
//
// It also says what a mapping is, for the stages that compare or narrow
// it: its Shape (each key's definition, recorded after a sync and compared
// at the next start) and Restrict (the keys a backfill sends).
//
// # Users
//
// The users section (Users) is mapped by the same code: Users.Entity is
// it as a Companies of Kind User, the user_id column as its id, and the
// user's company read, as a string, under the reserved key MembershipKey
// (a NULL or empty company is null: no company). Mapper.IdentifyUser
// takes the company out of the metadata into userpilot.User; Membership
// says where Map puts it. Every message names the users section.
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
// A value that cannot be converted (text that is not a number, say) holds
// back its key (BadValues, naming the key, the column and the reason); the
// row's other keys are mapped.
//
// # Derived keys
//
// A key may read inside a json or jsonb column (Field.Path): the value at
// the path is found in the column's text in process, without decoding the
// document; without type it is sent as the JSON value's own type, a
// number with the digits Postgres printed; a missing path (or one through
// a non-object) is null; an object or array is a bad value unless type:
// string. A key may replace a value by a label (Field.Values, Default),
// and leave a NULL out rather than send null (KeepNull). An sql: key
// (Field.SQL) is not read from the row here: package related re-reads it.
//
// One bad value costs one key: Map leaves out a key whose value cannot be
// read as its type and maps the others, returning BadValues.
package mapping
