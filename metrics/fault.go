package metrics

import (
	"slices"
	"strings"
)

// Fault kinds pgpilot reports. A fault is a state pgpilot cannot leave by
// itself: it names what an operator must do (the log's ERROR line has the
// fix), and while it lasts /readyz answers 503 with its reason and the
// gauge pgpilot_fault{kind} is 1. Each kind here is exported at 0 from the
// start, so an alert on it has a series to watch; any other kind a caller
// sets is exported from then on.
const (
	// FaultPublicationMissing: the publication pgpilot streams through
	// was dropped; changes since cannot be decoded from the slot.
	FaultPublicationMissing = "publication_missing"
	// FaultStateDirUnwritable: a write to the state directory failed (the
	// volume is full, read-only, or not pgpilot's): nothing is
	// checkpointed or confirmed until it is writable again.
	FaultStateDirUnwritable = "state_dir_unwritable"
)

// knownFaults are exported at 0 before they are ever set.
var knownFaults = []string{FaultPublicationMissing, FaultStateDirUnwritable}

// SetFault says pgpilot is stuck on kind until ClearFault(kind): reason
// (one line, what happened and what to do) is /readyz's answer meanwhile.
// Setting a kind again replaces its reason.
func (m *Metrics) SetFault(kind, reason string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.faults == nil {
		m.faults = map[string]string{}
	}
	m.faults[kind] = strings.ReplaceAll(reason, "\n", " ")
	if !slices.Contains(m.faultKinds, kind) {
		m.faultKinds = append(m.faultKinds, kind)
	}
}

// ClearFault says kind is over; a kind not set is ignored.
func (m *Metrics) ClearFault(kind string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.faults, kind)
}

// Fault returns kind's reason while it is set.
func (m *Metrics) Fault(kind string) (reason string, set bool) {
	if m == nil {
		return "", false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	reason, set = m.faults[kind]
	return reason, set
}

// faultReason is the set faults as one line, in kind order ("" for none).
// m.mu is held.
func (m *Metrics) faultReason() string {
	if len(m.faults) == 0 {
		return ""
	}
	kinds := make([]string, 0, len(m.faults))
	for k := range m.faults {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	parts := make([]string, len(kinds))
	for i, k := range kinds {
		parts[i] = k + ": " + m.faults[k]
	}
	return strings.Join(parts, "; ")
}

// exportedFaults are the kinds the gauge shows, sorted. m.mu is held.
func (m *Metrics) exportedFaults() []string {
	kinds := slices.Clone(knownFaults)
	for _, k := range m.faultKinds {
		if !slices.Contains(kinds, k) {
			kinds = append(kinds, k)
		}
	}
	slices.Sort(kinds)
	return kinds
}

// Faults returns the set faults as one line, in kind order ("" for none).
func (m *Metrics) Faults() string {
	if m == nil {
		return ""
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.faultReason()
}
