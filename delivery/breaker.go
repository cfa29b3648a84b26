package delivery

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/pgpilot/pgpilot/userpilot"
)

// A refusal (a 4xx other than 401/403/408/409/429) says "this record is
// invalid" only while Userpilot accepts others. A wrong base URL, a proxy
// or an API change refuses every record alike, and setting each aside as a
// dead letter would confirm the whole stream past Postgres: delivery must
// stop instead, keeping the changes in the slot. So a refused record is
// held, neither delivered nor set aside, until the evidence decides:
//
//   - anything accepted (a 2xx: identify, a completed bulk job, a deletion)
//     shows Userpilot working when it was sent: a refusal of a call sent
//     before it (held, or answered later) is a bad record, set aside as
//     before;
//   - a 404 on a path Userpilot serves (identify, delete) means the
//     endpoint is not Userpilot's API: the breaker trips at once;
//   - Threshold distinct companies refused in a row with the same status,
//     nothing accepted in between: it trips;
//   - a record held for Hold with neither is set aside (a lone bad record
//     on a quiet table), but the streak goes on counting.
//
// Tripped, the pipeline sends nothing more, sets nothing aside and never
// checkpoints past the records held; the reason is logged once and
// reported (OnTrip, for /readyz). It stays tripped until pgpilot restarts,
// which is when the operator has fixed the configuration.

// ErrRefusing is wrapped by the error a tripped pipeline returns when its
// input ends: Userpilot (or what answers at its endpoint) refuses every
// record, so nothing more is delivered until pgpilot restarts.
var ErrRefusing = errors.New("delivery stopped: the Userpilot endpoint refuses every record")

// Defaults of the breaker.
const (
	// DefaultBreakerThreshold is how many distinct companies in a row,
	// refused with the same status and nothing accepted in between, stop
	// delivery: at Userpilot's 10 requests/s, two seconds of refusals.
	DefaultBreakerThreshold = 20
	// DefaultBreakerHold is how long a refused record waits for evidence
	// before it is set aside.
	DefaultBreakerHold = 30 * time.Second
)

// Breaker decides whether refusals are bad records or a refusing
// endpoint. One Breaker lives as long as the process: a pipeline of a later
// session starts tripped if an earlier one tripped it, so the fix is
// logged once and nothing is sent until a restart. The zero value is
// usable.
type Breaker struct {
	// Threshold: distinct companies refused in a row with the same status
	// that trip it; 0 → DefaultBreakerThreshold.
	Threshold int
	// Hold: how long a refused record is held for evidence; 0 →
	// DefaultBreakerHold.
	Hold time.Duration
	// Endpoint is userpilot.endpoint, for the reason.
	Endpoint string
	// OnTrip hears the reason once, when it trips.
	OnTrip func(reason string)

	mu     sync.Mutex
	reason string
}

// Reason says why delivery is stopped, or "" while it is not.
func (b *Breaker) Reason() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.reason
}

// trip stops delivery for reason and reports whether this call did it (the
// first one logs and reports).
func (b *Breaker) trip(reason string) bool {
	b.mu.Lock()
	if b.reason != "" {
		b.mu.Unlock()
		return false
	}
	b.reason = reason
	b.mu.Unlock()
	if b.OnTrip != nil {
		b.OnTrip(reason)
	}
	return true
}

func (b *Breaker) threshold() int {
	if b.Threshold > 0 {
		return b.Threshold
	}
	return DefaultBreakerThreshold
}

func (b *Breaker) hold() time.Duration {
	if b.Hold > 0 {
		return b.Hold
	}
	return DefaultBreakerHold
}

// refusal is a refused record waiting for the breaker's verdict.
type refusal struct {
	e      *entry
	rej    *userpilot.RejectedError
	reason string // for its dead letter
	at     time.Time
}

// streak counts the distinct companies refused in a row with one status:
// a lone bad company refused again after its hold counts once.
type streak struct {
	status    int
	companies map[string]struct{}
}

// add counts a refusal and returns the streak's length.
func (s *streak) add(status int, companyID string) int {
	if status != s.status || s.companies == nil {
		*s = streak{status: status, companies: map[string]struct{}{}}
	}
	s.companies[companyID] = struct{}{}
	return len(s.companies)
}

