//go:build unix && (!linux || race || msan || asan)

// COLONY PATCH (see PATCHES.md, P21): other Unix systems take their system
// calls through libc or forbid raw ones (OpenBSD), and race-detector builds
// need the race annotations of syscall.Read and Write: the runtime's calls.

package mqtt

import "syscall"

func sysRead(fd uintptr, b []byte) (int, error) {
	n, err := syscall.Read(int(fd), b)
	return max(n, 0), err
}

func sysWrite(fd uintptr, b []byte) (int, error) {
	n, err := syscall.Write(int(fd), b)
	return max(n, 0), err
}
