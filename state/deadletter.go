package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// DeadLetterFile is the file, inside the state directory, where records that
// Userpilot refused (or that could not be mapped) are set aside as JSON lines.
const DeadLetterFile = "deadletters.jsonl"

// DeadLetter is one record set aside instead of delivered. It holds enough to
// understand the refusal and to replay the record by hand.
type DeadLetter struct {
	Time      time.Time `json:"time"`
	LSN       LSN       `json:"lsn"`
	CompanyID string    `json:"company_id,omitempty"`
	// UserID is set instead of CompanyID for a user's record.
	UserID string `json:"user_id,omitempty"`
	// Status is Userpilot's HTTP status, or 0 when the row never left
	// pgpilot (it could not be mapped).
	Status int    `json:"status"`
	Reason string `json:"reason"`
	// Body is Userpilot's answer, truncated.
	Body    string `json:"body,omitempty"`
	Payload any    `json:"payload,omitempty"`
}

// AppendDeadLetter durably appends dl to the dead-letter file. The record
// counts as handled only once this returns, so the checkpoint may pass it.
//
// A failed append leaves the file as it was: a volume that fills mid-write
// takes part of the line, and that part is cut off again, so the record is
// written whole once there is room (the caller, given the error, keeps the
// checkpoint before it). Should the cut fail too, the next record starts on
// a line of its own: a fragment is one line a reader skips, never glued to
// the record after it.
func (d *Dir) AppendDeadLetter(dl DeadLetter) error {
	if dl.Time.IsZero() {
		dl.Time = time.Now().UTC()
	}
	line, err := json.Marshal(dl)
	if err != nil {
		return fmt.Errorf("encode dead letter for company %q: %w", dl.CompanyID, err)
	}
	line = append(line, '\n')
	d.mu.Lock()
	defer d.mu.Unlock()
	// The file may be removed or rotated between the look at its name and
	// the fsync: then the line went to an inode nobody will read, so it is
	// written again to the file now under the name (a rotation that kept
	// the old file gets it twice, never none).
	for attempt := 0; ; attempt++ {
		f, err := d.deadLetterFile()
		if err != nil {
			return err
		}
		if err := appendLine(f, line); err != nil {
			return err
		}
		if attempt > 0 || d.named(f) {
			return nil
		}
	}
}

// appendLine appends line (ending in a newline) to f, opened O_APPEND,
// durably, or leaves f as it was.
func appendLine(f *os.File, line []byte) error {
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("append to dead-letter file %s: %w", f.Name(), err)
	}
	size := st.Size()
	data := line
	if size > 0 {
		// A fragment an earlier failure could not cut off (or a crash
		// left) ends without a newline: this record starts a line of its
		// own.
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, size-1); err == nil && last[0] != '\n' {
			data = append([]byte{'\n'}, line...)
		}
	}
	n, err := f.Write(data)
	if err == nil {
		if err = f.Sync(); err != nil {
			err = fmt.Errorf("fsync dead-letter file %s: %w", f.Name(), err)
		}
	} else {
		err = fmt.Errorf("append to dead-letter file %s: %w", f.Name(), err)
	}
	if err != nil {
		cutBack(f, size, int64(n))
	}
	return err
}

// cutBack removes the n bytes a failed append left after size, when they
// are still the file's end: `pgpilot deadletters replay` appends from
// another process without the lock, and a line it appended meanwhile must
// not be cut (the fragment then stays, a line of its own: see appendLine).
func cutBack(f *os.File, size, n int64) {
	st, err := f.Stat()
	if err != nil || st.Size() != size+n || n == 0 && st.Size() == size {
		return
	}
	if f.Truncate(size) == nil {
		f.Sync()
	}
}

// deadLetterFile returns the open dead-letter file, opening it again when
// the name no longer leads to it: after an operator's rm, or a logrotate
// that renamed it, a line written to the old inode would be durable yet
// invisible (status counts 0, and the checkpoint passes the record). One
// stat per dead letter is nothing next to its fsync. d.mu is held.
func (d *Dir) deadLetterFile() (*os.File, error) {
	path := filepath.Join(d.path, DeadLetterFile)
	_, statErr := os.Stat(path)
	if d.deadLetters != nil {
		if d.named(d.deadLetters) {
			return d.deadLetters, nil
		}
		// Removed or replaced: what the old inode holds is already durable
		// (each line was fsynced), and whoever moved it has it.
		d.deadLetters.Close()
		d.deadLetters = nil
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600) // read: see appendLine
	if err != nil {
		return nil, fmt.Errorf("open dead-letter file %s: %w", path, err)
	}
	if errors.Is(statErr, os.ErrNotExist) {
		// A newly created file's directory entry must be durable too.
		if err := syncDir(d.path); err != nil {
			f.Close()
			return nil, err
		}
	}
	d.deadLetters = f
	return f, nil
}

// named reports whether the dead-letter file's name still leads to f.
func (d *Dir) named(f *os.File) bool {
	onDisk, err := os.Stat(filepath.Join(d.path, DeadLetterFile))
	if err != nil {
		return false
	}
	open, err := f.Stat()
	return err == nil && os.SameFile(open, onDisk)
}

// CountDeadLetters counts the outstanding dead letters in dir: those not
// replayed or dropped since (for status output).
func CountDeadLetters(dir string) (int, error) {
	dls, err := ReadDeadLetters(dir)
	return len(dls.Outstanding), err
}
