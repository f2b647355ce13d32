// COLONY PATCH (see PATCHES.md, P48): one client id's connections take
// over from each other in turn.

package mqtt

import "hash/maphash"

var idLockSeed = maphash.MakeSeed()

// lockClientID locks the stripe of client id id and returns its unlock.
// A CONNECT looks for the id's existing client (inheritClientSession) and
// then adds its own (Clients.Add): two CONNECTs with one id that ran those
// steps side by side each missed the other, both were accepted, and the
// first one's connection stayed open unfindable. When it ended, its
// clean-up deleted the id's entry, which was the second one's, so that
// live client could no longer be found (no deliveries, no take-over). The
// stripes (64) keep CONNECTs of other ids from waiting on each other.
func (s *Server) lockClientID(id string) (unlock func()) {
	mu := &s.idLocks[maphash.String(idLockSeed, id)%uint64(len(s.idLocks))]
	mu.Lock()
	return mu.Unlock
}
