package im

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/colonymq/colony/rpc"
)

// checkBlocked refuses anything user would send to the other side of a
// direct conversation when either blocks the other.
func (m *Module) checkBlocked(rec convRecord, user string) error {
	if rec.Kind != KindDirect {
		return nil
	}
	for _, peer := range rec.Users {
		if peer == user {
			continue
		}
		if b, err := m.st.blocked(peer, user); err != nil {
			return err
		} else if b {
			return rpc.Errorf(rpc.CodeForbidden, "%s does not accept messages from you: %w", peer, ErrBlocked)
		}
		if b, err := m.st.blocked(user, peer); err != nil {
			return err
		} else if b {
			return rpc.Errorf(rpc.CodeForbidden, "you block %s: unblock them first: %w", peer, ErrBlocked)
		}
	}
	return nil
}

// block stops a user from reaching the caller: no messages or typing in
// their direct conversation, no invitations from them, no presence of the
// caller's. Groups they share go on as before.
func (m *Module) block(ctx context.Context, req *BlockReq) (*OK, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkUsers(req.User); err != nil {
		return nil, err
	}
	if req.User == u {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "one cannot block oneself")
	}
	if err := m.st.blocks.Put(ctx, key(u, req.User), now()); err != nil {
		return nil, fmt.Errorf("store block: %w", err)
	}
	return &OK{}, nil
}

// unblock lifts a block.
func (m *Module) unblock(ctx context.Context, req *BlockReq) (*OK, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkUsers(req.User); err != nil {
		return nil, err
	}
	if err := m.st.blocks.Delete(ctx, key(u, req.User)); err != nil {
		return nil, fmt.Errorf("remove block: %w", err)
	}
	return &OK{}, nil
}

// blocks lists the users the caller blocks.
func (m *Module) blocks(ctx context.Context, _ *struct{}) (*BlocksResp, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	users, err := m.st.blockedBy(u)
	if err != nil {
		return nil, err
	}
	return &BlocksResp{Users: users}, nil
}

// limiter is a token bucket per key: rate tokens a second, at most burst
// saved up. A negative rate lets everything through.
type limiter struct {
	rate, burst float64
	mu          sync.Mutex
	buckets     map[string]*tokens
}

type tokens struct {
	n  float64
	at time.Time
}

// Typing events a user may send per conversation: a second's worth is
// plenty for "started" and "stopped".
const (
	typingRate  = 2
	typingBurst = 5
)

// msRound is how finely rate-limit waits are reported.
const msRound = time.Millisecond

func newLimiter(rate float64, burst int) *limiter {
	return &limiter{rate: rate, burst: float64(burst), buckets: map[string]*tokens{}}
}

// allow takes a token for k, or reports how long until one is there.
func (l *limiter) allow(k string) (wait time.Duration, ok bool) {
	if l.rate < 0 {
		return 0, true
	}
	t := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[k]
	if b == nil {
		b = &tokens{n: l.burst, at: t}
		l.buckets[k] = b
	}
	b.n = min(l.burst, b.n+t.Sub(b.at).Seconds()*l.rate)
	b.at = t
	if b.n >= 1 {
		b.n--
		return 0, true
	}
	return time.Duration((1 - b.n) / l.rate * float64(time.Second)), false
}

// prune forgets the keys whose buckets have filled up again: they behave
// exactly like new ones.
func (l *limiter) prune() {
	t := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, b := range l.buckets {
		if b.n+t.Sub(b.at).Seconds()*l.rate >= l.burst {
			delete(l.buckets, k)
		}
	}
}
