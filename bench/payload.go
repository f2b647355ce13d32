package bench

import (
	"encoding/binary"
	"errors"
)

// HeaderSize is the size in bytes of the header every benchmark message
// starts with: publisher index, sequence number and send time (Unix
// nanoseconds), each a big-endian uint64. Config.Size must be at least this.
const HeaderSize = 24

// errShortPayload is returned for a payload shorter than the header.
var errShortPayload = errors.New("payload shorter than the bench header")

// header is what a benchmark message carries.
type header struct {
	pub  uint64 // publisher (or caller) index
	seq  uint64 // 0-based sequence number within that publisher
	sent int64  // send time, Unix nanoseconds
}

// encode writes h into a new payload of size bytes (at least HeaderSize).
func (h header) encode(size int) []byte {
	b := make([]byte, max(size, HeaderSize))
	h.put(b)
	return b
}

// put writes h into the first HeaderSize bytes of b.
func (h header) put(b []byte) {
	binary.BigEndian.PutUint64(b[0:8], h.pub)
	binary.BigEndian.PutUint64(b[8:16], h.seq)
	binary.BigEndian.PutUint64(b[16:24], uint64(h.sent))
}

// decodeHeader reads the header at the start of b.
func decodeHeader(b []byte) (header, error) {
	if len(b) < HeaderSize {
		return header{}, errShortPayload
	}
	return header{
		pub:  binary.BigEndian.Uint64(b[0:8]),
		seq:  binary.BigEndian.Uint64(b[8:16]),
		sent: int64(binary.BigEndian.Uint64(b[16:24])),
	}, nil
}
