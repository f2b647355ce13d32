//go:build !unix

package client

import "errors"

var errConnRefused = errors.New("connection refused")
