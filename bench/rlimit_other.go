//go:build !unix

package bench

import "errors"

// RaiseFileLimit is not supported on this platform; it returns 0 and an error.
func RaiseFileLimit() (uint64, error) {
	return 0, errors.New("raise open file limit: not supported on this platform")
}
