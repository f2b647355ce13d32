package im

import (
	"context"

	"github.com/colonymq/colony/rpc"
)

// register registers every handler of the module; README.md documents
// each with its request and result.
func (m *Module) register(reg *rpc.Registry, id string) {
	rpc.Handle(reg, id, "me", m.me)
	// Conversations.
	rpc.Handle(reg, id, "direct", m.direct)
	rpc.Handle(reg, id, "create", m.createConv)
	rpc.Handle(reg, id, "get", m.get)
	rpc.Handle(reg, id, "list", m.list)
	rpc.Handle(reg, id, "members", m.membersOf)
	rpc.Handle(reg, id, "invite", m.invite)
	rpc.Handle(reg, id, "join", m.join)
	rpc.Handle(reg, id, "leave", m.leave)
	rpc.Handle(reg, id, "kick", m.kick)
	rpc.Handle(reg, id, "role", m.setRole)
	rpc.Handle(reg, id, "mute", m.mute)
	// Messages.
	rpc.Handle(reg, id, "send", m.send)
	rpc.Handle(reg, id, "edit", m.edit)
	rpc.Handle(reg, id, "revoke", m.revoke)
	rpc.Handle(reg, id, "delete_for_me", m.deleteForMe)
	rpc.Handle(reg, id, "history", m.history)
	rpc.Handle(reg, id, "sync", m.sync)
	// Receipts, typing, presence.
	rpc.Handle(reg, id, "delivered", m.delivered)
	rpc.Handle(reg, id, "read", m.read)
	rpc.Handle(reg, id, "typing", m.typingNow)
	rpc.Handle(reg, id, "presence", m.presenceOf)
	// Moderation.
	rpc.Handle(reg, id, "block", m.block)
	rpc.Handle(reg, id, "unblock", m.unblock)
	rpc.Handle(reg, id, "blocks", m.blocks)
}

// me tells a client its user id and what to subscribe to.
func (m *Module) me(ctx context.Context, _ *struct{}) (*Me, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	return &Me{User: u, Topic: TopicRoot + u + "/#"}, nil
}
