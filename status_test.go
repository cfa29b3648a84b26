package main

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/pgpilot/pgpilot/state"
)

func TestStatusSaysWhereTheBulkEstimateComesFrom(t *testing.T) {
	cases := []struct {
		st   state.Status
		want string
	}{
		{state.Status{}, "off (bulk_rate: 0)"},
		{state.Status{BulkRate: 20, BulkOverheadSeconds: 10}, "20 records/s, 10s a job (userpilot.bulk_rate: nothing measured yet)"},
		{state.Status{BulkRate: 312.456, BulkOverheadSeconds: 0.2504, BulkJobsLearned: 9},
			"312.5 records/s, 250ms a job beyond its records (measured over 9 jobs)"},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, bulkPath(&c.st))
	}
}
