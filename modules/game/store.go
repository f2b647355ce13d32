package game

import (
	"fmt"

	"github.com/colonymq/colony/store"
)

// Record is a finished game as stored (bucket mod/game/results, by room id).
type Record struct {
	Room    string   `json:"room"`
	Game    string   `json:"game"`
	Mode    string   `json:"mode,omitempty"`
	Players []string `json:"players"`
	Result  Result   `json:"result"`
	Ended   int64    `json:"ended"` // Unix ms, room time
	Ticks   uint64   `json:"ticks"`
	// Ratings are the players' ratings after the game (matchmade rooms
	// with Result.Ranks).
	Ratings map[string]float64 `json:"ratings,omitempty"`
}

// stores holds the module's buckets, written on the matchmaker node.
type stores struct {
	db      *store.DB
	results *store.Bucket[Record]  // room -> record
	ratings *store.Bucket[float64] // mode 0 player -> rating
}

func openStores(db *store.DB, module string) (*stores, error) {
	s := &stores{db: db}
	var err error
	if s.results, err = store.NewBucket[Record](db, module, "results"); err != nil {
		return nil, fmt.Errorf("open bucket results: %w", err)
	}
	if s.ratings, err = store.NewBucket[float64](db, module, "ratings"); err != nil {
		return nil, fmt.Errorf("open bucket ratings: %w", err)
	}
	return s, nil
}

func ratingKey(mode, player string) string { return mode + "\x00" + player }
