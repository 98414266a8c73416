package metadata

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalid is wrapped by every error this package returns, so callers can
// tell a configuration mistake from anything else with errors.Is.
var ErrInvalid = errors.New("invalid component metadata")

// FieldError reports one bad metadata value: which field, what was given, why
// it is wrong and what would be accepted. The value of a secret field is never
// included.
type FieldError struct {
	Field    string
	Value    string
	Problem  string
	Accepted string
}

func (e *FieldError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "metadata field %q", e.Field)
	if e.Value != "" {
		if secretFields[strings.ToLower(e.Field)] {
			b.WriteString(" (value hidden)")
		} else {
			fmt.Fprintf(&b, " = %q", e.Value)
		}
	}
	fmt.Fprintf(&b, ": %s", e.Problem)
	if e.Accepted != "" {
		fmt.Fprintf(&b, "; accepted: %s", e.Accepted)
	}
	return b.String()
}

func (e *FieldError) Unwrap() error { return ErrInvalid }

// ConflictError reports fields that cannot be set together, and how to fix it.
type ConflictError struct {
	Fields  []string
	Problem string
	Fix     string
}

func (e *ConflictError) Error() string {
	quoted := make([]string, len(e.Fields))
	for i, f := range e.Fields {
		quoted[i] = fmt.Sprintf("%q", f)
	}
	msg := fmt.Sprintf("metadata fields %s: %s", strings.Join(quoted, " and "), e.Problem)
	if e.Fix != "" {
		msg += "; " + e.Fix
	}
	return msg
}

func (e *ConflictError) Unwrap() error { return ErrInvalid }

func fieldErr(field, value, problem, accepted string) error {
	return &FieldError{Field: field, Value: value, Problem: problem, Accepted: accepted}
}

func conflict(problem, fix string, fields ...string) error {
	return &ConflictError{Fields: fields, Problem: problem, Fix: fix}
}
