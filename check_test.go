package main

import (
	"bytes"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/pgpilot/pgpilot/internal/fix"
)

func TestCheckPrintsTheFixUnderTheFailedCheck(t *testing.T) {
	var out bytes.Buffer
	c := &checker{out: &out}
	assert.True(t, c.report("config p.yaml", nil))
	assert.False(t, c.report(`role "app" may stream changes (REPLICATION)`,
		fix.With(errors.New("it has neither the REPLICATION attribute nor superuser"), `run on the primary, as a superuser: ALTER ROLE "app" REPLICATION;`)))
	assert.False(t, c.report("server settings readable", errors.New("permission denied")))
	assert.Equal(t, `✓ config p.yaml
✗ role "app" may stream changes (REPLICATION): it has neither the REPLICATION attribute nor superuser
  fix: run on the primary, as a superuser: ALTER ROLE "app" REPLICATION;
✗ server settings readable: permission denied
`, out.String())
	assert.Equal(t, 2, c.failed)
}
