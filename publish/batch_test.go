package publish

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/index/indextest"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/index"
)

// journalRecords counts the segments in the store and the object records
// per key over all of them.
func journalRecords(t *testing.T, s backend.Store) (segments int, records map[string]int) {
	t.Helper()
	records = map[string]int{}
	segs := indextest.Journal(t, s)
	for _, seg := range segs {
		for _, o := range seg.Added {
			records[o.Key]++
		}
	}
	return len(segs), records
}

// TestQueueGroupCommit: with the real journal and a window longer than the
// test, uploads go on while their records wait (2 workers upload all 40
// objects), each entry stays on disk in state Uploaded until its record is
// in the store, and Drain hurries the journal: one segment for the 40.
func TestQueueGroupCommit(t *testing.T) {
	e := newEnv(t)
	j := index.NewJournal(e.store, index.JournalOptions{Writer: "w", Window: time.Hour})
	q, err := Open(Options{Dir: e.dir, Store: e.store, Recorder: j, Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	keys := make([]string, n)
	for i := range n {
		keys[i] = strings.Replace(key, "populate_sysroot", fmt.Sprint("t", i), 1)
		if err := q.Enqueue(keys[i], e.file(t, fmt.Sprint("f", i), rnd(1000))); err != nil {
			t.Fatal(err)
		}
	}
	run(t, q)
	deadline := time.Now().Add(30 * time.Second)
	for !allUploaded(q, n) {
		if time.Now().After(deadline) {
			t.Fatalf("uploads stalled while records wait: %d creates of %d", e.store.creates.Load(), n)
		}
		time.Sleep(5 * time.Millisecond) // polling the queue's state
	}
	if segs, _ := journalRecords(t, e.store); segs != 0 {
		t.Fatalf("%d segments written within the window", segs)
	}
	if ents, _ := ReadEntries(e.dir); len(ents) != n {
		t.Fatalf("%d entries on disk while their records wait, want %d", len(ents), n)
	}
	if left := drain(t, q, 20*time.Second); len(left) != 0 {
		t.Fatalf("%d entries left after the drain: their records waited for the window", len(left))
	}
	segs, recs := journalRecords(t, e.store)
	if segs != 1 {
		t.Errorf("%d segments for %d objects, want 1", segs, n)
	}
	for _, k := range keys {
		if recs[k] != 1 {
			t.Errorf("%s recorded %d times", k, recs[k])
		}
	}
	if ents, _ := ReadEntries(e.dir); len(ents) != 0 {
		t.Errorf("%d entries left on disk", len(ents))
	}
}

// allUploaded: n entries, all in the store and waiting for their record.
func allUploaded(q *Queue, n int) bool {
	ents := q.Entries()
	if len(ents) != n {
		return false
	}
	for _, e := range ents {
		if e.State != Uploaded {
			return false
		}
	}
	return true
}
