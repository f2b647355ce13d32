//go:build !unix

package server

import "syscall"

// errAddrInUseSys is WSAEADDRINUSE on Windows.
const errAddrInUseSys = syscall.Errno(10048)
