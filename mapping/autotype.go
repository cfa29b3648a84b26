package mapping

import (
	"github.com/pgpilot/pgpilot/row"
)

// AutoType is the type a column's value is sent as when its metadata entry
// names none: number, boolean, date or string, by the column's Postgres
// type. ok is false for a column that is not a primitive value (json,
// jsonb, bytea, arrays, ranges, composites): such an entry needs
// type: string. `pgpilot init` says it beside each column it offers.
func AutoType(col row.Column) (t Type, ok bool) {
	switch classOf(col.TypeOID) {
	case classNumber:
		return TypeNumber, true
	case classBoolean:
		return TypeBoolean, true
	case classDate:
		return TypeDate, true
	case classText:
		return TypeString, true
	}
	return TypeAuto, false
}
