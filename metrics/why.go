package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// WhyFunc says where one company (or, with user, one user) stands (for
// `pgpilot why`): a value
// encoded as JSON, or an error. The daemon sets it; this package knows
// nothing of what it returns.
type WhyFunc func(ctx context.Context, id string, user bool) (any, error)

// ErrWhyUnavailable is what a WhyFunc returns when it cannot answer yet
// (no delivery engine runs: starting, or standing by): 503.
var ErrWhyUnavailable = errors.New("not delivering yet")

// SetWhy sets how GET /why/{company} is answered.
func (m *Metrics) SetWhy(f WhyFunc) {
	if m == nil {
		return
	}
	m.why.Store(&f)
}

// serveWhy answers GET /why/{company} with the WhyFunc's answer as JSON:
// 503 with a one-line reason when there is none to give.
func (m *Metrics) serveWhy(w http.ResponseWriter, r *http.Request) {
	f := m.why.Load()
	if f == nil {
		http.Error(w, "this pgpilot does not answer `why` yet (starting, or standing by)", http.StatusServiceUnavailable)
		return
	}
	v, err := (*f)(r.Context(), r.PathValue("company"), r.URL.Query().Get("user") != "")
	if err != nil {
		status := http.StatusInternalServerError
		if errors.Is(err, ErrWhyUnavailable) {
			status = http.StatusServiceUnavailable
		}
		http.Error(w, fmt.Sprintf("why: %v", err), status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		m.log.Warn("serving /why", "error", err)
	}
}
