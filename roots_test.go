package main

import (
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMozillaRootsAreUsedWhereTheSystemHasNone runs this test binary again
// on a "machine" without a CA bundle (as in the FROM scratch image): the
// system pool must then be the compiled-in Mozilla roots, with Let's
// Encrypt's ISRG Root X1 among them.
func TestMozillaRootsAreUsedWhereTheSystemHasNone(t *testing.T) {
	if os.Getenv("PGPILOT_ROOTS_CHILD") == "1" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		subjects := pool.Subjects()
		isrg := false
		for _, s := range subjects {
			isrg = isrg || strings.Contains(string(s), "ISRG Root X1")
		}
		fmt.Printf("roots=%d isrg=%v\n", len(subjects), isrg)
		os.Exit(0)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestMozillaRootsAreUsedWhereTheSystemHasNone$")
	cmd.Env = append(os.Environ(), "PGPILOT_ROOTS_CHILD=1",
		"SSL_CERT_FILE=/nonexistent/ca-certificates.crt", "SSL_CERT_DIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	var n int
	var isrg bool
	_, err = fmt.Sscanf(string(out), "roots=%d isrg=%t", &n, &isrg)
	require.NoError(t, err, "%s", out)
	assert.Greater(t, n, 100, "Mozilla's program has well over 100 roots")
	assert.True(t, isrg, "ISRG Root X1 (Let's Encrypt) among them")
}
