package daemon

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/state"
)

// reconcileMapping compares the mapping with the one Userpilot was synced
// with (recorded in the state directory) and, when they differ, queues a
// backfill: a snapshot job that sends, for every company, the keys added
// or defined anew, and null for those dropped (removed_keys: clear). It
// runs alongside the stream like a re-sync, resumes after a crash from the
// checkpoint, and never sends a value older than one the stream sent (see
// package snapshot). The new mapping is recorded only once the backfill is
// queued: a crash in between queues it again, which sends the same values.
//
// st is where the session starts: an initial sync that delivered nothing
// yet sends every key of this mapping, so nothing is backfilled.
func (s *session) reconcileMapping(st start) error {
	for _, spec := range s.cfg.Entities() {
		if err := s.reconcileSection(st, spec); err != nil {
			return err
		}
	}
	return nil
}

// reconcileSection compares one section's mapping with the one recorded
// for it (the users' in a file of their own) and queues its backfill.
func (s *session) reconcileSection(st start, spec mapping.Companies) error {
	users := spec.Kind == mapping.User
	file, noun := state.MappingFile, "company"
	if users {
		file, noun = state.UsersMappingFile, "user"
	}
	now := spec.Shape()
	data, err := json.MarshalIndent(now, "", "  ")
	if err != nil {
		return fmt.Errorf("encode the mapping's shape: %w", err)
	}
	data = append(data, '\n')
	old, ok, err := state.ReadMappingFile(s.dir.Path(), file)
	if err != nil {
		return err
	}
	// The section's initial sync, not begun, sends every key of this
	// mapping: nothing to backfill.
	fresh := st.job != nil && st.job.Initial() && st.job.Users == users && st.job.After == nil
	if users {
		s.mu.Lock()
		fresh = fresh || (s.cp.InitialSync == state.InitialSyncDone && !s.cp.UsersSynced)
		s.mu.Unlock()
	}
	var was mapping.Shape
	switch {
	case fresh:
		// The initial sync sends every key as this mapping defines it.
	case !ok:
		s.log.Info("recording the mapping in the state directory: a later change to it is backfilled for every "+noun,
			"file", file)
	case json.Unmarshal(old, &was) != nil:
		s.log.Warn("the recorded mapping cannot be read; recording this one (run `pgpilot resync` if the mapping changed meanwhile)",
			"file", file)
	default:
		ch := mapping.Compare(was, now)
		if ch.None() {
			if bytes.Equal(old, data) {
				return nil
			}
			break // the same mapping, written otherwise: recorded again
		}
		set, clear := ch.Backfill(spec)
		if len(set)+len(clear) == 0 {
			s.log.Info("the mapping changed since the last run; nothing to send", "changes", ch.Describe(spec))
			break
		}
		job, err := state.RequestResync(s.dir.Path(), state.Snapshot{Users: users, Backfill: &state.Backfill{Keys: set, Clear: clear}})
		if err != nil {
			return err
		}
		s.log.Info("the mapping changed since the last run; backfilling the keys that changed for every "+noun+", alongside the stream",
			"changes", ch.Describe(spec), "job", job.ID, "keys", set, "cleared", clear)
	}
	return s.dir.SaveMappingFile(file, data)
}
