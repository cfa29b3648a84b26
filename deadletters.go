package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/internal/fix"
	"github.com/pgpilot/pgpilot/state"
)

const deadlettersUsage = `usage: pgpilot deadletters list|replay|drop --config FILE [--company ID | --user ID] [--all]
  list     the outstanding dead letters (a table, or --json for JSON lines)
  replay   re-send the companies' current rows through the running pgpilot (a re-sync), and mark their dead letters replayed
  drop     mark the dead letters dropped (asks first; --yes does not)`

// deadlettersCommand lists, replays or drops the records set aside in the
// dead-letter file. Replay and drop append a record to the file per
// company (see state.Resolution): the file stays append-only and
// readable, and the daemon may keep appending meanwhile.
func deadlettersCommand(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
		fmt.Fprintln(stderr, strings.TrimPrefix(deadlettersUsage, "\n"))
		return helpShown{}
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usageError{errors.New("say what to do with the dead letters\n" + deadlettersUsage)}
	}
	action := args[0]
	fs, path := commandFlags("deadletters "+action, stderr)
	company := fs.String("company", "", "only this company's dead letters (its company_id)")
	user := fs.String("user", "", "only this user's dead letters (its user_id)")
	all := fs.Bool("all", false, "every outstanding dead letter (replay and drop need it, --company or --user)")
	var asJSON, yes *bool
	switch action {
	case "list":
		asJSON = fs.Bool("json", false, "print the dead letters as JSON lines, payload included")
	case "replay":
	case "drop":
		yes = fs.Bool("yes", false, "do not ask for confirmation")
	default:
		return usageError{fmt.Errorf("unknown action %q\n%s", action, deadlettersUsage)}
	}
	cfg, err := loadConfig(fs, path, args[1:], stderr)
	if err != nil {
		return err
	}
	if btoi(*company != "")+btoi(*user != "")+btoi(*all) > 1 {
		return usageError{errors.New("give one of --company, --user or --all")}
	}
	if action != "list" && *company == "" && *user == "" && !*all {
		return usageError{fmt.Errorf("say which dead letters to %s: --company ID, --user ID, or --all", action)}
	}
	dls, err := state.ReadDeadLetters(cfg.State.Dir)
	if err != nil {
		return err
	}
	if dls.Unreadable > 0 {
		fmt.Fprintf(stderr, "pgpilot deadletters: warning: %d line(s) of %s/%s are not JSON records (a write torn by a crash?); skipped\n",
			dls.Unreadable, cfg.State.Dir, state.DeadLetterFile)
	}
	chosen := dls.Outstanding
	switch {
	case *company != "":
		chosen = slices.DeleteFunc(slices.Clone(chosen), func(dl state.DeadLetter) bool { return dl.UserID != "" || dl.CompanyID != *company })
	case *user != "":
		chosen = slices.DeleteFunc(slices.Clone(chosen), func(dl state.DeadLetter) bool { return dl.UserID != *user })
	}
	who := *company
	if *user != "" {
		who = "user " + *user
	}
	switch action {
	case "list":
		return listDeadLetters(cfg, chosen, *asJSON, stdout)
	case "replay":
		return replayDeadLetters(cfg, chosen, who, stdout)
	default:
		return dropDeadLetters(cfg, chosen, who, *yes, stdin, stdout)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// listDeadLetters prints dls: a table, or JSON lines with the payload. A
// dead letter holds customer data (the payload) and Userpilot's answer,
// never the key; the key is blanked all the same, in case what answered
// echoed the request.
func listDeadLetters(cfg *config.Config, dls []state.DeadLetter, asJSON bool, stdout io.Writer) error {
	redact := secretsRedactor(cfg)
	if asJSON {
		for _, dl := range dls {
			line, err := json.Marshal(dl)
			if err != nil {
				return fmt.Errorf("encode dead letter of company %q: %w", dl.CompanyID, err)
			}
			fmt.Fprintln(stdout, redact.Replace(string(line)))
		}
		return nil
	}
	if len(dls) == 0 {
		fmt.Fprintln(stdout, "no outstanding dead letters")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tLSN\tCOMPANY\tSTATUS\tREASON")
	for _, dl := range dls {
		id := dl.CompanyID
		switch {
		case dl.UserID != "":
			id = "user " + dl.UserID
		case id == "":
			id = "(none)"
		}
		reason := dl.Reason
		if dl.Body != "" {
			reason += ": " + dl.Body
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", dl.Time.UTC().Format("2006-01-02T15:04:05Z"), dl.LSN, id, dl.Status,
			redact.Replace(oneLine(reason, 120)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d outstanding dead letter(s) of %d company(ies); `--json` prints them whole\n", len(dls), len(companiesOf(dls)))
	return nil
}

// replayDeadLetters asks the daemon to re-send the companies' current rows
// (a re-sync: the row as the table holds it now, through the normal
// delivery path, alongside the stream), then marks their dead letters
// replayed. A record Userpilot refuses again is set aside again, as a new
// outstanding dead letter. A crash between the two steps leaves the dead
// letters outstanding: replaying again only sends the rows again.
func replayDeadLetters(cfg *config.Config, dls []state.DeadLetter, who string, stdout io.Writer) error {
	if len(dls) == 0 {
		return nothingOutstanding(who)
	}
	ids, users := companiesOf(dls), usersOf(dls)
	noID := len(ids) > 0 && ids[0] == ""
	if noID {
		ids = ids[1:]
	}
	if len(ids) == 0 && len(users) == 0 {
		return fix.With(errors.New("these dead letters have no company or user id (the row had none), so there is no row to send again"),
			"give the rows an id, then drop these dead letters: pgpilot deadletters drop --all")
	}
	var rs []state.Resolution
	if len(ids) > 0 {
		if err := requestCompanyResync(cfg.State.Dir, cfg.Companies.CompanyID, ids, false); err != nil {
			return err
		}
		for _, id := range ids {
			rs = append(rs, state.Resolution{Op: state.Replayed, CompanyID: id})
		}
	}
	if len(users) > 0 {
		if !cfg.HasUsers() {
			return fix.With(errors.New("these dead letters are of users, and the config has no users section"),
				"add the users section back, or drop them: pgpilot deadletters drop --all")
		}
		if err := requestCompanyResync(cfg.State.Dir, cfg.Users.UserID, users, true); err != nil {
			return err
		}
		for _, id := range users {
			rs = append(rs, state.Resolution{Op: state.Replayed, UserID: id})
		}
	}
	if err := state.AppendResolutions(cfg.State.Dir, rs); err != nil {
		return fmt.Errorf("re-sync requested, but the dead letters are not marked replayed: %w", err)
	}
	what := fmt.Sprintf("%d company(ies)", len(ids))
	switch {
	case len(users) > 0 && len(ids) > 0:
		what += fmt.Sprintf(" and %d user(s)", len(users))
	case len(users) > 0:
		what = fmt.Sprintf("%d user(s)", len(users))
	}
	fmt.Fprintf(stdout, "replay of %s requested: the running pgpilot (or the next `pgpilot run`) sends their current rows "+
		"within a second, once no other snapshot runs; `pgpilot status` shows it. A record refused again is set aside again.\n", what)
	if noID {
		fmt.Fprintln(stdout, "dead letters without a company id were left: there is no row to send again (drop them with --all once fixed)")
	}
	return nil
}

// dropDeadLetters marks dls dropped, once confirmed.
func dropDeadLetters(cfg *config.Config, dls []state.DeadLetter, company string, yes bool, stdin io.Reader, stdout io.Writer) error {
	if len(dls) == 0 {
		return nothingOutstanding(company)
	}
	ids, users := companiesOf(dls), usersOf(dls)
	fmt.Fprintf(stdout, "This drops %d dead letter(s) of %d company(ies) and %d user(s): they are not sent again, and `status` stops counting them "+
		"(the file keeps them, marked dropped).\n", len(dls), len(ids), len(users))
	if !yes {
		fmt.Fprint(stdout, "Drop them? [y/N] ")
		answer, _ := bufio.NewReader(stdin).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
			return errors.New("not confirmed; nothing dropped")
		}
	}
	var rs []state.Resolution
	for _, id := range ids {
		rs = append(rs, state.Resolution{Op: state.Dropped, CompanyID: id})
	}
	for _, id := range users {
		rs = append(rs, state.Resolution{Op: state.Dropped, UserID: id})
	}
	if err := state.AppendResolutions(cfg.State.Dir, rs); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "dropped %d dead letter(s)\n", len(dls))
	return nil
}

func nothingOutstanding(who string) error {
	if who != "" {
		return fmt.Errorf("%q has no outstanding dead letter (`pgpilot deadletters list` shows them)", who)
	}
	return errors.New("no outstanding dead letters")
}

// companiesOf is the distinct company ids of dls' companies' dead letters,
// sorted ("" first: rows without an id).
func companiesOf(dls []state.DeadLetter) []string {
	var ids []string
	for _, dl := range dls {
		if dl.UserID == "" {
			ids = append(ids, dl.CompanyID)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// usersOf is the distinct user ids of dls' users' dead letters, sorted.
func usersOf(dls []state.DeadLetter) []string {
	var ids []string
	for _, dl := range dls {
		if dl.UserID != "" {
			ids = append(ids, dl.UserID)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// secretsRedactor blanks the API key (and the database URL's password) in
// what is printed.
func secretsRedactor(cfg *config.Config) *strings.Replacer {
	var pairs []string
	if k := strings.TrimSpace(cfg.Userpilot.APIKey); k != "" {
		pairs = append(pairs, k, "[api key]")
	}
	if pw := postgresPassword(cfg.Postgres.URL); pw != "" {
		pairs = append(pairs, pw, "[password]")
	}
	return strings.NewReplacer(pairs...)
}

// oneLine keeps the first line of s, at most n bytes of it.
func oneLine(s string, n int) string {
	s, _, cut := strings.Cut(strings.TrimSpace(s), "\n")
	if len(s) > n {
		s, cut = s[:n], true
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	if cut {
		s += "…"
	}
	return s
}

// postgresPassword is the password postgres.url holds, or "".
func postgresPassword(url string) string {
	c, err := pgconn.ParseConfig(url)
	if err != nil {
		return ""
	}
	return c.Password
}
