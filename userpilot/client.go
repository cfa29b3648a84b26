// Package userpilot is pgpilot's client for Userpilot's HTTP API: real-time
// and bulk identify of companies and users, deletes, background job
// status, with the retries,
// rate limiting and back-off that Userpilot's published limits ask for
// (see docs/design.md, "Userpilot's API"). It knows nothing of Postgres.
//
// The client never gives up on a transient failure: a record is either
// accepted (2xx), rejected as invalid (*RejectedError, to be set aside), or
// still being retried when the caller's context ends. That is what lets the
// caller checkpoint only what Userpilot really accepted.
package userpilot

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/time/rate"
)

// apiVersion is sent on every request: the delete API requires it and no
// endpoint forbids it.
const apiVersion = "2020-09-22"

// Userpilot's published figures, the defaults of the settings the config
// file names after them (userpilot.endpoint, rate_limit, bulk_rate).
const (
	// USEndpoint and EUEndpoint are Userpilot's hosts (the file's `us` and
	// `eu`); USEndpoint is the default.
	USEndpoint = "https://analytex.userpilot.io"
	EUEndpoint = "https://analytex-eu.userpilot.io"
	// DefaultRateLimit is the real-time budget in requests per second:
	// Userpilot allows 600 per minute per API token.
	DefaultRateLimit = 10.0
	// DefaultBulkRate is the bulk jobs' processing speed in records per
	// second to plan with: the lower published figure, 1,200 per minute.
	DefaultBulkRate = 20.0
)

const (
	defaultConcurrency    = 16
	defaultRequestTimeout = 30 * time.Second
	defaultMinBackoff     = 500 * time.Millisecond
	defaultMaxBackoff     = 10 * time.Second // recovers within 10 s of Userpilot coming back

	// maxAuthBackoff bounds the wait between attempts while the key is
	// refused, so that delivery resumes within a minute of the key working.
	maxAuthBackoff = 60 * time.Second
	// rateLimitedBackoff is the first wait after a 429 without Retry-After:
	// Userpilot suggests 1, 2, 4, 8 s…
	rateLimitedBackoff = time.Second
	// maxRetryAfter caps a server-sent Retry-After so a bogus header cannot
	// stall delivery for hours.
	maxRetryAfter = 10 * time.Minute

	maxErrorBody    = 4 << 10 // RejectedError.Body
	maxResponseBody = 1 << 20 // what is read of an answer
	maxDrain        = 1 << 20 // what is discarded beyond it to keep the connection
)

// Options configures a Client. Zero values select Userpilot's published
// limits and conservative retry timings.
type Options struct {
	// Endpoint is the base URL, e.g. https://analytex.userpilot.io or
	// http://127.0.0.1:8089 for the stand-in. A trailing slash is tolerated.
	Endpoint string
	// APIKey is sent as "Authorization: Token <key>". It never appears in an
	// error or a log line.
	APIKey string
	// RateLimit is the real-time budget in requests per second; 0 means 10
	// (Userpilot's 600 per minute). Bulk calls have their own budget and do
	// not use it.
	RateLimit float64
	// Concurrency bounds requests in flight and idle keep-alive connections
	// per host; 0 means 16.
	Concurrency int
	// HTTPClient replaces the default client (whose transport keeps
	// Concurrency idle connections per host).
	HTTPClient *http.Client
	// RequestTimeout bounds one attempt; a hung request is cancelled and
	// retried. 0 means 30s.
	RequestTimeout time.Duration
	// MinBackoff is the first retry delay for transient failures; 0 means 500ms.
	MinBackoff time.Duration
	// MaxBackoff caps retry delays (except for a refused key, capped at 60s,
	// and a Retry-After header, capped at 10 minutes); 0 means 10s.
	MaxBackoff time.Duration
	// Logger receives retry warnings and key errors; nil means slog.Default().
	Logger *slog.Logger
	// UserAgent is sent on every request; "" means "pgpilot".
	UserAgent string
}

// Client talks to one Userpilot account. It is safe for concurrent use; all
// its requests share one rate limiter and one 429 pause.
type Client struct {
	endpoint      string
	authorization string // "Token <key>": only ever put in a request header
	userAgent     string
	http          *http.Client
	limiter       *rate.Limiter
	realtime      *aimd         // what limiter allows: rate_limit, less after 429s
	deletes       *spacer       // Userpilot allows one delete request every 2 s
	slots         chan struct{} // one token per request allowed in flight
	timeout       time.Duration
	minBackoff    time.Duration
	maxBackoff    time.Duration
	log           *slog.Logger

	pauseMu     sync.Mutex
	pausedUntil time.Time // no request is sent before it: set by 429 answers

	stats counters
	// retrying counts the calls waiting to try again (Retrying).
	retrying atomic.Int64
}

