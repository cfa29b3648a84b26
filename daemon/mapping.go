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
	if !s.cfg.HasCompanies() {
		// The users' mapping is not recorded: a change of it is not
		// backfilled (`pgpilot resync --users` sends every user again).
		return nil
	}
	now := s.cfg.Companies.Shape()
	data, err := json.MarshalIndent(now, "", "  ")
	if err != nil {
		return fmt.Errorf("encode the mapping's shape: %w", err)
	}
	data = append(data, '\n')
	old, ok, err := state.ReadMapping(s.dir.Path())
	if err != nil {
		return err
	}
	fresh := st.job != nil && st.job.ID == state.InitialSnapshot && !st.job.Users && st.job.After == nil
	var was mapping.Shape
	switch {
	case fresh:
		// The initial sync sends every key as this mapping defines it.
	case !ok:
		s.log.Info("recording the mapping in the state directory: a later change to it is backfilled for every company",
			"file", state.MappingFile)
	case json.Unmarshal(old, &was) != nil:
		s.log.Warn("the recorded mapping cannot be read; recording this one (run `pgpilot resync` if the mapping changed meanwhile)",
			"file", state.MappingFile)
	default:
		ch := mapping.Compare(was, now)
		if ch.None() {
			if bytes.Equal(old, data) {
				return nil
			}
			break // the same mapping, written otherwise: recorded again
		}
		set, clear := ch.Backfill(s.cfg.Companies)
		if len(set)+len(clear) == 0 {
			s.log.Info("the mapping changed since the last run; nothing to send", "changes", ch.Describe(s.cfg.Companies))
			break
		}
		job, err := state.RequestResync(s.dir.Path(), state.Snapshot{Backfill: &state.Backfill{Keys: set, Clear: clear}})
		if err != nil {
			return err
		}
		s.log.Info("the mapping changed since the last run; backfilling the keys that changed for every company, alongside the stream",
			"changes", ch.Describe(s.cfg.Companies), "job", job.ID, "keys", set, "cleared", clear)
	}
	return s.dir.SaveMapping(data)
}
