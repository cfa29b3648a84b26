package state

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// The dead-letter file stays append-only, one JSON record a line, readable
// with cat and jq. An operator's replay or drop (`pgpilot deadletters`) is
// appended as a Resolution, never a rewrite: the daemon may be appending
// dead letters at the same moment (O_APPEND keeps whole lines apart), and
// a rewrite by rename would send its later appends to an unlinked file. A
// dead letter is outstanding until a Resolution for its company follows it.

// Resolution ops.
const (
	// Replayed: the company's current row was asked for again (a re-sync).
	Replayed = "replayed"
	// Dropped: the operator set the company's dead letters aside for good.
	Dropped = "dropped"
)

// Resolution is appended to the dead-letter file to resolve every dead
// letter of CompanyID (or, with UserID set, of that user) written before
// it. Both "" resolves the dead letters that have neither (rows with a NULL
// or empty id).
type Resolution struct {
	Time      time.Time `json:"time"`
	Op        string    `json:"op"`
	CompanyID string    `json:"company_id"`
	UserID    string    `json:"user_id,omitempty"`
}

// subjectKey is whom a dead letter (or a resolution) is about: a company's
// id, or a user's behind a NUL byte no id holds.
func subjectKey(companyID, userID string) string {
	if userID != "" {
		return "\x00u:" + userID
	}
	return companyID
}

// record is one line of the file: a DeadLetter, or, with Op set, a
// Resolution.
type record struct {
	DeadLetter
	Op string `json:"op,omitempty"`
}

// DeadLetters is what the dead-letter file holds.
type DeadLetters struct {
	// Outstanding are the dead letters no Resolution followed, in the
	// order they were set aside.
	Outstanding []DeadLetter
	// Resolved counts the dead letters replayed or dropped.
	Resolved int
	// Unreadable counts lines that are not JSON records (a write torn by a
	// crash); they are skipped.
	Unreadable int
}

// ReadDeadLetters reads the dead-letter file of the state directory dir.
// A missing file holds none.
func ReadDeadLetters(dir string) (DeadLetters, error) {
	var out DeadLetters
	path := filepath.Join(dir, DeadLetterFile)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return out, fmt.Errorf("open dead-letter file: %w", err)
	}
	defer f.Close()
	var all []DeadLetter
	var resolved []bool
	open := map[string][]int{} // company (or user) → its outstanding dead letters
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 64*1024*1024)
	for sc.Scan() {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var r record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			out.Unreadable++
			continue
		}
		key := subjectKey(r.CompanyID, r.UserID)
		if r.Op == "" {
			open[key] = append(open[key], len(all))
			all = append(all, r.DeadLetter)
			resolved = append(resolved, false)
			continue
		}
		for _, i := range open[key] {
			resolved[i] = true
			out.Resolved++
		}
		delete(open, key)
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("read dead-letter file %s: %w", path, err)
	}
	for i, dl := range all {
		if !resolved[i] {
			out.Outstanding = append(out.Outstanding, dl)
		}
	}
	return out, nil
}

// AppendResolutions durably appends rs to the dead-letter file of the
// state directory dir, in one write. It takes no lock: the daemon, which
// holds it, appends whole lines too.
func AppendResolutions(dir string, rs []Resolution) error {
	if len(rs) == 0 {
		return nil
	}
	var data []byte
	for _, r := range rs {
		if r.Op != Replayed && r.Op != Dropped {
			return fmt.Errorf("dead-letter resolution %q: the op is %q or %q", r.Op, Replayed, Dropped)
		}
		if r.Time.IsZero() {
			r.Time = time.Now().UTC()
		}
		line, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encode dead-letter resolution: %w", err)
		}
		data = append(append(data, line...), '\n')
	}
	path := filepath.Join(dir, DeadLetterFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open dead-letter file %s: %w", path, err)
	}
	defer f.Close()
	// Whole lines or nothing, as the daemon's appends (appendLine).
	if err := appendLine(f, data); err != nil {
		return err
	}
	return f.Close()
}
