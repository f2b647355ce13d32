//go:build linux && !race && !msan && !asan

// COLONY PATCH (see PATCHES.md, P21). Race-detector builds take
// colony_direct_syscall.go instead: the detector learns of the ordering that
// reads and writes on sockets carry between goroutines (a test's client and
// the server in one process) from syscall.Read and Write, which raw calls
// would hide from it; so do memory- and address-sanitizer builds, which learn
// from them which bytes the kernel wrote.

package mqtt

import (
	"syscall"
	"unsafe"
)

// sysRead and sysWrite are read(2) and write(2) without the runtime's
// system call bookkeeping (syscall.RawSyscall). Go's sockets are
// non-blocking, so the calls return at once; entered as blocking system
// calls (syscall.Read, net.Conn), each one wakes the runtime's monitor
// thread (sysmon) when the process was idle before, and on these VMs that
// thread switch per packet cost more than the packet.
func sysRead(fd uintptr, b []byte) (int, error) {
	return rawIO(syscall.SYS_READ, fd, b)
}

func sysWrite(fd uintptr, b []byte) (int, error) {
	return rawIO(syscall.SYS_WRITE, fd, b)
}

func rawIO(trap, fd uintptr, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	n, _, errno := syscall.RawSyscall(trap, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
