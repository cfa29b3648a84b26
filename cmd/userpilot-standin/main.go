// Command userpilot-standin runs the stand-in Userpilot server of package
// userpilottest as a program, for demos and scripts that cannot reach
// Userpilot. It prints one line per applied identify to stdout and serves
// GET /_standin/companies with every profile as JSON (a value cleared with
// null shows as null) and GET /_standin/users with every user, its company
// and metadata; -h says so.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8089", "address to listen on")
	apiKey := flag.String("api-key", os.Getenv("USERPILOT_API_KEY"), "API key clients must send (default $USERPILOT_API_KEY)")
	rateLimit := flag.Float64("rate-limit", 10, "real-time requests per second before 429 (0 = unlimited)")
	bulkRate := flag.Float64("bulk-records-per-second", 20, "bulk job speed (Userpilot publishes 1,200-1,800/min; 0 = done on first poll)")
	jobOverhead := flag.Duration("job-overhead", 0, "how long a bulk job stays queued before its first record is processed")
	flag.Usage = usage
	flag.Parse()
	if *apiKey == "" {
		fmt.Fprintln(os.Stderr, "userpilot-standin: no API key: pass -api-key or set USERPILOT_API_KEY")
		os.Exit(2)
	}
	if err := run(*listen, userpilottest.Options{
		APIKey:               *apiKey,
		RateLimit:            *rateLimit,
		BulkRecordsPerSecond: *bulkRate,
		JobOverhead:          *jobOverhead,
		Logf:                 stdoutLogf(),
	}); err != nil {
		fmt.Fprintln(os.Stderr, "userpilot-standin:", err)
		os.Exit(1)
	}
}

// usage is -h: the flags, and what the stand-in serves, its read
// endpoint included.
func usage() {
	out := flag.CommandLine.Output()
	fmt.Fprint(out, `Usage: userpilot-standin [flags]

A stand-in for Userpilot's API, for demos and scripts that cannot reach
Userpilot: strict about what it accepts, as Userpilot documents it.

It serves Userpilot's endpoints (each needs "Authorization: Token KEY"):
  POST   /v1/companies/identify          one company (real time, rate limited: 429 beyond -rate-limit)
  POST   /v1/companies/bulk_identify     a bulk job (one at a time per account: 409 while one runs)
  POST   /v1/identify                    one user, with its company as {"company": {"id": ...}}
                                         (or company_id inside it; null refused); real time, the
                                         same budget as companies'
  POST   /v1/users/bulk_identify         a bulk job of users, each with a flat company_id (the same
                                         one job at a time as companies')
  GET    /v1/background_jobs/{id}        a bulk job's status
  DELETE /v1/companies                   a deletion request (one every 2 s, companies and users)
  DELETE /v1/users                       a deletion request of users (the same 2 s)
and, to read what it holds (no key needed):
  GET    /_standin/companies             every profile as JSON: company_id -> metadata; a value
                                         cleared with null shows as null; a company a user named
                                         before its own identify shows with its id alone: {}
  GET    /_standin/users                 every user as JSON: user_id -> {"company": id or null,
                                         "metadata": {...}}
A user belongs to one company at a time: identified with another, it moves.
It prints one line per applied identify record to stdout.

Point pgpilot at it with userpilot.endpoint: http://127.0.0.1:8089 (http is
accepted for loopback only).

Flags:
`)
	flag.PrintDefaults()
}

func run(listen string, opts userpilottest.Options) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	mux := routes(userpilottest.NewHandler(opts))

	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (pick another address with -listen)", listen, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	// The actual address matters when -listen asked for port 0.
	fmt.Fprintf(os.Stderr, "userpilot stand-in listening on http://%s\n", ln.Addr())

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shut down: %w", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// routes serves the stand-in and its read endpoints.
func routes(standin *userpilottest.Server) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_standin/companies", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(standin.Companies())
	})
	mux.HandleFunc("GET /_standin/users", func(w http.ResponseWriter, _ *http.Request) {
		type user struct {
			Company  *string        `json:"company"` // null: none
			Metadata map[string]any `json:"metadata"`
		}
		users := standin.Users()
		out := make(map[string]user, len(users))
		for id, u := range users {
			var company *string
			if u.Company != "" {
				company = &u.Company
			}
			out[id] = user{Company: company, Metadata: u.Metadata}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
	mux.Handle("/", standin)
	return mux
}

// stdoutLogf writes whole lines to stdout (unbuffered, so each appears at
// once), never interleaving two requests' lines.
func stdoutLogf() func(format string, args ...any) {
	var mu sync.Mutex
	return func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(os.Stdout, format+"\n", args...)
	}
}
