package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"testing"
)

func TestErrorString(t *testing.T) {
	tests := []struct {
		err  *Error
		want string
	}{
		{Errorf(CodeNotFound, "no module %q", "x"), `not_found: no module "x"`},
		{&Error{Code: CodeTimeout}, "timeout"},
		{ErrForbidden, "forbidden: forbidden"},
		{ErrRateLimited, "rate_limited: rate limited"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}

func TestErrorIsMatchesByCode(t *testing.T) {
	err := Errorf(CodeNotFound, "no handler %q", "y")
	if !errors.Is(err, ErrNotFound) {
		t.Error("errors.Is(not_found error, ErrNotFound) = false")
	}
	if errors.Is(err, ErrInternal) {
		t.Error("errors.Is(not_found error, ErrInternal) = true")
	}
	wrapped := fmt.Errorf("load user: %w", err)
	if !errors.Is(wrapped, ErrNotFound) {
		t.Error("errors.Is(wrapped not_found, ErrNotFound) = false")
	}
	if errors.Is(io.EOF, ErrNotFound) {
		t.Error("errors.Is(io.EOF, ErrNotFound) = true")
	}
}

func TestErrorfKeepsWrappedError(t *testing.T) {
	err := Errorf(CodeBadRequest, "decode: %w", io.ErrUnexpectedEOF)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Error("Errorf with %w lost the wrapped error")
	}
	if !errors.Is(err, ErrBadRequest) {
		t.Error("Errorf result does not match its own code")
	}
	if got, want := err.Message, "decode: unexpected EOF"; got != want {
		t.Errorf("Message = %q, want %q", got, want)
	}
}

func TestErrorJSON(t *testing.T) {
	b, err := json.Marshal(Errorf(CodeForbidden, "not yours: %w", io.EOF))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"code":"forbidden","message":"not yours: EOF"}`; got != want {
		t.Errorf("json = %s, want %s", got, want)
	}
	var back Error
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(&back, ErrForbidden) {
		t.Error("decoded error lost its code")
	}
}

func TestCodeOf(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want Code
	}{
		{"nil", nil, ""},
		{"rpc error", Errorf(CodeForbidden, "no"), CodeForbidden},
		{"sentinel", ErrUnavailable, CodeUnavailable},
		{"wrapped rpc error", fmt.Errorf("user x: %w", ErrNotFound), CodeNotFound},
		{"deadline", context.DeadlineExceeded, CodeTimeout},
		{"wrapped deadline", fmt.Errorf("query: %w", context.DeadlineExceeded), CodeTimeout},
		{"canceled", context.Canceled, CodeCanceled},
		{"plain", errors.New("disk on fire"), CodeInternal},
		{"outer code wins", Errorf(CodeInternal, "lookup: %w", ErrNotFound), CodeInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CodeOf(tt.err); got != tt.want {
				t.Errorf("CodeOf(%v) = %q, want %q", tt.err, got, tt.want)
			}
		})
	}
}

func TestAsError(t *testing.T) {
	forbidden := Errorf(CodeForbidden, "not your room")
	tests := []struct {
		name     string
		err      error
		wantCode Code
		wantMsg  string
	}{
		{"rpc error", forbidden, CodeForbidden, "not your room"},
		{"wrapped sentinel", fmt.Errorf("user x: %w", ErrNotFound), CodeNotFound, "user x: not found"},
		{"wrapped rpc error", fmt.Errorf("join: %w", forbidden), CodeForbidden, "join: not your room"},
		{"deadline", context.DeadlineExceeded, CodeTimeout, "context deadline exceeded"},
		{"canceled", fmt.Errorf("wait: %w", context.Canceled), CodeCanceled, "wait: context canceled"},
		{"plain", errors.New("disk on fire"), CodeInternal, "disk on fire"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := AsError(tt.err)
			if got.Code != tt.wantCode || got.Message != tt.wantMsg {
				t.Errorf("AsError(%v) = {%q, %q}, want {%q, %q}", tt.err, got.Code, got.Message, tt.wantCode, tt.wantMsg)
			}
			if !errors.Is(got, tt.err) {
				t.Errorf("AsError(%v) lost the original error", tt.err)
			}
		})
	}
	if AsError(nil) != nil {
		t.Error("AsError(nil) != nil")
	}
	if AsError(forbidden) != forbidden {
		t.Error("AsError(*Error) did not return the same error")
	}
}
