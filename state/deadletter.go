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
func (d *Dir) AppendDeadLetter(dl DeadLetter) error {
	if dl.Time.IsZero() {
		dl.Time = time.Now().UTC()
	}
	line, err := json.Marshal(dl)
	if err != nil {
		return fmt.Errorf("encode dead letter for company %q: %w", dl.CompanyID, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.deadLetters == nil {
		path := filepath.Join(d.path, DeadLetterFile)
		_, statErr := os.Stat(path)
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("open dead-letter file %s: %w", path, err)
		}
		if errors.Is(statErr, os.ErrNotExist) {
			// A newly created file's directory entry must be durable too.
			if err := syncDir(d.path); err != nil {
				f.Close()
				return err
			}
		}
		d.deadLetters = f
	}
	if _, err := d.deadLetters.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("write dead letter to %s: %w", d.deadLetters.Name(), err)
	}
	if err := d.deadLetters.Sync(); err != nil {
		return fmt.Errorf("fsync dead-letter file %s: %w", d.deadLetters.Name(), err)
	}
	return nil
}

// CountDeadLetters counts the outstanding dead letters in dir: those not
// replayed or dropped since (for status output).
func CountDeadLetters(dir string) (int, error) {
	dls, err := ReadDeadLetters(dir)
	return len(dls.Outstanding), err
}
