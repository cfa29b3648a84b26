// Command demo shows pgpilot end to end on this machine: a throw-away
// Postgres with sample companies, the local Userpilot stand-in printing each
// call it receives, and the real pgpilot binary between them. It changes a
// few rows, shows the calls arriving, prints `pgpilot status`, and cleans
// up. Run it through scripts/demo.sh, which builds pgpilot first.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgpilot/pgpilot/internal/pgtest"
	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

func main() {
	bin := flag.String("pgpilot", "./pgpilot", "the pgpilot binary")
	flag.Parse()
	if err := demo(*bin); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func say(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func demo(bin string) error {
	ctx := context.Background()
	say("starting a throw-away Postgres 15 (wal_level=logical)")
	pg, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		return err
	}
	defer pg.Stop()
	url, err := pg.CreateDatabase(ctx, "demo")
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if err := workload.Create(ctx, conn); err != nil {
		return err
	}
	if err := workload.Seed(ctx, conn, 5); err != nil {
		return err
	}
	fmt.Printf("    Postgres on 127.0.0.1:%d, table public.companies with 5 companies\n", pg.Port)

	say("starting the local Userpilot stand-in (strict about headers, body and limits)")
	const key = "demo-api-key"
	up := userpilottest.NewServer(userpilottest.Options{APIKey: key, Logf: func(f string, a ...any) {
		fmt.Printf("    Userpilot received: "+f+"\n", a...)
	}})
	defer up.Close()
	fmt.Printf("    stand-in at %s\n", up.URL())

	dir, err := os.MkdirTemp("", "pgpilot-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfgPath := filepath.Join(dir, "pgpilot.yaml")
	if err := os.WriteFile(cfgPath, []byte(workload.Config(url, "pgpilot", up.URL(), key, filepath.Join(dir, "state"), 10)), 0o600); err != nil {
		return err
	}

	say("pgpilot run --config %s   (its log: %s)", cfgPath, filepath.Join(dir, "pgpilot.log"))
	logFile, err := os.Create(filepath.Join(dir, "pgpilot.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "run", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w (build it with: go build -o pgpilot .)", bin, err)
	}
	defer cmd.Process.Kill()
	if err := waitConverged(ctx, conn, up, "the initial sync"); err != nil {
		return err
	}

	for _, stmt := range []string{
		`UPDATE companies SET plan = 'enterprise', seats = 250 WHERE id = 1`,
		`INSERT INTO companies (id, name, plan, seats, monthly_spend, trial, created_at) VALUES (6, 'Globex 🚀', 'pro', 12, 99.95, true, now())`,
		`UPDATE companies SET plan = NULL WHERE id = 2`,
		`BEGIN; UPDATE companies SET name = 'never sent' WHERE id = 3; ROLLBACK`,
	} {
		say("psql> %s", stmt)
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return err
		}
		if err := waitConverged(ctx, conn, up, "the change"); err != nil {
			return err
		}
	}

	say("pgpilot status --config %s", cfgPath)
	status := exec.Command(bin, "status", "--config", cfgPath)
	status.Stdout, status.Stderr = os.Stdout, os.Stderr
	if err := status.Run(); err != nil {
		return fmt.Errorf("pgpilot status: %w", err)
	}

	say("stopping pgpilot with SIGTERM (it drains, checkpoints and exits 0)")
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("pgpilot run exited with %w; see %s", err, logFile.Name())
	}
	profiles, _ := json.MarshalIndent(up.Companies(), "    ", "  ")
	say("Userpilot now holds, for each company, exactly what the table says:\n    %s", profiles)
	say("cleaning up: Postgres stopped, temporary files removed")
	return nil
}

func waitConverged(ctx context.Context, conn *pgx.Conn, up *userpilottest.Server, what string) error {
	if err := workload.WaitConverged(ctx, conn, up.Companies, 60*time.Second); err != nil {
		return err
	}
	fmt.Printf("    ✓ Userpilot matches the table after %s\n", what)
	return nil
}
