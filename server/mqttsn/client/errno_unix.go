//go:build unix

package client

import "syscall"

// errConnRefused is what a connected UDP socket reads after an ICMP port unreachable.
var errConnRefused error = syscall.ECONNREFUSED
