package device

import (
	"encoding/binary"

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
	o := &store.Opener{DB: db, Module: module}
	s.devices = store.OpenBucket[deviceRecord](o, "devices")
	s.claims = store.OpenBucket[claimRecord](o, "claims")
	s.status = store.OpenBucket[Status](o, "status")
	s.points = store.OpenBucket[Values](o, "points")
	s.latest = store.OpenBucket[Latest](o, "latest")
	s.counts = store.OpenBucket[int64](o, "counts")
	s.shadows = store.OpenBucket[shadowRecord](o, "shadows")
	s.cmds = store.OpenBucket[Command](o, "cmds")
	s.queue = store.OpenBucket[int64](o, "queue")
	s.jobs = store.OpenBucket[Job](o, "jobs")
	s.execs = store.OpenBucket[JobExecution](o, "execs")
	return s, o.Err
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
