// Package fix carries, beside an error an operator can cure, what to do
// about it: the command line prints the fix on a line of its own and the
// logs carry it as the "fix" attribute, instead of both being buried in one
// message string.
package fix

import "errors"

// Error is an error with the operator's fix.
type Error struct {
	Err error
	Fix string
}

// Error is the error's message without the fix.
func (e *Error) Error() string { return e.Err.Error() }

// Unwrap returns the cause, so errors.Is and errors.As see through it.
func (e *Error) Unwrap() error { return e.Err }

// With attaches the fix to err (nil stays nil).
func With(err error, fix string) error {
	if err == nil {
		return nil
	}
	return &Error{Err: err, Fix: fix}
}

// Of returns the fix of the outermost *Error in err's chain, or "".
func Of(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Fix
	}
	return ""
}
