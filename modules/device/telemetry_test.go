package device_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/modules/device"
)

func TestTelemetryStoredAndDownsampled(t *testing.T) {
	n := start(t, secured(t), device.Options{})
	a := admin(t, n, "ops")
	tok := register(t, a, "meter", nil)
	c, _ := v3Device(t, n, "meter", tok)

	// 60 points one second apart from base: temp = i, hum = 100 - i; sent
	// as 6 arrays of 10 (MQTT 3.1.1, QoS 1).
	const base = int64(1_700_000_000_000)
	for batch := range 6 {
		var items []string
		for i := batch * 10; i < batch*10+10; i++ {
			items = append(items, fmt.Sprintf(`{"ts":%d,"temp":%d,"hum":%d,"door":%t,"note":"x"}`, base+int64(i)*1000, i, 100-i, i%2 == 0))
		}
		apptest.Done(t, c.Publish("dev/meter/telemetry", 1, false, "["+strings.Join(items, ",")+"]"))
	}
	// A nested object is flattened; a payload without numbers is refused and stored nowhere.
	apptest.Done(t, c.Publish("dev/meter/telemetry", 1, false, fmt.Sprintf(`{"ts":%d,"values":{"gps":{"lat":48.1,"lon":11.5}}}`, base+60_000)))
	apptest.Done(t, c.Publish("dev/meter/telemetry", 1, false, `{"note":"no numbers"}`))

	var s device.Series
	apptest.Eventually(t, func() error {
		a.must("telemetry", &device.QueryReq{ID: "meter", From: base, To: base + 61_000, Limit: 100}, &s)
		if len(s.Points) < 61 {
			return fmt.Errorf("%d points stored", len(s.Points))
		}
		return nil
	})
	if len(s.Points) != 61 || s.Points[0].TS != base || s.Points[59].Values["temp"] != 59 || s.Points[3].Values["door"] != 0 ||
		s.Points[60].Values["gps.lat"] != 48.1 {
		t.Fatalf("raw points: %d, first %+v, 60th %+v, last %+v", len(s.Points), s.Points[0], s.Points[59], s.Points[60])
	}
	apptest.Eventually(t, func() error { // counted just after the commit
		if st := n.dev.Stats(); st.Rejected != 1 || st.Points != 61 {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})

	// A range inside: [base+10s, base+20s) holds 10 points.
	var sub device.Series
	a.must("telemetry", &device.QueryReq{ID: "meter", From: base + 10_000, To: base + 20_000, Fields: []string{"temp"}}, &sub)
	if len(sub.Points) != 10 || sub.Points[0].Values["temp"] != 10 || len(sub.Points[0].Values) != 1 {
		t.Fatalf("sub-range: %+v", sub.Points)
	}
	// Paging by limit.
	var page device.Series
	a.must("telemetry", &device.QueryReq{ID: "meter", From: base, To: base + 60_000, Limit: 25}, &page)
	if len(page.Points) != 25 || !page.More {
		t.Fatalf("limited: %d more=%v", len(page.Points), page.More)
	}

	// Downsampled into 20 s buckets: min/max/avg per field.
	var ds device.Series
	a.must("telemetry", &device.QueryReq{ID: "meter", From: base, To: base + 60_000, Step: 20_000, Fields: []string{"temp", "hum"}}, &ds)
	if len(ds.Buckets) != 3 {
		t.Fatalf("buckets: %+v", ds.Buckets)
	}
	for i, b := range ds.Buckets {
		lo := float64(i * 20)
		want := device.Agg{Min: lo, Max: lo + 19, Avg: lo + 9.5, Count: 20}
		if b.TS != base+int64(i)*20_000 || b.Count != 20 || b.Fields["temp"] != want {
			t.Fatalf("bucket %d: %+v, want temp %+v", i, b, want)
		}
		if h := b.Fields["hum"]; h.Max != 100-lo || h.Min != 100-lo-19 {
			t.Fatalf("bucket %d hum %+v", i, h)
		}
	}

	// Latest values, with the payload as sent.
	var l device.LatestMap
	a.must("latest", &device.LatestReq{IDs: []string{"meter"}}, &l)
	if got := l.Latest["meter"]; got.TS != base+60_000 || got.Values["gps.lon"] != 11.5 || !strings.Contains(string(got.Raw), "gps") {
		t.Fatalf("latest %+v", got)
	}

	// Server-stamped points (no ts) get distinct, increasing times.
	for i := range 5 {
		apptest.Done(t, c.Publish("dev/meter/telemetry", 1, false, fmt.Sprintf(`{"temp":%d}`, 1000+i)))
	}
	apptest.Eventually(t, func() error {
		var now device.Series
		a.must("telemetry", &device.QueryReq{ID: "meter", Limit: 100}, &now)
		if len(now.Points) != 5 {
			return fmt.Errorf("%d recent points", len(now.Points))
		}
		for i, p := range now.Points {
			if p.Values["temp"] != float64(1000+i) || (i > 0 && p.TS <= now.Points[i-1].TS) {
				return errors.New("recent points out of order")
			}
		}
		return nil
	})
}

func TestTelemetryRetention(t *testing.T) {
	n := start(t, secured(t), device.Options{TelemetryMaxPoints: 10})
	a := admin(t, n, "ops")
	tok := register(t, a, "old", nil)
	c, _ := v3Device(t, n, "old", tok)
	// 30 points: 5 too old for the default 30 days, 25 recent.
	var items []string
	for i := range 30 {
		ts := int64(1_000_000_000_000) + int64(i)
		if i >= 5 {
			ts = 4_000_000_000_000 + int64(i) // far future: always within max age
		}
		items = append(items, fmt.Sprintf(`{"ts":%d,"v":%d}`, ts, i))
	}
	apptest.Done(t, c.Publish("dev/old/telemetry", 1, false, "["+strings.Join(items, ",")+"]"))
	apptest.Eventually(t, func() error {
		if n.dev.Stats().Points < 30 {
			return errors.New("not stored yet")
		}
		return nil
	})
	if err := n.dev.Sweep(apptest.Ctx(t)); err != nil {
		t.Fatal(err)
	}
	var s device.Series
	a.must("telemetry", &device.QueryReq{ID: "old", From: 1, To: 5_000_000_000_000, Limit: 100}, &s)
	// Age removed the 5 old points, size the 15 oldest of the 25 recent.
	if len(s.Points) != 10 || s.Points[0].Values["v"] != 20 || s.Points[9].Values["v"] != 29 {
		t.Fatalf("after retention %d points: %+v", len(s.Points), s.Points)
	}
}
