package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/daemon"
	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/internal/fix"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/state"
)

// whyCommand says where one company stands between Postgres and
// Userpilot. A running pgpilot is asked over http.listen (what its
// pipeline holds in memory is known only to it); with none running, the
// state directory is read, read-only.
func whyCommand(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs, path := commandFlags("why", stderr)
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	user := fs.Bool("user", false, "the id is a user's (users:), not a company's")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: pgpilot why COMPANY_ID --config FILE [--json]\n       pgpilot why --user USER_ID --config FILE [--json]\n\n"+
			"Where the company stands between Postgres and Userpilot: pending, in a bulk job, in the outbox,\n"+
			"dead-lettered or delivered, and what it waits for. Asks the running pgpilot over http.listen,\n"+
			"or reads the state directory when none runs.\n\n")
		fs.PrintDefaults()
	}
	id, err := parseWhyArgs(fs, args)
	if err != nil {
		return err
	}
	cfg, err := readConfig(fs.Name(), *path, stderr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	key := id
	if *user {
		if !cfg.HasUsers() {
			return usageError{fix.With(errors.New("--user: the config has no users section"), "name a company, or add a users: section")}
		}
		key = delivery.KeyOf(mapping.User, id)
	}
	w, err := whereabouts(ctx, cfg, key)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		return enc.Encode(w)
	}
	printWhereabouts(stdout, w)
	return nil
}

// parseWhyArgs takes the company id before or after the flags.
func parseWhyArgs(fs *flag.FlagSet, args []string) (string, error) {
	if err := parseFlagsKeepArgs(fs, args); err != nil {
		return "", err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return "", usageError{fix.With(errors.New("which company? COMPANY_ID is required"), "pgpilot why 42 --config FILE (the company_id Userpilot knows it by)")}
	}
	id := rest[0]
	if err := parseFlags(fs, rest[1:]); err != nil {
		return "", err
	}
	return id, nil
}

// parseFlagsKeepArgs is parseFlags that leaves arguments after the flags
// to the caller.
func parseFlagsKeepArgs(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return helpShown{}
		}
		return shownError{usageError{err}}
	}
	return nil
}

// whereabouts asks the running pgpilot, or reads the state directory.
func whereabouts(ctx context.Context, cfg *config.Config, id string) (daemon.Whereabouts, error) {
	var unreachable string
	if cfg.HTTP.Listen != "" {
		w, err := askRunning(ctx, cfg.HTTP.Listen, id)
		if err == nil {
			return w, nil
		}
		unreachable = err.Error()
	}
	store, ok, err := state.ReadStore(cfg.State.Dir)
	switch {
	case errors.Is(err, state.ErrStoreInUse):
		// A pgpilot runs and holds the store, and was not reachable: what
		// is on disk outside the store is all there is to read.
		w, err := daemon.Locate(cfg.State.Dir, nil, cfg, id)
		if err != nil {
			return w, err
		}
		note := "a running pgpilot" + holder(cfg.State.Dir) + " holds the store, and what it holds in memory is known only to it: "
		if cfg.HTTP.Listen == "" {
			note += "set http.listen in the config (and restart it) to ask it"
		} else {
			note += "it did not answer on http.listen " + cfg.HTTP.Listen + " (" + unreachable + ")"
		}
		w.Notes = append(w.Notes, note)
		return w, nil
	case err != nil:
		return daemon.Whereabouts{}, err
	}
	if ok {
		defer store.Close()
	}
	w, err := daemon.Locate(cfg.State.Dir, store, cfg, id)
	if err != nil {
		return w, err
	}
	if !ok {
		w.Notes = append(w.Notes, "no store in "+cfg.State.Dir+": pgpilot has not run with this state directory")
	}
	return w, nil
}

// askRunning asks the pgpilot serving listen (http.listen).
func askRunning(ctx context.Context, listen, id string) (daemon.Whereabouts, error) {
	var w daemon.Whereabouts
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return w, err
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1" // every interface: this machine's is one
	}
	u := url.URL{Scheme: "http", Host: net.JoinHostPort(host, port), Path: "/why/" + id}
	if entity, uid := delivery.SubjectOf(id); entity == mapping.User {
		u.Path, u.RawQuery = "/why/"+uid, "user=1"
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return w, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return w, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return w, err
	}
	if resp.StatusCode != http.StatusOK {
		return w, fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, &w); err != nil {
		return w, fmt.Errorf("read its answer: %w", err)
	}
	return w, nil
}

