// Package game is Colony's game module: real-time, room-based games over
// plain MQTT clients, and matchmaking.
//
// # Writing a game
//
// A game developer implements Logic (OnJoin, OnLeave, OnInput, OnTick;
// optionally Awayer and Returner) and registers a Game with Module.Register:
// its name, how to make a room's Logic, the tick rate, the frame delivery
// (SyncLockStep: each tick's inputs; SyncState: the state OnTick returns;
// SyncNone: messages only), capacity, spectators and the late-input
// policy. Each room runs on one goroutine of its own, which makes every
// call into its Logic, so game state needs no locks. The *Room a callback
// gets broadcasts to the room, sends to one player or to all but one,
// sets timers, kicks players and ends the game with a Result, which the
// module stores (and turns into rating changes for matchmade rooms).
//
// # Players and connections
//
// A client calls login; the module binds its connection to the player id
// (server user binding), which ends the player's other connections
// (single login, reason ReasonReplaced). When a player's connection drops
// their seat is kept for Options.Grace; rejoining within it gives the seat
// back and replays what the room sent meanwhile (a bounded buffer per
// player). Past it, the seat is lost.
//
// # Clusters
//
// A room lives on one node, the one the module placed it on by load
// (every game node announces its rooms and players on a retained topic).
// Players log in on any node that runs the module, which calls the
// room's node with pinned RPC (module@node) for joins, leaves and inputs,
// and tells it when their connection drops; the room pushes to its players
// with server user pushes, which reach them on whatever node they are
// connected to. Inputs published on game/in/<player>/<room> travel by
// message federation to the room's node, in the publisher's order.
// Matchmaking, parties, ratings and results live on one node (the game
// node with the smallest id, or Options.Matchmaker).
//
// README.md, next to this file, documents every handler, topic and
// payload.
package game
