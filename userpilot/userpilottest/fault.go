package userpilottest

import (
	"fmt"
	"net/http"
	"time"
)

// Fault is a misbehaviour to inject on a request, after its key and rate
// limit were checked.
type Fault struct {
	Status     int           // answer this status (e.g. 500, 503, 429) with the documented error body
	RetryAfter string        // if set, the Retry-After header sent with Status
	Apply      bool          // apply the record (or submit the job) first, then answer Status: "applied but answered 500"
	Delay      time.Duration // wait before answering; ends early if the client gives up
	Reset      bool          // drop the connection without answering
}

// faults are the injected faults waiting for requests.
type faults struct {
	identify []Fault // one per next real-time identify
	always   *Fault  // every real-time identify, once identify is used up
	bulk     []Fault // one per next bulk identify
}

func (f *faults) nextIdentify() *Fault {
	if len(f.identify) > 0 {
		next := f.identify[0]
		f.identify = f.identify[1:]
		return &next
	}
	if f.always != nil {
		always := *f.always
		return &always
	}
	return nil
}

func (f *faults) nextBulk() *Fault {
	if len(f.bulk) == 0 {
		return nil
	}
	next := f.bulk[0]
	f.bulk = f.bulk[1:]
	return &next
}

// FailNext gives f to the next n real-time identify requests (after any
// queued before).
func (s *Server) FailNext(n int, f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.faults.identify = append(s.faults.identify, f)
	}
}

// SetFault gives f to every real-time identify request until SetFault(nil).
func (s *Server) SetFault(f *Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f == nil {
		s.faults.always = nil
		return
	}
	copied := *f
	s.faults.always = &copied
}

// FailNextBulk gives f to the next n bulk identify requests. With Apply, the
// job is submitted before Status is answered, as when Userpilot accepted a
// job but the answer was lost.
func (s *Server) FailNextBulk(n int, f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.faults.bulk = append(s.faults.bulk, f)
	}
}

func faultAnswer(f *Fault) *apiError {
	return &apiError{status: f.Status, code: "injected_fault", retryAfter: f.RetryAfter,
		message: fmt.Sprintf("stand-in fault: answering HTTP %d", f.Status)}
}

func rejection(status int, id string) *apiError {
	return &apiError{status: status, code: "invalid_company", details: map[string]string{"company_id": id},
		message: fmt.Sprintf("company %q was rejected (HTTP %d %s)", id, status, http.StatusText(status))}
}
