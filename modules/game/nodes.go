package game

import (
	"encoding/json"
	"slices"
	"sync"
	"time"

	"github.com/colonymq/colony/server"
)

// Load is what a game node announces about itself, retained on
// game/nodes/<node> (closed to clients by the module's guard); message
// federation carries it to every node, also to nodes that join later.
type Load struct {
	Node    string   `json:"node"`
	Rooms   int      `json:"rooms"`
	Players int64    `json:"players"`
	Games   []string `json:"games"`
}

// nodes is this node's view of the game nodes of the cluster.
type nodes struct {
	m    *Module
	mu   sync.Mutex
	seen map[string]nodeLoad
	kick chan struct{}
}

type nodeLoad struct {
	Load
	at    time.Time
	extra int // rooms placed there since its last announcement
}

func newNodes(m *Module) *nodes {
	return &nodes{m: m, seen: map[string]nodeLoad{}, kick: make(chan struct{}, 1)}
}

// message records another node's announcement. It runs on the
// publisher's goroutine (the cluster link's, for other nodes).
func (ns *nodes) message(msg server.Message) {
	node := msg.Topic[len(topicNodes):]
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if len(msg.Payload) == 0 {
		delete(ns.seen, node) // withdrawn
		return
	}
	var l Load
	if err := json.Unmarshal(msg.Payload, &l); err != nil || l.Node != node {
		return
	}
	ns.seen[node] = nodeLoad{Load: l, at: time.Now()}
}

func (ns *nodes) local() Load {
	m := ns.m
	m.cfgMu.RLock()
	games := make([]string, 0, len(m.games))
	for g := range m.games {
		games = append(games, g)
	}
	m.cfgMu.RUnlock()
	slices.Sort(games)
	return Load{Node: m.host.Node, Rooms: m.roomCount(), Players: m.stats.players.Load(), Games: games}
}

// announce publishes this node's load.
func (ns *nodes) announce() {
	b, err := json.Marshal(ns.local())
	if err != nil {
		return
	}
	if err := ns.m.host.Server.Publish(topicNodes+ns.m.host.Node, b, true, 0); err != nil {
		ns.m.log.Debug().Err(err).Msg("announce load")
	}
}

// withdraw clears the announcement, so others stop placing rooms here.
func (ns *nodes) withdraw() {
	if err := ns.m.host.Server.Publish(topicNodes+ns.m.host.Node, nil, true, 0); err != nil {
		ns.m.log.Debug().Err(err).Msg("withdraw load")
	}
}

// changed asks for an early announcement (rooms came or went).
func (ns *nodes) changed() {
	select {
	case ns.kick <- struct{}{}:
	default:
	}
}

// run announces every Options.Announce, and soon after changes.
func (ns *nodes) run(stop <-chan struct{}) {
	every := time.Duration(ns.m.opts.Announce)
	t := time.NewTicker(every)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		case <-ns.kick:
			if time.Since(last) < every/4 {
				continue // the next beat or change will carry it
			}
		}
		ns.announce()
		last = time.Now()
	}
}

// live returns the other nodes heard from lately, by id.
func (ns *nodes) live() map[string]nodeLoad {
	life := 3 * time.Duration(ns.m.opts.Announce)
	ns.mu.Lock()
	defer ns.mu.Unlock()
	out := map[string]nodeLoad{}
	for id, l := range ns.seen {
		if id != ns.m.host.Node && time.Since(l.at) <= life {
			out[id] = l
		}
	}
	return out
}

// others returns the ids of the other live game nodes, sorted.
func (ns *nodes) others() []string {
	live := ns.live()
	out := make([]string, 0, len(live))
	for id := range live {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// place picks the node for a new room of game: the live node offering it
// with the fewest seated players and rooms (this one on a tie).
func (ns *nodes) place(game string) string {
	self := ns.local()
	best, bestScore := self.Node, score(self, 0)
	for id, l := range ns.live() {
		if !slices.Contains(l.Games, game) {
			continue
		}
		if s := score(l.Load, l.extra); s < bestScore || (s == bestScore && id < best && best != self.Node) {
			best, bestScore = id, s
		}
	}
	if best != self.Node {
		ns.mu.Lock()
		if l, ok := ns.seen[best]; ok {
			l.extra++
			ns.seen[best] = l
		}
		ns.mu.Unlock()
	}
	return best
}

// score weighs a node's load: players cost their traffic, rooms their ticks.
func score(l Load, extra int) float64 {
	return float64(l.Players) + 2*float64(l.Rooms+extra)
}

// matchmaker returns the node that runs matchmaking.
func (ns *nodes) matchmaker() string {
	if n := ns.m.opts.Matchmaker; n != "" {
		return n
	}
	best := ns.m.host.Node
	for id := range ns.live() {
		if id < best {
			best = id
		}
	}
	return best
}

// Nodes returns the loads the other live game nodes announced last,
// sorted by node id.
func (m *Module) Nodes() []Load {
	live := m.nodes.live()
	out := make([]Load, 0, len(live))
	for _, id := range m.nodes.others() {
		if l, ok := live[id]; ok {
			out = append(out, l.Load)
		}
	}
	return out
}
