// Package app is Colony's kernel: configuration (strict TOML with flag and
// environment overrides), the module registry and lifecycle (Init, Start in
// dependency order, Stop in reverse), graceful shutdown, and the operations
// endpoint (/healthz, /metrics). An App wires the store, the module RPC and
// the MQTT gateway together and hands each module a Host.
package app
