package state

import (
	"encoding/json"
	"fmt"
)

// LSN is a Postgres write-ahead log position. It is written as Postgres
// prints it ("16/B374D848") so an operator can compare it with
// pg_replication_slots by eye.
type LSN uint64

// String formats the LSN the way Postgres does.
func (l LSN) String() string {
	return fmt.Sprintf("%X/%X", uint64(l)>>32, uint32(l))
}

// ParseLSN reads an LSN in Postgres's "hi/lo" hexadecimal form.
func ParseLSN(s string) (LSN, error) {
	var hi, lo uint32
	var rest string
	n, _ := fmt.Sscanf(s, "%X/%X%s", &hi, &lo, &rest)
	if n != 2 {
		return 0, fmt.Errorf("invalid LSN %q: want the form 16/B374D848", s)
	}
	return LSN(uint64(hi)<<32 | uint64(lo)), nil
}

// MarshalJSON writes the LSN as a string.
func (l LSN) MarshalJSON() ([]byte, error) { return json.Marshal(l.String()) }

// UnmarshalJSON reads the LSN from its string form.
func (l *LSN) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("LSN must be a string: %w", err)
	}
	v, err := ParseLSN(s)
	if err != nil {
		return err
	}
	*l = v
	return nil
}
