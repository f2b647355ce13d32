//go:build !linux

// COLONY PATCH (see PATCHES.md, P16): without a poller, connections are not
// parked; they still continue after CONNECT on a goroutine of their own.

package mqtt

import "syscall"

type poller struct{}

var thePoller poller

func pollerAvailable() bool                   { return false }
func (*poller) add(*parking)                  {}
func (*poller) forget(*parking)               {}
func (*poller) arm(*parking) bool             { return false }
func (*readBuf) readNow(syscall.RawConn) bool { return true }
