//go:build unix

package server

import "syscall"

const errAddrInUseSys = syscall.EADDRINUSE