// New validates opts and returns a Client. Its errors never contain the key.
func New(opts Options) (*Client, error) {
	endpoint, err := parseEndpoint(opts.Endpoint)
	if err != nil {
		return nil, err
	}
	// Keys are often read from files or env vars with a trailing newline.
	key := strings.TrimSpace(opts.APIKey)
	if key == "" {
		return nil, errors.New("userpilot: api key is empty: set userpilot.api_key (Userpilot settings → Environment)")
	}
	if strings.IndexFunc(key, func(r rune) bool { return unicode.IsControl(r) || unicode.IsSpace(r) }) >= 0 {
		return nil, errors.New("userpilot: api key contains whitespace or a control character: copy it again from Userpilot settings → Environment")
	}
	if opts.RateLimit < 0 {
		return nil, fmt.Errorf("userpilot: rate limit %v is negative: use 0 for Userpilot's default of 10 requests/s", opts.RateLimit)
	}
	if opts.Concurrency < 0 || opts.RequestTimeout < 0 || opts.MinBackoff < 0 || opts.MaxBackoff < 0 {
		return nil, errors.New("userpilot: concurrency, request timeout and backoffs must not be negative (0 selects the default)")
	}

	c := &Client{
		endpoint:      endpoint,
		authorization: "Token " + key,
		userAgent:     cmp.Or(opts.UserAgent, "pgpilot"),
		timeout:       cmp.Or(opts.RequestTimeout, defaultRequestTimeout),
		minBackoff:    cmp.Or(opts.MinBackoff, defaultMinBackoff),
		maxBackoff:    cmp.Or(opts.MaxBackoff, defaultMaxBackoff),
		log:           opts.Logger,
		stats:         counters{statuses: map[int]int64{}},
	}
	c.maxBackoff = max(c.maxBackoff, c.minBackoff)
	if c.log == nil {
		c.log = slog.Default()
	}
	limit := cmp.Or(opts.RateLimit, DefaultRateLimit)
	// A burst of a quarter second's budget (burstFor), not a whole
	// second's: that turned into 429s and client-wide pauses at full rate.
	c.limiter = rate.NewLimiter(rate.Limit(limit), burstFor(limit))
	c.realtime = newAIMD(limit, time.Now())
	c.deletes = newSpacer(deleteEvery)
	concurrency := cmp.Or(opts.Concurrency, defaultConcurrency)
	c.slots = make(chan struct{}, concurrency)
	c.http = opts.HTTPClient
	if c.http == nil {
		transport := http.DefaultTransport.(*http.Transport).Clone()
		transport.MaxIdleConnsPerHost = concurrency
		transport.MaxIdleConns = max(transport.MaxIdleConns, concurrency)
		c.http = &http.Client{
			Transport: transport,
			// No Timeout: each attempt gets its own deadline (see attempt).
			// Redirects are not followed: net/http turns a redirected POST
			// into a GET, whose 404 would dead-letter every record. A
			// redirect means the endpoint is misconfigured (see do).
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return c, nil
}

func parseEndpoint(raw string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return "", fmt.Errorf("userpilot: endpoint %q is not a URL: %w", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("userpilot: endpoint %q must be an http(s) URL with a host, e.g. https://analytex.userpilot.io", raw)
	}
	if u.User != nil {
		// Never echo it: the user part may hold a secret.
		return "", errors.New("userpilot: endpoint must not contain credentials: put the key in userpilot.api_key")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("userpilot: endpoint %q must not have a query or fragment", raw)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// RejectedError reports a record that cannot be delivered as it is: Userpilot
// answered a 4xx that no retry will change (400, 404, 413, 422, …), or, with
// Status 0, the record was refused before sending because it cannot be
// encoded. The caller sets the record aside (dead letter); retrying is futile.
type RejectedError struct {
	Status int    // HTTP status, 0 if never sent
	Body   string // Userpilot's answer (or the encoding problem), at most 4 KiB
}

func (e *RejectedError) Error() string {
	if e.Status == 0 {
		return "not sent to Userpilot: " + e.Body
	}
	return fmt.Sprintf("Userpilot rejected it (HTTP %d): %s", e.Status, e.Body)
}

func rejected(r response) *RejectedError {
	body := r.body
	if len(body) > maxErrorBody {
		body = body[:maxErrorBody]
	}
	return &RejectedError{Status: r.status, Body: strings.ToValidUTF8(string(body), string(utf8.RuneError))}
}

// Stats is a snapshot of a Client's counters since New.
type Stats struct {
	Requests     int64         // HTTP attempts sent
	Retries      int64         // attempts that were retries of an earlier one
	StatusCounts map[int]int64 // answers by HTTP status; 0 counts network errors and timeouts
	RateLimited  int64         // 429 answers
	// RealtimeLimit is the real-time rate the client allows now, in
	// requests/s: RateLimit, or less while it backs off after 429s.
	RealtimeLimit float64
}

type counters struct {
	requests, retries, rateLimited atomic.Int64

	mu       sync.Mutex
	statuses map[int]int64
}

func (s *counters) answered(status int) {
	s.mu.Lock()
	s.statuses[status]++
	s.mu.Unlock()
}

// Stats returns a snapshot of the client's counters.
func (c *Client) Stats() Stats {
	c.stats.mu.Lock()
	statuses := make(map[int]int64, len(c.stats.statuses))
	for k, v := range c.stats.statuses {
		statuses[k] = v
	}
	c.stats.mu.Unlock()
	return Stats{
		Requests:     c.stats.requests.Load(),
		Retries:      c.stats.retries.Load(),
		StatusCounts: statuses,
		RateLimited:  c.stats.rateLimited.Load(),
		// The rate in force now.
		RealtimeLimit: c.RealtimeLimit(),
	}
}

// RealtimeLimit is the real-time rate the client allows now, in
// requests/s: the configured RateLimit, or less while it backs off after
// 429s (see aimd).
func (c *Client) RealtimeLimit() float64 { return c.realtime.current() }

// Retrying is how many calls are being retried now: their last attempt
// failed (a network error, a 5xx, a 429, a refused key) and they wait to
// try again. While any is, whoever made them waits on Userpilot.
func (c *Client) Retrying() int { return int(c.retrying.Load()) }

// call describes one logical request, however many attempts it takes.
type call struct {
	op       string // what is being done, for errors: `identify company "4711"`
	logAttrs []any  // what identifies it in logs (never metadata, never the key)
	method   string
	path     string
	body     []byte
	// realTime requests wait on the real-time rate limiter; bulk calls have
	// their own budget with Userpilot.
	realTime bool
	// spacing, when set, keeps this endpoint's requests apart (the delete
	// endpoint's own limit).
	spacing *spacer
	// conflictIsAnswer makes 409 final: for bulk it means "a job is
	// running", which the caller must handle, not wait out blindly.
	conflictIsAnswer bool
}

type response struct {
	status int
	header http.Header
	body   []byte
	sent   time.Time // when the request left
}

func (r response) ok() bool { return r.status >= 200 && r.status < 300 }

// do sends cl until it gets a final answer: a 2xx or a status the caller must
// interpret (4xx other than 401, 403, 408, 429, and 409 unless
// conflictIsAnswer). Redirects count as configuration errors, like 401.
// Everything else is retried until ctx ends, which is the only error do
// returns. Retrying is safe because identify merges metadata:
// sending the same state twice ("applied but answered 500") changes nothing.
func (c *Client) do(ctx context.Context, cl call) (response, error) {
	var last string // how the previous attempt ended, for the error once ctx ends
	retrying := false
	for attempt := 1; ; attempt++ {
		resp, sent, err := c.attempt(ctx, cl)
		if !sent {
			return response{}, c.stopped(cl, attempt-1, last, err)
		}
		if err != nil && ctx.Err() != nil {
			// The caller gave up mid-request: not a failure worth a warning.
			return response{}, c.stopped(cl, attempt, last, ctx.Err())
		}

		status := 0 // network error or timeout
		if err == nil {
			status = resp.status
			last = fmt.Sprintf("HTTP %d", status)
		} else {
			last = err.Error()
		}
		c.stats.answered(status)
		attrs := append([]any{"op", cl.op, "attempt", attempt}, cl.logAttrs...)
		var delay time.Duration
		switch {
		case err != nil:
			delay = fullJitter(attempt, c.minBackoff, c.maxBackoff)
			c.log.Warn("userpilot request failed; retrying", append(attrs, "delay", delay, "error", err)...)
		case status == http.StatusUnauthorized || status == http.StatusForbidden:
			delay = fullJitter(attempt, c.minBackoff, maxAuthBackoff)
			// A key problem stops every record alike: say so loudly, once per
			// attempt, and keep the records (they are not at fault).
			c.log.Error(fmt.Sprintf("Userpilot rejected the API key (HTTP %d): fix userpilot.api_key; delivery is paused and nothing is lost", status),
				append(attrs, "retry_in", delay)...)
		case status >= 300 && status < 400:
			delay = fullJitter(attempt, c.minBackoff, maxAuthBackoff)
			// Like a refused key, a redirect is the configuration's fault,
			// not the record's: keep the record and say what to fix.
			c.log.Error(fmt.Sprintf("Userpilot endpoint answered a redirect (HTTP %d to %q): set userpilot.endpoint to the URL Userpilot documents for your region; delivery is paused and nothing is lost", status, resp.header.Get("Location")),
				append(attrs, "retry_in", delay)...)
		case status == http.StatusTooManyRequests:
			if cl.realTime {
				// Userpilot's real-time budget is lower than rate_limit
				// (another program on the key, a smaller plan): slow down.
				if l, ok := c.realtime.decrease(resp.sent, time.Now()); ok {
					c.setLimit(l, true)
					c.log.Warn("userpilot real-time rate lowered after a 429", "requests_per_second", roundRate(l))
				}
			}
			d, fromHeader := parseRetryAfter(resp.header.Get("Retry-After"), time.Now())
			if !fromHeader {
				d = equalJitter(attempt, rateLimitedBackoff, c.maxBackoff)
			}
			delay = d
			// The limit is per token, so every request of this client waits,
			// not only this one.
			c.pause(delay)
			// Counted after the pause is set: whoever sees RateLimited grow
			// also sees the pause.
			c.stats.rateLimited.Add(1)
			c.log.Warn("userpilot rate limited (HTTP 429); pausing all requests",
				append(attrs, "status", status, "delay", delay, "retry_after_header", fromHeader)...)
		case status == http.StatusRequestTimeout,
			status == http.StatusConflict && !cl.conflictIsAnswer,
			status >= 500:
			delay = fullJitter(attempt, c.minBackoff, c.maxBackoff)
			c.log.Warn("userpilot request failed; retrying", append(attrs, "status", status, "delay", delay)...)
		default: // 2xx, or a 4xx that is the caller's to interpret
			if cl.realTime && resp.ok() {
				if l, ok := c.realtime.raise(time.Now()); ok {
					c.setLimit(l, false)
				}
			}
			return resp, nil
		}

		if !retrying {
			// Counted while it waits to try again: pgpilot is waiting on
			// Userpilot, not stuck (Retrying).
			retrying = true
			c.retrying.Add(1)
			defer c.retrying.Add(-1)
		}
		if err := sleep(ctx, delay); err != nil {
			return response{}, c.stopped(cl, attempt, last, err)
		}
		c.stats.retries.Add(1)
	}
}

// stopped builds the error for a call that ended because its context did.
func (c *Client) stopped(cl call, attempts int, last string, cause error) error {
	if attempts == 0 || last == "" {
		return fmt.Errorf("%s: %w", cl.op, cause)
	}
	return fmt.Errorf("%s: stopped after %d attempts (last: %s): %w", cl.op, attempts, last, cause)
}

// attempt sends cl once. sent is false when the request never left because
// ctx ended (err is then the reason); otherwise err is a network failure,
// a timeout of this attempt, or a failure to read the answer.
func (c *Client) attempt(ctx context.Context, cl call) (resp response, sent bool, err error) {
	// The slot is taken before waiting on the pause and the limiter, so when
	// a pause lifts, waiting requests leave one limiter token at a time
	// rather than in a burst.
	select {
	case c.slots <- struct{}{}:
	case <-ctx.Done():
		return response{}, false, ctx.Err()
	}
	defer func() { <-c.slots }()

	if err := c.waitPause(ctx); err != nil {
		return response{}, false, err
	}
	if cl.spacing != nil {
		if err := cl.spacing.wait(ctx); err != nil {
			return response{}, false, err
		}
		defer cl.spacing.done() // once the answer is in: see spacer
	}
	if cl.realTime {
		if err := c.limiter.Wait(ctx); err != nil {
			if ctx.Err() != nil {
				return response{}, false, ctx.Err()
			}
			// Wait fails early when the deadline would pass before a token
			// frees up: the request cannot be sent in time.
			return response{}, false, fmt.Errorf("waiting for the real-time rate limit: %w", context.DeadlineExceeded)
		}
		// A 429 may have paused the client while this request waited for a token.
		if err := c.waitPause(ctx); err != nil {
			return response{}, false, err
		}
	}

	actx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var body io.Reader
	if cl.body != nil {
		body = bytes.NewReader(cl.body)
	}
	req, err := http.NewRequestWithContext(actx, cl.method, c.endpoint+cl.path, body)
	if err != nil {
		// Only a malformed URL gets here, which New rules out; report it
		// as not sent rather than retry it forever.
		return response{}, false, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Authorization", c.authorization)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/plain, */*")
	req.Header.Set("X-API-Version", apiVersion)
	req.Header.Set("User-Agent", c.userAgent)

	c.stats.requests.Add(1)
	sentAt := time.Now()
	hr, err := c.http.Do(req)
	if err != nil {
		return response{}, true, err
	}
	defer func() {
		// Drained and closed so the connection goes back to the pool.
		_, _ = io.Copy(io.Discard, io.LimitReader(hr.Body, maxDrain))
		_ = hr.Body.Close()
	}()
	data, err := io.ReadAll(io.LimitReader(hr.Body, maxResponseBody))
	if err != nil {
		return response{}, true, fmt.Errorf("read answer (HTTP %d): %w", hr.StatusCode, err)
	}
	return response{status: hr.StatusCode, header: hr.Header, body: data, sent: sentAt}, true, nil
}

// pause holds every request of the client until d from now (or later, if
// another 429 asked for longer).
func (c *Client) pause(d time.Duration) {
	until := time.Now().Add(d)
	c.pauseMu.Lock()
	if until.After(c.pausedUntil) {
		c.pausedUntil = until
	}
	c.pauseMu.Unlock()
}

func (c *Client) waitPause(ctx context.Context) error {
	for {
		c.pauseMu.Lock()
		d := time.Until(c.pausedUntil)
		c.pauseMu.Unlock()
		if d <= 0 {
			return nil
		}
		// Loop: a later 429 may have extended the pause meanwhile.
		if err := sleep(ctx, d); err != nil {
			return err
		}
	}
}

// parseRetryAfter reads delta-seconds or an HTTP-date, capped at
// maxRetryAfter. ok is false when the header is absent or unreadable.
func parseRetryAfter(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		if secs > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter, true
		}
		return time.Duration(secs) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(t.Sub(now), 0), maxRetryAfter), true
	}
	return 0, false
}

// ceiling is base doubled for each attempt after the first, capped at limit.
func ceiling(attempt int, base, limit time.Duration) time.Duration {
	d := base
	for i := 1; i < attempt && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// fullJitter spreads retries of many workers over [0, ceiling] so they do not
// come back in lockstep.
func fullJitter(attempt int, base, limit time.Duration) time.Duration {
	d := ceiling(attempt, base, limit)
	if d <= 0 {
		return 0
	}
	return rand.N(d + 1)
}

// equalJitter keeps at least half the ceiling: after a 429 the point is to
// wait, jitter only desynchronises.
func equalJitter(attempt int, base, limit time.Duration) time.Duration {
	d := ceiling(attempt, base, limit)
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// spacer lets one request at a time through, each at least every after
// the previous one's answer came back. Userpilot counts a limit such as
// "one delete every 2 seconds" where requests arrive; spacing departures
// (a token bucket) lets a request held up on the way arrive too close to
// the next one (measured: 1.97 s apart under load, answered 429). The
// previous request arrived before its answer left, so counting from the
// answer keeps arrivals apart whatever the transit; it costs a round trip.
type spacer struct {
	every time.Duration
	turn  chan struct{} // one token: the request whose turn it is
	next  time.Time     // guarded by turn
}

func newSpacer(every time.Duration) *spacer {
	return &spacer{every: every, turn: make(chan struct{}, 1)}
}

// wait takes the turn and waits until the next request may leave. Its
// caller must call done after the answer, unless wait failed.
func (s *spacer) wait(ctx context.Context) error {
	select {
	case s.turn <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := sleep(ctx, time.Until(s.next)); err != nil {
		<-s.turn
		return err
	}
	return nil
}

// done starts the interval and passes the turn on.
func (s *spacer) done() {
	s.next = time.Now().Add(s.every)
	<-s.turn
}
