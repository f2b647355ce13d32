package mqttsn

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// ErrUnknownIdentity is returned by a PSKStore for an identity it does not know.
var ErrUnknownIdentity = errors.New("unknown psk identity")

// ErrBadPSKFile reports a PSK file line that cannot be used.
var ErrBadPSKFile = errors.New("bad psk file")

// PSKStore finds the pre-shared key of a device by the identity it sends
// in its DTLS handshake. It is called during handshakes, concurrently, and
// should answer quickly; an error (ErrUnknownIdentity for an identity it
// does not know) fails the handshake. The device module can serve keys
// from its registry through it; PSKFile is the file-based default.
type PSKStore interface {
	PSK(identity string) ([]byte, error)
}

// PSKFunc adapts a function to PSKStore.
type PSKFunc func(identity string) ([]byte, error)

// PSK calls f.
func (f PSKFunc) PSK(identity string) ([]byte, error) { return f(identity) }

// PSKFile holds keys read from a file in Mosquitto's psk_file format: one
// "identity:hex-key" per line, '#' comments.
type PSKFile struct {
	keys map[string][]byte
}

var (
	_ PSKStore = (*PSKFile)(nil)
	_ PSKStore = PSKFunc(nil)
)

// LoadPSKFile reads a PSK file.
func LoadPSKFile(path string) (*PSKFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open psk file: %w", err)
	}
	defer f.Close()
	p := &PSKFile{keys: map[string][]byte{}}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		id, key, ok := strings.Cut(line, ":")
		if !ok || id == "" {
			return nil, fmt.Errorf("%s:%d: want identity:hex-key: %w", path, n, ErrBadPSKFile)
		}
		b, err := hex.DecodeString(key)
		if err != nil || len(b) == 0 {
			return nil, fmt.Errorf("%s:%d: identity %q: key is not hex: %w", path, n, id, ErrBadPSKFile)
		}
		if _, dup := p.keys[id]; dup {
			return nil, fmt.Errorf("%s:%d: identity %q listed twice: %w", path, n, id, ErrBadPSKFile)
		}
		p.keys[id] = b
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read psk file: %w", err)
	}
	return p, nil
}

// PSK returns the identity's key.
func (p *PSKFile) PSK(identity string) ([]byte, error) {
	k, ok := p.keys[identity]
	if !ok {
		return nil, fmt.Errorf("identity %q: %w", identity, ErrUnknownIdentity)
	}
	return k, nil
}

// Len returns the number of identities.
func (p *PSKFile) Len() int { return len(p.keys) }
