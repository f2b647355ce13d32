// Package server is Colony's MQTT gateway. It embeds the mochi-mqtt engine
// (MQTT 3.1.1 and 5.0) behind Colony's own listeners (TCP, TLS, WebSocket),
// authenticates clients against a bcrypt password file, enforces a
// Mosquitto-style ACL and the topic spaces modules reserve (Guard), binds
// connections to user ids, lets modules push to
// users and clients, and turns client publishes on $rpc/<module>/<handler>
// into module calls whose results go back to the caller.
//
// A Server is built with New (which validates options and reads the auth
// files), bound with Start and stopped with Shutdown. Modules use it through
// the API interface.
package server
