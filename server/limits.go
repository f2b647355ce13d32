package server

import (
	"fmt"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// limitsHook refuses CONNECTs that would abuse the server: client ids of the
// server's own clients, and keep-alives beyond Limits.MaxKeepalive. The
// engine enforces the other limits itself (PATCHES.md, P15).
type limitsHook struct {
	mqtt.HookBase
	s *Server
}

var _ mqtt.Hook = (*limitsHook)(nil)

func (h *limitsHook) ID() string { return "colony-limits" }

func (h *limitsHook) Provides(b byte) bool { return b == mqtt.OnConnect }

// errRefused reports a CONNECT refused by limitsHook; its CONNACK is sent.
var errRefused = fmt.Errorf("connect refused: %w", packets.ErrRejectPacket)

// OnConnect runs before authentication, so a refusal costs no bcrypt.
func (h *limitsHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	// A client taking the id of the server's own publisher would take over
	// its session (and what it publishes would pass for the server's).
	if cl.ID == mqtt.InlineClientId || cl.ID == ClusterClientID {
		return h.refuse(cl, packets.ErrClientIdentifierNotValid, "reserved client id")
	}
	maxKA := uint16(h.s.opts.Limits.MaxKeepalive / time.Second)
	if maxKA == 0 {
		return nil
	}
	ka := cl.State.Keepalive
	switch {
	case ka != 0 && ka <= maxKA:
	case cl.Properties.ProtocolVersion == 5:
		cl.State.Keepalive, cl.State.ServerKeepalive = maxKA, true // [MQTT-3.2.2-21]
	case ka == 0:
		// 3.1.1 cannot be told; the server may close inactive clients anyway (3.1.2.10).
		cl.State.Keepalive = maxKA
	default:
		return h.refuse(cl, packets.ErrClientIdentifierNotValid, "keep-alive above limits.max_keepalive")
	}
	return nil
}

func (h *limitsHook) refuse(cl *mqtt.Client, code packets.Code, why string) error {
	h.s.refusedConnects.Add(1)
	h.s.log.Debug().Str("client", cl.ID).Str("remote", cl.Net.Remote).Str("reason", why).Msg("connect refused")
	if err := h.s.mq.SendConnack(cl, code, false, nil); err != nil {
		return fmt.Errorf("%s: %w", why, err)
	}
	return fmt.Errorf("%s: %w", why, errRefused)
}
