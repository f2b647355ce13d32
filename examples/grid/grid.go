// Package grid is an example game for Colony's game module: up to four
// players move on a small grid and pick up coins; the first to Target
// coins wins. State is synced to everyone ten times a second.
//
// server/ runs a Colony node with it (guests allowed), client/ is a
// terminal client; see modules/game/README.md.
package grid

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/colonymq/colony/modules/game"
)

// Name is the game type's name.
const Name = "grid"

// Settings are what a room's creator may choose.
type Settings struct {
	Width  int    `json:"width"`  // default 16
	Height int    `json:"height"` // default 8
	Target int    `json:"target"` // coins to win; default 5
	Coins  int    `json:"coins"`  // on the board at once; default 3
	Seed   uint64 `json:"seed"`   // where coins appear
}

// Pos is a cell.
type Pos struct {
	X int `json:"x"`
	Y int `json:"y"`
}

// PlayerState is one player on the board.
type PlayerState struct {
	Pos
	Score int `json:"score"`
}

// State is what every frame carries.
type State struct {
	Width   int                     `json:"width"`
	Height  int                     `json:"height"`
	Target  int                     `json:"target"`
	Players map[string]*PlayerState `json:"players"`
	Coins   []Pos                   `json:"coins"`
}

// Move is a player's input: {"dir": "up"|"down"|"left"|"right"}.
type Move struct {
	Dir string `json:"dir"`
}

// Grid is one room's game.
type Grid struct {
	s   State
	rng *rand.Rand
}

// Game returns the game type to register with game.Module.Register.
func Game() game.Game {
	return game.Game{
		Name: Name, TickRate: 10, Sync: game.SyncState, Players: 4, Spectators: 4,
		New: func(raw json.RawMessage) (game.Logic, error) {
			st := Settings{Width: 16, Height: 8, Target: 5, Coins: 3}
			if len(raw) > 0 && string(raw) != "null" {
				if err := json.Unmarshal(raw, &st); err != nil {
					return nil, fmt.Errorf("grid settings: %w", err)
				}
			}
			if st.Width < 4 || st.Width > 64 || st.Height < 4 || st.Height > 32 || st.Target < 1 || st.Coins < 1 ||
				st.Coins > 16 || st.Coins+4 >= st.Width*st.Height {
				return nil, fmt.Errorf("grid settings out of range: %+v", st)
			}
			return New(st), nil
		},
	}
}

// New returns a game with settings st.
func New(st Settings) *Grid {
	g := &Grid{s: State{Width: st.Width, Height: st.Height, Target: st.Target, Players: map[string]*PlayerState{}},
		rng: rand.New(rand.NewPCG(st.Seed, 7))}
	for range st.Coins {
		g.s.Coins = append(g.s.Coins, g.free())
	}
	return g
}

// free returns a random cell nobody stands on and with no coin.
func (g *Grid) free() Pos {
	for {
		p := Pos{g.rng.IntN(g.s.Width), g.rng.IntN(g.s.Height)}
		taken := slices.Contains(g.s.Coins, p)
		for _, o := range g.s.Players {
			taken = taken || o.Pos == p
		}
		if !taken {
			return p
		}
	}
}

// OnJoin puts a player on a free cell; spectators just watch.
func (g *Grid) OnJoin(_ *game.Room, p *game.Player) error {
	if !p.Spectator {
		g.s.Players[p.ID] = &PlayerState{Pos: g.free()}
	}
	return nil
}

// OnLeave takes the player off the board.
func (g *Grid) OnLeave(_ *game.Room, p *game.Player, _ game.Reason) { delete(g.s.Players, p.ID) }

// OnInput moves a player one cell, picking up a coin there.
func (g *Grid) OnInput(r *game.Room, in game.Input) {
	ps := g.s.Players[in.Player]
	var mv Move
	if ps == nil || json.Unmarshal(in.Data, &mv) != nil {
		return
	}
	to := ps.Pos
	switch mv.Dir {
	case "up":
		to.Y--
	case "down":
		to.Y++
	case "left":
		to.X--
	case "right":
		to.X++
	default:
		return
	}
	if to.X < 0 || to.Y < 0 || to.X >= g.s.Width || to.Y >= g.s.Height {
		return
	}
	for _, o := range g.s.Players {
		if o.Pos == to {
			return
		}
	}
	ps.Pos = to
	if i := slices.Index(g.s.Coins, to); i >= 0 {
		ps.Score++
		g.s.Coins[i] = g.free()
		r.Broadcast("coin", map[string]any{"player": in.Player, "score": ps.Score})
		if ps.Score >= g.s.Target {
			r.End(g.result())
		}
	}
}

// OnTick sends the board.
func (g *Grid) OnTick(*game.Room) any { return &g.s }

// result ranks players by score.
func (g *Grid) result() game.Result {
	ids := make([]string, 0, len(g.s.Players))
	scores := map[string]float64{}
	for id, p := range g.s.Players {
		ids = append(ids, id)
		scores[id] = float64(p.Score)
	}
	slices.SortFunc(ids, func(a, b string) int { return g.s.Players[b].Score - g.s.Players[a].Score })
	var ranks [][]string
	for i, id := range ids {
		if i > 0 && g.s.Players[ids[i-1]].Score == g.s.Players[id].Score {
			ranks[len(ranks)-1] = append(ranks[len(ranks)-1], id)
			continue
		}
		ranks = append(ranks, []string{id})
	}
	return game.Result{Ranks: ranks, Scores: scores}
}
