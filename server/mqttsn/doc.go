// Package mqttsn is Colony's MQTT-SN v1.2 gateway for constrained devices,
// over plain UDP and over DTLS 1.2. It runs in the node's process and
// feeds the same broker: every device is an ordinary client of the engine
// (server.ServeConn), so it passes the same authentication, ACL and topic
// guards as MQTT clients, is bound to a user, can be pushed to and kicked,
// and its messages are federated like any other. An MQTT-SN device and an
// MQTT client see each other's messages.
//
// # Identity
//
// On plain UDP a device has no credentials: it is anonymous, admitted by
// the listener's address like MQTT clients are (loopback only unless
// auth.allow_anonymous). Over DTLS the transport authenticates it: the PSK
// identity, or the common name of a client certificate signed by
// client_ca_file, becomes the device's username and user id, and ACL
// "user" and %u rules apply to it. A DTLS device without a client
// certificate is anonymous. A wrong PSK shows to the device as a
// handshake that never completes (DTLS drops records it cannot decrypt);
// the gateway counts it after handshake_timeout.
//
// Keys come from a PSKStore: a Mosquitto-format psk_file, or (with
// mqttsn.psk_from naming a module, e.g. "device") a module's registry
// through app.PSKSource, with the psk_file asked for identities the
// module holds no key for; an identity the module refuses (a disabled
// device) fails the handshake. The identity the transport vouched for
// also reaches the modules' authenticators at CONNECT
// (server.ConnectInfo.Vouched), with the verified client certificate
// chain when there is one (server.CertifiedConn, so a module can check a
// pinned fingerprint): the device module admits a registered
// device id as that device, bound to dev:<id> and confined to dev/<id>/…
// instead of the ACL file, and refuses a disabled one
// (modules/device/README.md, "MQTT-SN devices"). A plain UDP device has
// no credentials to offer, so no module can vouch for it.
//
// # Messages and behaviour
//
// Every datagram holds one message; one that does not decode (package
// packet checks every length and field) is dropped, counted
// (colony_mqttsn_malformed_total) and logged once per peer. A datagram
// that needs a session from a peer without one is answered with
// DISCONNECT, telling the device to connect again.
//
//   - SEARCHGW: answered with GWINFO (gateway_id) to the sender.
//   - ADVERTISE: sent every `advertise` to advertise_addr (broadcast or
//     multicast), from the UDP listener; none when advertise_addr is empty.
//     ADVERTISE and GWINFO from others are ignored.
//   - CONNECT: starts a session. With the will flag the gateway asks
//     WILLTOPICREQ, then WILLMSGREQ, and connects to the broker after
//     WILLMSG (an empty WILLTOPIC means no will). CONNACK is "accepted", or
//     "rejected: congestion" when the broker is at max_connections, or
//     "rejected: not supported" when authentication refuses the device. A
//     CONNECT without CleanSession for a session still open (active or
//     asleep, from any address of the same listener and identity, and
//     with the same client certificate if the session used one) resumes
//     it: subscriptions, topic ids and buffered messages stay, the will is
//     set afresh. A CONNECT from another principal is authenticated
//     afresh and replaces the session only once the broker accepts it (the
//     broker takes the client id over, and the old device gets
//     DISCONNECT; one still in its will flow is told at once): the last
//     CONNECT the broker accepts wins. Refused, it leaves the session
//     alone. With
//     CleanSession, or when no session is open, the broker
//     session starts clean, or (without CleanSession) resumes the broker's
//     persistent session: subscriptions and the QoS 1/2 messages queued
//     while the device was away. Topic ids do not outlive the gateway
//     session; a device that uses a stale one gets "invalid topic id" and
//     registers again, as the spec says.
//   - REGISTER: assigns a topic id for a topic name (no wildcards); REGACK.
//     The gateway also sends REGISTER before the first message on a topic
//     the device has no id for (wildcard subscriptions), and waits for REGACK.
//   - PUBLISH: topic by registered id, predefined id ([mqttsn.predefined])
//     or two-character short name. QoS 0 and 1 map to the same MQTT QoS;
//     QoS 1 is acknowledged with PUBACK after the broker's acknowledgement
//     (that is, after fan-out); QoS 2 goes PUBREC, PUBREL, PUBCOMP end to
//     end. A retransmitted PUBLISH (DUP) is not published twice. QoS -1
//     (predefined or short topic) needs no CONNECT: it is published at QoS
//     0 through the device's session if it has one, else through an
//     anonymous connection of the listener (subject to the anonymous rule
//     and the ACL). PUBACK return codes: "invalid topic id" for an unknown
//     id, "rejected: not supported" when the broker refuses the message
//     (ACL, $SYS), "rejected: congestion" when the device has 256 KB
//     waiting for the broker already (QoS 0 is then dropped and counted).
//   - SUBSCRIBE, UNSUBSCRIBE: by topic name (wildcards allowed), predefined
//     id or short name. SUBACK carries the granted QoS and, for a name
//     without wildcards, the topic id the gateway will publish with; a
//     refused subscription (ACL) is "rejected: not supported", an unknown
//     predefined id "invalid topic id". Retained messages follow SUBACK.
//   - Messages to the device go one at a time, in the broker's order: a
//     QoS 1/2 PUBLISH or a REGISTER waits for its answer before the next
//     message is sent. The broker hands a device at most `window` (32)
//     unacknowledged QoS 1/2 messages; the rest wait in its broker session,
//     which for a persistent session is in the store. A QoS 1/2 message is
//     acknowledged to the broker only once the device has acknowledged it.
//     QoS 0 messages wait in the gateway, at most `queue` (1000) per
//     device; more are dropped, counted (colony_mqttsn_dropped_total
//     {reason="queue_full"}) and logged once per device until it drains. A
//     device answering PUBACK "invalid topic id" gets REGISTER and the
//     message again.
//   - Retransmission: an unanswered PUBLISH (with DUP), PUBREL or REGISTER
//     is sent again every retry_interval (Tretry, 10 s), at most
//     max_retries (Nretry, 4) sends in all; then the device is lost.
//   - PINGREQ: answered with PINGRESP; it keeps the session alive.
//   - Keep-alive: a device silent for 1.5 × its CONNECT duration is lost.
//     A lost device's will is published through its own broker connection
//     (so the ACL applies), then that connection ends; a persistent broker
//     session stays.
//   - DISCONNECT without a duration: the session ends, no will; the
//     gateway answers DISCONNECT. With a duration: the device sleeps. The
//     gateway answers DISCONNECT, keeps the session and the broker
//     connection, and buffers what arrives (QoS 1/2 in the broker's window,
//     QoS 0 up to `queue`). A device silent for 1.5 × the sleep duration is
//     lost (will published).
//   - PINGREQ with the client id, from a sleeping device (from any address
//     of the same listener, identity and certificate): it is awake; the buffered
//     messages are sent, then PINGRESP, and it sleeps again. CONNECT ends
//     the sleep.
//   - WILLTOPICUPD, WILLMSGUPD: replace the will topic (empty: delete the
//     will) and message; answered WILLTOPICRESP, WILLMSGRESP.
//   - Forwarder encapsulation (0xFE) is not supported: dropped and counted
//     as malformed.
//
// When the broker ends a device's connection (a kick, a takeover of the
// client id, shutdown) the device gets DISCONNECT. Closing the gateway
// sends DISCONNECT to every device and ends their broker connections
// without wills.
//
// # Costs
//
// A device costs one goroutine (the engine's reader of its in-memory
// connection) and, asleep with a persistent session and one subscription,
// about as much memory as an idle MQTT connection (BENCHMARKS.md). The UDP
// listener is served by one goroutine that never waits for the broker; a
// DTLS association has a goroutine of its own.
package mqttsn
