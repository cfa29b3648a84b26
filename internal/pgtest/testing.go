package pgtest

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
)

// StartT starts a server for the test and stops it (removing its data) when
// the test ends. It never skips: a missing or broken Postgres fails the test
// with the server log, because a suite that silently skips its integration
// tests proves nothing.
func StartT(t testing.TB, opts Options) *Server {
	t.Helper()
	s, err := Start(t.Context(), opts)
	if err != nil {
		t.Fatalf("start test postgres: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			// A server that had to be killed is the harness's problem, not a
			// failed behaviour of the code under test.
			t.Logf("stop test postgres: %v", err)
		}
	})
	return s
}

// StartStandbyT starts a physical standby of s (see StartStandby) for the
// test and stops it, dropping its slot on s, when the test ends.
func (s *Server) StartStandbyT(t testing.TB) *Server {
	t.Helper()
	st, err := s.StartStandby(t.Context())
	if err != nil {
		t.Fatalf("start test standby: %v", err)
	}
	t.Cleanup(func() {
		if err := st.Stop(); err != nil {
			t.Logf("stop test standby: %v", err)
		}
	})
	return st
}

// dbCounter makes database names unique across every server and test of the
// process, so parallel subtests with the same sanitised name never collide.
var dbCounter atomic.Int64

// NewDatabaseT creates a database named after the test (sanitised, plus a
// counter) and returns its URL. Nothing drops it: the server's teardown
// removes everything.
func (s *Server) NewDatabaseT(t testing.TB) string {
	t.Helper()
	name := databaseName(t.Name(), dbCounter.Add(1))
	url, err := s.CreateDatabase(t.Context(), name)
	if err != nil {
		t.Fatalf("create test database: %v\nserver log:\n%s", err, s.logSince(0))
	}
	return url
}

// databaseName turns a test name into a Postgres identifier that needs no
// quoting and fits in 63 bytes: lower-case letters, digits and '_'.
func databaseName(testName string, n int64) string {
	var b strings.Builder
	for _, r := range strings.ToLower(testName) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	suffix := fmt.Sprintf("_%d", n)
	name := "t_" + b.String()
	if maxLen := 63 - len(suffix); len(name) > maxLen {
		name = name[:maxLen]
	}
	return name + suffix
}
