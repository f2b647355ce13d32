// Package hostile is Colony's hostile-input suite: raw MQTT over TCP and
// WebSocket against a real node, one attack class per case, each checking
// how the offending connection ends (CONNACK or DISCONNECT reason code, or
// a plain close where the spec gives none) while a well-behaved MQTT 5
// subscriber and MQTT 3.1.1 publisher keep being served.
//
// Attack classes and what the server does (limits from [limits]):
//
//   - remaining length of 256 MB, before or after CONNECT: nothing is
//     allocated; closed (MQTT 5 after CONNECT: DISCONNECT 0x95)
//   - remaining length of five bytes: closed
//   - packet above max_packet_size: DISCONNECT 0x95 (3.1.1: closed); CONNACK
//     announces the maximum
//   - first packet not CONNECT (PUBLISH, PINGREQ; TCP and WebSocket): closed
//   - CONNECT twice: DISCONNECT 0x82 (3.1.1: closed)
//   - bad protocol name: closed; unknown protocol level: CONNACK 0x01
//   - reserved CONNECT flag: CONNACK 0x82
//   - MQTT 5 properties: duplicated (CONNACK 0x82 / DISCONNECT 0x82), unknown
//     or not allowed in the packet (0x82), truncated or longer than the
//     packet (DISCONNECT 0x81)
//   - truncated MQTT 5 SUBSCRIBE (mochi #501, crashed the process upstream):
//     DISCONNECT 0x81, over TCP and WebSocket
//   - QoS 2 packet ids never released: DISCONNECT 0x93 at receive_maximum
//     (3.1.1: closed)
//   - topic with invalid UTF-8 or U+0000: DISCONNECT 0x81; wildcard in a
//     PUBLISH topic: DISCONNECT 0x82 (3.1.1: closed)
//   - more than max_topic_levels levels: PUBLISH DISCONNECT 0x90, SUBSCRIBE 0x8F
//   - more than max_subscriptions filters: SUBACK 0x97 for the excess
//   - empty client id: 3.1.1 persistent session CONNACK 0x02; MQTT 5 gets
//     one assigned
//   - client id of the server's own clients ("inline", "cluster"), which
//     would take over the server's publisher: CONNACK 0x85
//   - keep-alive 0 (MQTT 5): CONNACK Server Keep Alive = max_keepalive;
//     above max_keepalive (3.1.1): CONNACK 0x02; silent past 1.5 x
//     keep-alive: closed
//   - slowloris: no CONNECT, or one dribbled byte by byte, or an HTTP
//     upgrade request never finished: closed after connect_timeout
//   - WebSocket text frame: closed
//   - more than max_connections: CONNACK 0x89 (3.1.1: 0x03)
//   - publishing above publish_rate: the client is read more slowly, nothing
//     is lost
//
// Wildcards in client ids and usernames against ACL %c/%u rules, $SYS
// publishes and cross-user topics are in security_test.go.
package hostile