// holder is " (pid N)" of the process holding the state directory's
// lock, as the lock file says.
func holder(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "lock"))
	if pid := strings.TrimSpace(string(b)); err == nil && pid != "" {
		return " (pid " + pid + ")"
	}
	return ""
}

// printWhereabouts prints w for a person: the verdict first, then the
// detail.
func printWhereabouts(out io.Writer, w daemon.Whereabouts) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	if w.UserID != "" {
		fmt.Fprintf(tw, "user\t%s\n", w.UserID)
	} else {
		fmt.Fprintf(tw, "company\t%s\n", w.CompanyID)
	}
	fmt.Fprintf(tw, "state\t%s\n", w.State)
	fmt.Fprintf(tw, "waiting for\t%s\n", w.WaitingFor)
	if c := w.LastChange; c != nil {
		var parts []string
		if c.LSN != "" {
			parts = append(parts, "LSN "+c.LSN)
		}
		if !c.Received.IsZero() {
			parts = append(parts, "received "+c.Received.UTC().Format(time.RFC3339))
		}
		if c.Changes > 1 {
			parts = append(parts, fmt.Sprintf("%d changes merged", c.Changes))
		}
		fmt.Fprintf(tw, "last change\t%s\n", strings.Join(parts, ", "))
	}
	if j := w.Job; j != nil {
		id := j.ID
		if id == "" {
			id = "(no id yet: the submission was not answered)"
		}
		fmt.Fprintf(tw, "bulk job\t%s, %d records, began %s\n", id, j.Records, j.Began.UTC().Format(time.RFC3339))
	}
	if p := w.Pipeline; p != nil {
		mode := p.Mode
		if p.ModeReason != "" {
			mode += " (" + p.ModeReason + ")"
		}
		fmt.Fprintf(tw, "delivery\t%s mode, %d companies owed, bulk job running: %t\n", mode, p.Pending, p.BulkBusy)
		if p.Stopped != "" {
			fmt.Fprintf(tw, "delivery stopped\t%s\n", p.Stopped)
		}
	}
	if s := w.Store; s != nil && s.Outbox != nil {
		what := "its merged state"
		if s.Outbox.Delete {
			what = "a deletion"
		}
		fmt.Fprintf(tw, "outbox\towes %s, LSN %s, oldest change %s\n", what, s.Outbox.LSN, s.Outbox.Since.UTC().Format(time.RFC3339))
	}
	for _, dl := range w.DeadLetters {
		fmt.Fprintf(tw, "dead letter\t%s, LSN %s, HTTP %d: %s\n", dl.Time.UTC().Format(time.RFC3339), dl.LSN, dl.Status, dl.Reason)
	}
	if d := w.Delivered; d != nil {
		fmt.Fprintf(tw, "delivered\t%s, %s path\n", d.At.UTC().Format(time.RFC3339), d.Path)
	}
	if s := w.Store; s != nil && s.Indexed {
		keys := make([]string, 0, len(s.Fingerprints))
		for k := range s.Fingerprints {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		line := fmt.Sprintf("%d key(s)", len(keys))
		if s.OtherKeys > 0 {
			line += fmt.Sprintf(", and %d of keys the mapping no longer has", s.OtherKeys)
		}
		fmt.Fprintf(tw, "no-op index\t%s: what Userpilot last accepted, by fingerprint\n", line)
		for _, k := range keys {
			fmt.Fprintf(tw, "  %s\t%s\n", k, s.Fingerprints[k])
		}
	}
	if w.Checkpoint != "" {
		fmt.Fprintf(tw, "checkpoint\t%s\n", w.Checkpoint)
	}
	if s := w.Snapshot; s != nil {
		fmt.Fprintf(tw, "snapshot\t%s: %d rows delivered\n", s.ID, s.Rows)
	}
	fmt.Fprintf(tw, "from\t%s\n", w.Source)
	for _, n := range w.Notes {
		fmt.Fprintf(tw, "note\t%s\n", n)
	}
	tw.Flush()
}
