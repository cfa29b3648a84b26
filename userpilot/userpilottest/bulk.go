package userpilottest

import (
	"crypto/rand"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Bulk job statuses used by the stand-in (a subset of Userpilot's).
const (
	jobQueued     = "queued"
	jobProcessing = "processing"
	jobCompleted  = "completed"
	jobFailed     = "failed"
)

// job is one bulk identify job. Its records take effect only when it
// completes, as with Userpilot ("accepted is not applied").
type job struct {
	id        string
	records   []company
	users     []userRecord // a job of users (records is then nil)
	submitted time.Time
	rps       float64       // records/s, fixed at submission; 0: see Options.BulkRecordsPerSecond
	overhead  time.Duration // queued this long before the first record is processed
	fail      bool          // ends failed, applying nothing
	polled    bool          // with rps 0, the first poll after the overhead completes it
	status    string
	doneRows  int
	ended     time.Time
}

// orphanJobAfter is when a job completes at the latest with
// BulkRecordsPerSecond 0.
const orphanJobAfter = time.Second

func (j *job) running() bool { return j.status != jobCompleted && j.status != jobFailed }

// len is how many records the job holds, companies or users.
func (j *job) len() int { return len(j.records) + len(j.users) }

// advanceJobsLocked moves the running job along to now, applying its records
// if it has finished.
func (s *Server) advanceJobsLocked(now time.Time) {
	j := s.currentJob
	if j == nil || !j.running() {
		return
	}
	total := j.len()
	done, end := 0, now
	began := j.submitted.Add(j.overhead) // the first record is processed from here
	if rps := j.rps; rps > 0 {
		done = max(0, min(total, int(now.Sub(began).Seconds()*rps)))
		end = began.Add(time.Duration(float64(total) / rps * float64(time.Second)))
	} else if !now.Before(began) && (j.polled || now.Sub(began) >= orphanJobAfter) {
		// Userpilot works through a job whether or not anyone asks: a job
		// whose submitter was killed before polling it still completes.
		done = total
	}
	if done < total {
		j.doneRows = done
		j.status = jobQueued
		if !now.Before(began) {
			j.status = jobProcessing
		}
		return
	}
	j.ended = end
	if j.fail {
		j.status = jobFailed
		return
	}
	before := s.lastApplied
	if j.users != nil {
		s.applyUsersLocked("bulk identify", j.users)
	} else {
		s.applyLocked("bulk identify", j.records)
	}
	// When Userpilot finished it, however late someone looked.
	s.lastApplied = before
	if end.After(before) {
		s.lastApplied = end
	}
	j.doneRows = total
	j.status = jobCompleted
}

// serveBulk submits a bulk identify job.
func (s *Server) serveBulk(ex *exchange) {
	if e := s.authorize(ex, http.MethodPost); e != nil {
		ex.fail(e)
		return
	}
	body, e := readBody(ex)
	if e != nil {
		ex.fail(e)
		return
	}
	s.mu.Lock()
	f := s.faults.nextBulk()
	s.mu.Unlock()
	s.serveWithFault(ex, f, func() (int, any, *apiError) { return s.submitJob(ex, body) })
}

// submitJob validates a bulk body and queues it as the account's one job.
func (s *Server) submitJob(ex *exchange, body []byte) (int, any, *apiError) {
	if e := checkHeaders(ex.r, true); e != nil {
		return 0, nil, e
	}
	cos, e := receiveBulk(body)
	if len(cos) > 0 {
		ex.rec.CompanyIDs = make([]string, len(cos))
		for i, co := range cos {
			ex.rec.CompanyIDs[i] = co.id
		}
	}
	if e != nil {
		return 0, nil, e
	}
	s.lock()
	defer s.unlock()
	for _, co := range cos {
		if status, ok := s.rejects[co.id]; ok {
			return 0, nil, rejection(status, co.id)
		}
	}
	return s.queueJobLocked(&job{records: cos})
}

// queueJobLocked queues j as the account's one job, of companies or of
// users: 409 while a job of either kind runs.
func (s *Server) queueJobLocked(j *job) (int, any, *apiError) {
	if s.currentJob != nil && s.currentJob.running() {
		return 0, nil, &apiError{status: http.StatusConflict, code: "job_running",
			message: "a bulk job is already running: wait for it to finish",
			details: map[string]string{"job_id": s.currentJob.id}}
	}
	s.jobSeq++
	j.id = fmt.Sprintf("bulk:jobs:NX-%d:%s", s.jobSeq, newUUID())
	j.submitted, j.rps, j.overhead = time.Now(), s.bulkSpeed, s.jobOverhead
	j.fail, j.status = s.failNextJob, jobQueued
	s.failNextJob = false
	s.jobs[j.id] = j
	s.currentJob = j
	return http.StatusAccepted, map[string]any{
		"job_id":       j.id,
		"status":       j.status,
		"submitted_at": j.submitted.UTC().Format(time.RFC3339Nano),
	}, nil
}

// serveJob answers GET /v1/background_jobs/{job_id}; escaped is the id as
// it appears in the path.
func (s *Server) serveJob(ex *exchange, escaped string) {
	if e := s.authorize(ex, http.MethodGet); e != nil {
		ex.fail(e)
		return
	}
	id, err := url.PathUnescape(escaped)
	if err != nil || strings.Contains(escaped, "/") {
		// A raw "/" means the id was not escaped as one path segment.
		ex.fail(&apiError{status: http.StatusNotFound, code: "not_found", message: "no such endpoint: " + ex.r.URL.Path})
		return
	}
	s.mu.Lock()
	j := s.jobs[id]
	if j != nil {
		j.polled = true
	}
	s.advanceJobsLocked(time.Now())
	var answer map[string]any
	if j != nil {
		end := time.Now()
		var endTime any
		if !j.running() {
			end = j.ended
			endTime = j.ended.UTC().Format(time.RFC3339Nano)
		}
		answer = map[string]any{
			"job_id":         j.id,
			"status":         j.status,
			"total_rows":     j.len(),
			"completed_rows": j.doneRows,
			"elapsed_time":   end.Sub(j.submitted).Seconds(),
			"start_time":     j.submitted.UTC().Format(time.RFC3339Nano),
			"end_time":       endTime,
		}
	}
	s.unlock()
	if j == nil {
		ex.fail(&apiError{status: http.StatusNotFound, code: "job_not_found", message: fmt.Sprintf("no background job %q", id)})
		return
	}
	ex.reply(http.StatusOK, answer)
}

// newUUID returns a random version 4 UUID.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
