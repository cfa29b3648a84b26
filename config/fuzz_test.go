package config

import (
	"bytes"
	"errors"
	"github.com/pgpilot/pgpilot/mapping"
	"regexp"
	"strings"
	"testing"
)

// Secrets the fuzzer's configurations can reach only through ${VAR}.
const (
	fuzzDBPassword = "Zq8-fuzz-pw-Q9x"
	fuzzAPIKey     = "fuzz-api-key-Xk29Lm"
	fuzzOther      = "other-secret-Vb71"
)

func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	f.Add([]byte("postgres:\n  url: ${SECRET}\n  slot: ${SECRET}\nuserpilot:\n  api_key: x\n  endpoint: ${USERPILOT_API_KEY}\n"))

	vars := map[string]string{
		"DATABASE_URL":      "postgres://pgpilot:" + fuzzDBPassword + "@db/app",
		"USERPILOT_API_KEY": fuzzAPIKey,
		"SECRET":            fuzzOther,
		"EMPTY":             "",
	}
	lookup := env(vars)
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data, lookup)
		if err != nil {
			if cfg != nil {
				t.Fatal("Parse returned a config with an error")
			}
			for _, secret := range []string{fuzzDBPassword, fuzzAPIKey, fuzzOther} {
				// A secret written in the file itself may be echoed under
				// a key that does not hold secrets; one from the
				// environment never is.
				if strings.Contains(err.Error(), secret) && !bytes.Contains(data, []byte(secret)) {
					t.Fatalf("error shows the secret %q:\n%v", secret, err)
				}
			}
			var errs []error
			if j, ok := err.(interface{ Unwrap() []error }); ok {
				errs = j.Unwrap()
			}
			if len(errs) == 0 {
				t.Fatalf("error is not a list of problems: %v", err)
			}
			for _, e := range errs {
				var ce *mapping.ConfigError
				if !errors.As(e, &ce) || ce.Line < 1 || ce.File != "fuzz.yaml" {
					t.Fatalf("problem without file and line: %#v", e)
				}
			}
			return
		}
		checkConfig(t, cfg)
	})
}

var fuzzSlot = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// checkConfig asserts what a successful Parse promises.
func checkConfig(t *testing.T, cfg *Config) {
	t.Helper()
	switch {
	case cfg.Postgres.URL == "" || cfg.Userpilot.APIKey == "":
		t.Fatal("a required secret is empty")
	case !fuzzSlot.MatchString(cfg.Postgres.Slot):
		t.Fatalf("bad slot %q accepted", cfg.Postgres.Slot)
	case cfg.Postgres.Publication == "" || len(cfg.Postgres.Publication) > 63:
		t.Fatalf("bad publication %q accepted", cfg.Postgres.Publication)
	case !strings.HasPrefix(cfg.Userpilot.Endpoint, "https://") && !strings.HasPrefix(cfg.Userpilot.Endpoint, "http://"):
		t.Fatalf("bad endpoint %q accepted", cfg.Userpilot.Endpoint)
	case strings.HasSuffix(cfg.Userpilot.Endpoint, "/"):
		t.Fatalf("endpoint %q keeps its slash", cfg.Userpilot.Endpoint)
	case !(cfg.Userpilot.RateLimit > 0):
		t.Fatalf("rate limit %v accepted", cfg.Userpilot.RateLimit)
	case cfg.State.Dir == "":
		t.Fatal("empty state dir")
	case cfg.Companies.Name == "" || cfg.Companies.Schema == "" || cfg.Companies.CompanyID == "":
		t.Fatalf("incomplete companies %+v", cfg.Companies)
	case len(cfg.Companies.Metadata) == 0:
		t.Fatal("no metadata accepted")
	}
	for _, f := range cfg.Companies.Metadata {
		if f.Key == "" || f.Column == "" || (f.Type != mapping.TypeAuto && !validType(f.Type)) || f.Line < 1 {
			t.Fatalf("bad field accepted: %+v", f)
		}
	}
}
