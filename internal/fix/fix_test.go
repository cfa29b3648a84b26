package fix

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestTheFixTravelsWithTheError(t *testing.T) {
	cause := errors.New("slot is gone")
	err := fmt.Errorf("start: %w", With(cause, "run pgpilot teardown"))
	assert.Equal(t, "start: slot is gone", err.Error(), "the message holds no fix")
	assert.Equal(t, "run pgpilot teardown", Of(err))
	assert.ErrorIs(t, err, cause)
	assert.Empty(t, Of(cause))
	assert.NoError(t, With(nil, "anything"))
}
