package main

import (
	"bytes"
	"flag"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestUsageNamesTheReadEndpoint: -h says how to read what the stand-in
// holds, and that a cleared value shows as null.
func TestUsageNamesTheReadEndpoint(t *testing.T) {
	var out bytes.Buffer
	flag.CommandLine.SetOutput(&out)
	t.Cleanup(func() { flag.CommandLine.SetOutput(nil) })
	usage()
	assert.Contains(t, out.String(), "GET    /_standin/companies")
	assert.Contains(t, out.String(), "cleared with null shows as null")
}
