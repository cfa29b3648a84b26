package delivery

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/pgpilot/pgpilot/state"
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

// refused takes a record Userpilot refused on path (with its dead-letter
// reason); it stays in flight (its company's newer states wait) until
// accepted() or tick() decide, or for good once tripped.
func (p *Pipeline) refused(e *entry, rej *userpilot.RejectedError, path, reason string) error {
	if rej.Status == 0 {
		// Never sent (it cannot be encoded): the record's fault alone.
		if err := p.deadLetter(state.DeadLetter{LSN: state.LSN(e.lsn), CompanyID: e.id,
			Reason: reason, Body: rej.Body, Payload: p.company(e)}); err != nil {
			return err
		}
		p.finish(e)
		return nil
	}
	if !p.stopped() && !e.sentAt.After(p.vouched) {
		// A call sent after this one was accepted: Userpilot was working
		// after this one left, so this is a bad record.
		if err := p.deadLetter(state.DeadLetter{LSN: state.LSN(e.lsn), CompanyID: e.id,
			Status: rej.Status, Reason: reason, Body: rej.Body, Payload: p.payloadOf(e)}); err != nil {
			return err
		}
		p.finish(e)
		return nil
	}
	p.refusals = append(p.refusals, refusal{e: e, rej: rej, reason: reason, at: time.Now()})
	if p.stopped() {
		return nil
	}
	n := p.streak.add(rej.Status, e.id)
	b := p.opts.Breaker
	switch {
	case rej.Status == http.StatusNotFound:
		p.trip(fmt.Sprintf("userpilot.endpoint %s answers 404 on %s, a path Userpilot serves: it is not Userpilot's API "+
			"(a wrong base URL, a proxy, or an API change); check the base URL (us, eu, or the host Userpilot's Settings → Environment shows) "+
			"and restart pgpilot. Delivery is stopped: nothing was set aside, and the slot keeps every change",
			b.Endpoint, path))
	case n >= b.threshold():
		p.trip(fmt.Sprintf("userpilot.endpoint %s refused %d different companies in a row with HTTP %d and accepted none in between: "+
			"not bad records but the endpoint or the mapping (last answer: %s); check userpilot.endpoint and the mapping, "+
			"then restart pgpilot. Delivery is stopped: nothing was set aside, and the slot keeps every change",
			b.Endpoint, n, rej.Status, truncate(strings.TrimSpace(rej.Body), 200)))
	}
	return nil
}

// accepted is Userpilot accepting a request sent at sent: the refusals of
// requests sent before it are bad records after all, and are set aside.
// Those sent after it stay held: the endpoint may have broken since.
func (p *Pipeline) accepted(sent time.Time) error {
	if p.stopped() {
		// A call sent before the trip: the verdict stands until a restart.
		return nil
	}
	if sent.After(p.vouched) {
		p.vouched = sent
	}
	if err := p.setAsideHeld(func(h refusal) bool { return !h.e.sentAt.After(sent) }); err != nil {
		return err
	}
	// The streak is the refusals since, in the order they came.
	p.streak = streak{}
	for _, h := range p.refusals {
		p.streak.add(h.rej.Status, h.e.id)
	}
	return nil
}

// setAsideHeld dead-letters the refused records held that match.
func (p *Pipeline) setAsideHeld(match func(refusal) bool) error {
	kept := p.refusals[:0]
	for i, h := range p.refusals {
		if !match(h) {
			kept = append(kept, h)
			continue
		}
		if err := p.deadLetter(state.DeadLetter{LSN: state.LSN(h.e.lsn), CompanyID: h.e.id,
			Status: h.rej.Status, Reason: h.reason, Body: h.rej.Body, Payload: p.payloadOf(h.e)}); err != nil {
			p.refusals = append(kept, p.refusals[i:]...)
			return err
		}
		p.finish(h.e)
	}
	clear(p.refusals[len(kept):])
	p.refusals = kept
	return nil
}

// expireHeld sets aside refused records held longer than the breaker's
// Hold: nothing else came to decide (a lone bad record on a quiet table).
func (p *Pipeline) expireHeld() error {
	if p.stopped() || len(p.refusals) == 0 {
		return nil
	}
	cutoff := time.Now().Add(-p.opts.Breaker.hold())
	return p.setAsideHeld(func(h refusal) bool { return !h.at.After(cutoff) })
}

// trip stops delivery; the first trip of the process logs the reason.
func (p *Pipeline) trip(reason string) {
	if p.opts.Breaker.trip(reason) {
		p.log.Error("delivery stopped: "+reason, "held_records", len(p.refusals))
	}
	p.reportStatus(true) // `pgpilot status` says so too
}

// stopped reports whether the breaker has tripped (in this session or an
// earlier one).
func (p *Pipeline) stopped() bool { return p.opts.Breaker.Reason() != "" }

// parked counts the entries in flight that no call is carrying: the
// refusals held and the deletions waiting for a request. Once tripped,
// nothing else is in flight when it equals p.inflight.
func (p *Pipeline) parked() int {
	n := len(p.refusals) + len(p.deletes)
	for _, b := range p.deleteSplits {
		n += len(b)
	}
	return n
}

// payloadOf is what a dead letter keeps of an entry: the payload, or
// nothing for a deletion.
func (p *Pipeline) payloadOf(e *entry) any {
	if e.delete {
		return nil
	}
	return p.company(e)
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
