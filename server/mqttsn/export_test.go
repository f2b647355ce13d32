package mqttsn

// Associations returns how many DTLS associations g serves, for tests.
func Associations(g *Gateway) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.assocs)
}
