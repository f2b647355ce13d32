//go:build !unix

package mqttsn

import "net"

// listenUDP binds a; broadcasting ADVERTISE needs SO_BROADCAST, set on unix only.
func listenUDP(a *net.UDPAddr, _ bool) (*net.UDPConn, error) { return net.ListenUDP("udp", a) }
