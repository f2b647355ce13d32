package hostile_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/store"
)

// BenchmarkStoreChurn measures how colony.db grows under persistent-session
// churn and what `colony store compact` gives back: each round, 200 MQTT 5
// clients take a persistent session (expiry 1 h) with a QoS 1 subscription,
// go away, get 5 messages of 1 KB queued for them (stored), and come back
// with a clean start, which deletes their session. The figures are file
// sizes, reported as metrics; run it with -benchtime 1x
// (scripts/footprint.sh does).
func BenchmarkStoreChurn(b *testing.B) {
	const clients, rounds, queued = 200, 10, 5
	cfg := apptest.Config(b)
	a := apptest.Run(b, cfg)
	addr := a.Addr("mqtt")
	path := filepath.Join(cfg.Node.DataDir, "colony.db")
	size := func() float64 {
		if err := a.Store().Flush(b.Context()); err != nil {
			b.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			b.Fatal(err)
		}
		return float64(fi.Size())
	}
	persist := []byte{0x11, 0, 0, 0x0e, 0x10} // session expiry 3600 s
	payload := string(make([]byte, 1024))
	pub := dial(b, addr)
	pub.connack(connectOpts{id: "churn-pub"})
	var first float64
	for r := range rounds {
		for i := range clients {
			c := dial(b, addr)
			if rc := c.connack(connectOpts{id: fmt.Sprint("churn-", i), persistent: true, props: persist}); rc != 0 {
				b.Fatalf("connack %#x", rc)
			}
			c.send(subscribe5(1, fmt.Sprint("churn/", i)))
			if p, err := c.next(); err != nil || p.typ != tSuback {
				b.Fatalf("suback: %v %v", p, err)
			}
			c.conn.Close()
		}
		for i := range clients {
			for q := range queued {
				pub.send(publish(true, 1, uint16(1+q), fmt.Sprint("churn/", i), nil, payload))
				if p, err := pub.next(); err != nil || p.typ != tPuback {
					b.Fatalf("puback: %v %v", p, err)
				}
			}
		}
		if r == 0 {
			first = size()
		}
		for i := range clients {
			c := dial(b, addr)
			c.connack(connectOpts{id: fmt.Sprint("churn-", i)}) // clean start: the session is deleted
			c.send([]byte{0xe0, 0})
			c.conn.Close()
		}
	}
	last := size()
	apptest.Stop(b, a)
	res, err := store.Compact(path)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(first, "bytes-after-1-round")
	b.ReportMetric(last, fmt.Sprintf("bytes-after-%d-rounds", rounds))
	b.ReportMetric(float64(res.After), "bytes-after-compact")
}
