// Package device is Colony's device-management module: a registry of
// devices with per-device credentials (tokens, X.509 client certificates,
// PSKs for the MQTT-SN/DTLS gateway) and provisioning by fleet claim;
// status and last seen; telemetry stored with retention and queried by
// range with downsampling; AWS-style shadows; commands (direct methods)
// with an offline queue; and jobs (OTA) with progress roll-up.
//
// # API
//
// Devices speak plain MQTT 3.1.1 or 5 on their own topics dev/<id>/…
// (telemetry, shadow, res, jobs); applications call the handlers on
// $rpc/device/<handler>, and Go modules call the same handlers with
// rpc.Call. README.md, next to this file, documents every handler and
// topic with example JSON.
//
// # Authentication and access
//
// The module registers a server.Authenticator: a device connects with
// username = its id and password = a token, or with a client certificate
// on the TLS listener whose common name is its id; a claim connection
// uses username claim:<name> and the claim's secret. Admitted devices are
// bound to user id "dev:<id>" and confined to dev/<id>/… by their
// server.Identity, whatever the ACL file says; other clients are held to
// the ACL file as usual.
//
// MQTT-SN devices authenticate to the node's gateway over DTLS with a PSK
// from the registry: the module is an app.PSKSource (LookupPSK), wired by
// mqttsn.psk_from = "device", and its authenticator admits the identity
// the transport vouched for (server.ConnectInfo.Vouched) as that device.
//
// # Storage and clusters
//
// Everything lives in the node's store (buckets mod/device/*); telemetry
// is written in batches from one goroutine. The registry is cached whole
// in memory, which is sound because the module is its only writer: run
// the module on one node, and connect devices to that node (the
// authenticator, the connection events and the subscriptions it relies
// on are that node's). Applications may call its handlers from any node.
package device
