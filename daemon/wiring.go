package daemon

import (
	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
)

// The daemon hands these implementations to the stages that declare the
// interfaces; the compiler checks they still fit.
var (
	_ delivery.Sender      = (*userpilot.Client)(nil)
	_ delivery.DeadLetters = (*state.Dir)(nil)
	_ delivery.Index       = (*state.Store)(nil)
	_ delivery.Outbox      = (*state.Store)(nil)
	_ delivery.InFlight    = (*state.Store)(nil)
	_ delivery.Estimates   = (*state.Store)(nil)
	_ realtimeLimiter      = (*userpilot.Client)(nil)
	_ delivery.Recorder    = readRecorder{}
)
