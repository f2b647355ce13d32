package im

import (
	"context"
	"errors"

	"github.com/colonymq/colony/rpc"
	"github.com/colonymq/colony/server"
)

// register registers every handler of the module; README.md documents
// each with its request and result.
func (m *Module) register(reg *rpc.Registry, id string) {
	rpc.Handle(reg, id, "me", m.me)
	rpc.Handle(reg, id, "login", m.login)
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

// login lets a client choose its user id where the server trusts its
// clients with that (server.ClaimUser: loopback, no password file), which
// is what the web demo uses on a default node.
func (m *Module) login(ctx context.Context, req *LoginReq) (*Me, error) {
	c, _ := rpc.CallerFrom(ctx)
	if c.ClientID == "" || c.Module != "" {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "login is for client connections")
	}
	if err := checkUsers(req.User); err != nil {
		return nil, err
	}
	if c.UserID != req.User {
		err := m.host.Server.ClaimUser(c.ClientID, req.User)
		switch {
		case errors.Is(err, server.ErrNotTrusted):
			return nil, rpc.Errorf(rpc.CodeForbidden,
				"this node does not let clients choose their user id: connect with a username and password: %w", err)
		case errors.Is(err, server.ErrNoClient):
			return nil, rpc.Errorf(rpc.CodeBadRequest,
				"login works only for clients connected to the node that runs im: %w", err)
		case err != nil:
			return nil, err
		}
	}
	return &Me{User: req.User, Topic: TopicRoot + req.User + "/#"}, nil
}
