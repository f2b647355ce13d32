package device

import (
	"encoding/binary"
	"fmt"

	"github.com/colonymq/colony/store"
)

// stores holds the module's buckets (mod/device/*). Keys join their parts
// with 0x00, which names (validName) never contain; times in keys are 8
// bytes big-endian Unix milliseconds, so key order is time order.
type stores struct {
	db      *store.DB
	devices *store.Bucket[deviceRecord] // id -> device with credentials
	claims  *store.Bucket[claimRecord]  // name -> fleet claim
	status  *store.Bucket[Status]       // id -> online, last seen
	points  *store.Bucket[Values]       // id 0 ts -> telemetry values
	latest  *store.Bucket[Latest]       // id -> latest telemetry
	counts  *store.Bucket[int64]        // id -> points written (retention by size)
	shadows *store.Bucket[shadowRecord] // id 0 name -> shadow document
	cmds    *store.Bucket[Command]      // request id -> command and its outcome
	queue   *store.Bucket[int64]        // id 0 created 0 request id -> expiry (Unix ms)
	jobs    *store.Bucket[Job]          // job id -> job
	execs   *store.Bucket[JobExecution] // job id 0 device id -> execution
}

func openStores(db *store.DB, module string) (*stores, error) {
	s := &stores{db: db}
	var err error
	open := func(name string, f func() error) {
		if err == nil {
			if e := f(); e != nil {
				err = fmt.Errorf("open bucket %s: %w", name, e)
			}
		}
	}
	open("devices", func() (e error) { s.devices, e = store.NewBucket[deviceRecord](db, module, "devices"); return })
	open("claims", func() (e error) { s.claims, e = store.NewBucket[claimRecord](db, module, "claims"); return })
	open("status", func() (e error) { s.status, e = store.NewBucket[Status](db, module, "status"); return })
	open("points", func() (e error) { s.points, e = store.NewBucket[Values](db, module, "points"); return })
	open("latest", func() (e error) { s.latest, e = store.NewBucket[Latest](db, module, "latest"); return })
	open("counts", func() (e error) { s.counts, e = store.NewBucket[int64](db, module, "counts"); return })
	open("shadows", func() (e error) { s.shadows, e = store.NewBucket[shadowRecord](db, module, "shadows"); return })
	open("cmds", func() (e error) { s.cmds, e = store.NewBucket[Command](db, module, "cmds"); return })
	open("queue", func() (e error) { s.queue, e = store.NewBucket[int64](db, module, "queue"); return })
	open("jobs", func() (e error) { s.jobs, e = store.NewBucket[Job](db, module, "jobs"); return })
	open("execs", func() (e error) { s.execs, e = store.NewBucket[JobExecution](db, module, "execs"); return })
	return s, err
}

const sep = "\x00"

func tsKey(ms int64) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(ms))
	return string(b[:])
}

func keyTS(k string) int64 {
	if len(k) < 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64([]byte(k[len(k)-8:])))
}

func pointKey(id string, ms int64) string { return id + sep + tsKey(ms) }
