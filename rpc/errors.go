package rpc

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Code classifies an RPC error. Codes are stable strings because they cross
// the wire (AMQP reply headers, MQTT error replies) and peers written in
// other languages match on them.
type Code string

// The codes every transport understands.
const (
	// CodeNotFound means the module or handler is unknown.
	CodeNotFound Code = "not_found"
	// CodeTimeout means the call's deadline passed.
	CodeTimeout Code = "timeout"
	// CodeBadRequest means the argument could not be decoded or is invalid.
	CodeBadRequest Code = "bad_request"
	// CodeInternal means the handler failed or panicked.
	CodeInternal Code = "internal"
	// CodeUnavailable means the transport is down or the module is stopping.
	CodeUnavailable Code = "unavailable"
	// CodeCanceled means the caller canceled the call.
	CodeCanceled Code = "canceled"
	// CodeForbidden means the caller is not allowed to make the call.
	CodeForbidden Code = "forbidden"
	// CodeRateLimited means the caller made too many calls of this kind
	// lately; the same call may succeed later. The message says when, in
	// words; the im module's send rate limit is one user of it.
	CodeRateLimited Code = "rate_limited"
)

// Error is an RPC error whose Code survives the wire. Only Code and Message
// are encoded; on the local path Error also keeps the error it was made from,
// so errors.Is and errors.As still see the handler's original error.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`

	cause error
}

// Sentinels for errors.Is. Any *Error matches the sentinel with the same
// code, whatever its message, so callers never compare messages.
var (
	// ErrNotFound matches every not_found error.
	ErrNotFound = &Error{Code: CodeNotFound, Message: "not found"}
	// ErrTimeout matches every timeout error.
	ErrTimeout = &Error{Code: CodeTimeout, Message: "deadline exceeded"}
	// ErrBadRequest matches every bad_request error.
	ErrBadRequest = &Error{Code: CodeBadRequest, Message: "bad request"}
	// ErrInternal matches every internal error.
	ErrInternal = &Error{Code: CodeInternal, Message: "internal error"}
	// ErrUnavailable matches every unavailable error.
	ErrUnavailable = &Error{Code: CodeUnavailable, Message: "unavailable"}
	// ErrCanceled matches every canceled error.
	ErrCanceled = &Error{Code: CodeCanceled, Message: "canceled"}
	// ErrForbidden matches every forbidden error.
	ErrForbidden = &Error{Code: CodeForbidden, Message: "forbidden"}
	// ErrRateLimited matches every rate_limited error.
	ErrRateLimited = &Error{Code: CodeRateLimited, Message: "rate limited"}
)

// Error returns "code: message", or just the code when there is no message.
func (e *Error) Error() string {
	if e.Message == "" {
		return string(e.Code)
	}
	return string(e.Code) + ": " + e.Message
}

// Is reports whether target is an *Error with the same code, which is what
// makes errors.Is(err, ErrNotFound) hold for every not_found error.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Unwrap returns the error e was made from, if any. Errors decoded from a
// wire have none.
func (e *Error) Unwrap() error { return e.cause }

// Errorf returns an *Error with the given code and a formatted message. A %w
// verb keeps the wrapped error reachable through errors.Is and errors.As.
func Errorf(code Code, format string, args ...any) *Error {
	err := fmt.Errorf(format, args...)
	return &Error{Code: code, Message: err.Error(), cause: errors.Unwrap(err)}
}

// CodeOf returns the code of err: the code of the first *Error in its chain,
// timeout or canceled for the context errors, internal for anything else and
// "" for nil.
func CodeOf(err error) Code {
	if err == nil {
		return ""
	}
	var e *Error
	switch {
	case errors.As(err, &e):
		return e.Code
	case errors.Is(err, context.DeadlineExceeded):
		return CodeTimeout
	case errors.Is(err, context.Canceled):
		return CodeCanceled
	}
	return CodeInternal
}

// AsError normalizes a non-nil error into an *Error fit for a wire. An *Error
// is returned as is. For an error that wraps an *Error the outer text is kept
// as the message, minus the inner "code: " prefix so the code is not spelled
// twice once the result is printed. AsError returns nil for nil.
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	if e, ok := err.(*Error); ok {
		return e
	}
	msg := err.Error()
	var inner *Error
	if errors.As(err, &inner) {
		if full := inner.Error(); inner.Message != "" && strings.Contains(msg, full) {
			msg = strings.Replace(msg, full, inner.Message, 1)
		}
		return &Error{Code: inner.Code, Message: msg, cause: err}
	}
	return &Error{Code: CodeOf(err), Message: msg, cause: err}
}

// internalError turns a handler's error into what the caller sees: errors
// that already carry a code are returned untouched, anything else becomes
// internal while keeping its message and its chain.
func internalError(err error) error {
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	// A handler that gives up because its ctx ended reports the caller's
	// deadline or cancellation, not a fault of its own.
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Code: CodeTimeout, Message: err.Error(), cause: err}
	case errors.Is(err, context.Canceled):
		return &Error{Code: CodeCanceled, Message: err.Error(), cause: err}
	}
	return &Error{Code: CodeInternal, Message: err.Error(), cause: err}
}

// ctxError explains why ctx ended while waiting for what.
func ctxError(ctx context.Context, what string) *Error {
	err := ctx.Err()
	if err == nil {
		// Only reached when a caller passes an uncanceled ctx by mistake;
		// treat it as cancellation rather than returning a nil *Error.
		err = context.Canceled
	}
	code := CodeCanceled
	if errors.Is(err, context.DeadlineExceeded) {
		code = CodeTimeout
	}
	return &Error{Code: code, Message: what + ": " + err.Error(), cause: err}
}