// refusals is the dispatcher's part of the breaker: the refused records
// held for a verdict, the streak, and what vouches for Userpilot. Its
// methods decide; the dispatcher sets aside (I/O) what they hand back.
type refusals struct {
	breaker *Breaker
	held    []refusal
	streak  streak
	// vouched is when the newest accepted call was sent: Userpilot worked
	// then, so a refusal of a call sent before it is a bad record.
	vouched time.Time
}

// stopped reports whether the breaker has tripped (in this session or an
// earlier one).
func (r *refusals) stopped() bool { return r.breaker.Reason() != "" }

// refusalVerdict is what a refusal means.
type refusalVerdict int

const (
	setAsideNow    refusalVerdict = iota // a bad record: set aside at once
	holdForVerdict                       // held until the evidence decides
)

// refused takes a record Userpilot refused on path (with its dead-letter
// reason), at now. A record held stays in flight (its company's newer
// states wait) until accepted or expired decide, or for good once tripped.
// trip is the reason the breaker trips for, when it does.
func (r *refusals) refused(e *entry, rej *userpilot.RejectedError, path, reason string, now time.Time) (v refusalVerdict, trip string) {
	if rej.Status == 0 {
		// Never sent (it cannot be encoded): the record's fault alone.
		return setAsideNow, ""
	}
	if !r.stopped() && !e.sentAt.time().After(r.vouched) {
		// A call sent after this one was accepted: Userpilot was working
		// after this one left, so this is a bad record.
		return setAsideNow, ""
	}
	r.held = append(r.held, refusal{e: e, rej: rej, reason: reason, at: now})
	if r.stopped() {
		return holdForVerdict, ""
	}
	n := r.streak.add(rej.Status, e.id)
	b := r.breaker
	switch {
	case rej.Status == http.StatusNotFound:
		trip = fmt.Sprintf("userpilot.endpoint %s answers 404 on %s, a path Userpilot serves: it is not Userpilot's API "+
			"(a wrong base URL, a proxy, or an API change); check the base URL (us, eu, or the host Userpilot's Settings → Environment shows) "+
			"and restart pgpilot. Delivery is stopped: nothing was set aside, and the slot keeps every change",
			b.Endpoint, path)
	case n >= b.threshold():
		trip = fmt.Sprintf("userpilot.endpoint %s refused %d different companies in a row with HTTP %d and accepted none in between: "+
			"not bad records but the endpoint or the mapping (last answer: %s); check userpilot.endpoint and the mapping, "+
			"then restart pgpilot. Delivery is stopped: nothing was set aside, and the slot keeps every change",
			b.Endpoint, n, rej.Status, truncate(strings.TrimSpace(rej.Body), 200))
	}
	return holdForVerdict, trip
}

// accepted is Userpilot accepting a request sent at sent: the refusals of
// requests sent before it are bad records after all, and are handed back
// to be set aside. Those sent after it stay held: the endpoint may have
// broken since.
func (r *refusals) accepted(sent time.Time) []refusal {
	if r.stopped() {
		// A call sent before the trip: the verdict stands until a restart.
		return nil
	}
	if sent.After(r.vouched) {
		r.vouched = sent
	}
	out := r.take(func(h refusal) bool { return !h.e.sentAt.time().After(sent) })
	// The streak is the refusals since, in the order they came.
	r.streak = streak{}
	for _, h := range r.held {
		r.streak.add(h.rej.Status, h.e.id)
	}
	return out
}

// expired hands back the refused records held longer than the breaker's
// Hold: nothing else came to decide (a lone bad record on a quiet table).
func (r *refusals) expired(now time.Time) []refusal {
	if r.stopped() || len(r.held) == 0 {
		return nil
	}
	cutoff := now.Add(-r.breaker.hold())
	return r.take(func(h refusal) bool { return !h.at.After(cutoff) })
}

// take removes the held refusals that match, in their order.
func (r *refusals) take(match func(refusal) bool) []refusal {
	var out []refusal
	kept := r.held[:0]
	for _, h := range r.held {
		if match(h) {
			out = append(out, h)
		} else {
			kept = append(kept, h)
		}
	}
	clear(r.held[len(kept):])
	r.held = kept
	return out
}

// putBack returns refusals that could not be set aside, first.
func (r *refusals) putBack(hs []refusal) {
	r.held = append(slices.Clip(hs), r.held...)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
