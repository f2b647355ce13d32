//go:build unix

package mqttsn

import (
	"context"
	"net"
	"syscall"
)

// listenUDP binds a, allowing broadcasts when the gateway advertises:
// ADVERTISE usually goes to a broadcast address.
func listenUDP(a *net.UDPAddr, broadcast bool) (*net.UDPConn, error) {
	lc := net.ListenConfig{}
	if broadcast {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	pc, err := lc.ListenPacket(context.Background(), "udp", a.String())
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}
