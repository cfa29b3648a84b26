package e2e

import (
	"testing"

	"github.com/pgpilot/pgpilot/internal/pgtest"
)

func pgtestWithPassword(t *testing.T, password string) *pgtest.Server {
	return pgtest.StartT(t, pgtest.Options{Password: password})
}
