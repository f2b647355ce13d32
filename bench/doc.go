// Package bench is Colony's load generator, the library behind `colony
// bench`. It drives any MQTT 3.1.1 or 5.0 broker reachable by URL (tcp:// or
// ws://), not only Colony, with real client libraries: paho.mqtt.golang for
// 3.1.1 and paho.golang for 5.0.
//
// [Run] executes one [Scenario] described by a [Config] and returns a
// [Result]:
//
//   - fan-in: Publishers clients each publish on their own topic
//     <prefix>/<n>; Subscribers clients subscribe to <prefix>/+.
//   - fan-out: every publisher publishes on <prefix>/all; every subscriber
//     subscribes to exactly that topic.
//   - pairs: publisher n publishes on <prefix>/<n>, which only subscriber n
//     subscribes to (Subscribers is Publishers).
//   - rpc: Publishers callers each make Count request/response calls to a
//     module handler ($rpc/<module>/<handler>), one at a time.
//   - idle: Clients plain connections with no subscriptions, held open while
//     the server's memory is read.
//
// Every message carries a 24-byte header (publisher index, sequence number,
// send time in Unix nanoseconds; big endian), padded to Config.Size.
// Subscribers keep one bit per (publisher, sequence) pair, so they count
// unique deliveries, duplicates, messages that arrive behind a later one of
// the same publisher, and by difference the lost ones. Latency is the
// receive time minus the send time in the header, which is only meaningful
// when the load generator runs on one machine (one clock); it is recorded in
// a log-linear histogram with better than 1% resolution.
//
// When Config.PID names the server's process (Linux), a sampler reads its
// VmRSS and VmHWM from /proc while the scenario runs.
package bench
