package app

import (
	"errors"
	"fmt"

	"github.com/colonymq/colony/server/mqttsn"
)

// ErrNoPSK is what a PSKSource's LookupPSK wraps when it holds no key
// for an identity, so that the gateway may ask mqttsn.psk_file next.
var ErrNoPSK = errors.New("no psk for this identity")

// PSKSource is implemented by modules that hold the DTLS pre-shared keys
// of MQTT-SN devices, such as the device module's registry. The App
// hands the enabled module named by mqttsn.psk_from to the MQTT-SN
// gateway, so devices are authenticated by the module's keys without the
// module knowing the gateway, nor the gateway the module.
type PSKSource interface {
	// LookupPSK returns the key of the device whose DTLS PSK identity is
	// identity. It is called during handshakes, concurrently, after the
	// module's Init, and must answer quickly. An error wrapping ErrNoPSK
	// means the module holds no key for identity: mqttsn.psk_file is
	// asked next. Any other error (a disabled device) fails the handshake.
	LookupPSK(identity string) ([]byte, error)
}

// pskSource finds the module named by mqttsn.psk_from among the enabled ones.
func pskSource(mods []Module, id string) (PSKSource, error) {
	for _, m := range mods {
		if m.ID() != id {
			continue
		}
		src, ok := m.(PSKSource)
		if !ok {
			return nil, fmt.Errorf("mqttsn.psk_from: module %q serves no PSKs: %w", id, ErrConfig)
		}
		return src, nil
	}
	return nil, fmt.Errorf("mqttsn.psk_from: module %q is not enabled on this node: %w", id, ErrConfig)
}

// modulePSK asks src first and file (which may be nil) for the
// identities src holds no key for.
func modulePSK(src PSKSource, file *mqttsn.PSKFile) mqttsn.PSKStore {
	return mqttsn.PSKFunc(func(identity string) ([]byte, error) {
		key, err := src.LookupPSK(identity)
		switch {
		case err == nil:
			return key, nil
		case !errors.Is(err, ErrNoPSK):
			return nil, err
		case file != nil:
			return file.PSK(identity)
		}
		return nil, fmt.Errorf("%w: %w", mqttsn.ErrUnknownIdentity, err)
	})
}
