package index

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/file"
)

func TestHasObjectOfHash(t *testing.T) {
	const h = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	const other = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
	obj := func(k string) Object { return Object{Key: k, Size: 1} }
	for _, tc := range []struct {
		name string
		keys []string
		hash string
		want bool
	}{
		{"top level", []string{"01/23/sstate:zlib:core2-64-poky-linux:1.3:r0:core2-64:14:" + h + "_package.tar.zst"}, h, true},
		{"native dir", []string{"debian-12/01/23/sstate:zlib-native:x86_64-linux:1.3:r0:x86_64:14:" + h + "_populate_sysroot.tar.zst"}, h, true},
		{"other hash", []string{"fe/dc/sstate:zlib:core2-64-poky-linux:1.3:r0:core2-64:14:" + other + "_package.tar.zst"}, h, false},
		{"wrong dir", []string{"fe/dc/sstate:zlib:core2-64-poky-linux:1.3:r0:core2-64:14:" + h + "_package.tar.zst"}, h, false},
		{"not a hash", []string{"zz/12/sstate:zlib:a:1:r0:b:14:zz12_package.tar.zst"}, "zz12", false},
		{"too short", []string{"01/2/sstate:zlib:a:1:r0:b:14:012_package.tar.zst"}, "012", false},
	} {
		var objs []Object
		for _, k := range tc.keys {
			objs = append(objs, obj(k))
		}
		if got := New(objs, time.Now()).HasObjectOfHash(tc.hash); got != tc.want {
			t.Errorf("%s: HasObjectOfHash = %v, want %v", tc.name, got, tc.want)
		}
	}
	if (*Index)(nil).HasObjectOfHash(h) {
		t.Error("a nil index has objects")
	}
}

// TestInitEmpty: an empty store gets an empty, complete snapshot, loaded at
// once; a store with objects but no snapshot is left alone.
func TestInitEmpty(t *testing.T) {
	ctx := context.Background()
	s, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	live := NewLive(s, LiveOptions{Interval: time.Hour})
	InitEmpty(ctx, s, live, nil)
	if ix := live.Current(); ix == nil || !ix.Sources().Snapshot || !ix.Sources().Complete || ix.Len() != 0 {
		t.Fatalf("empty store: live index %+v", live.Current())
	}

	s2, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	key := "ab/cd/sstate:x:y:1:r0:z:14:abcd_package.tar.zst"
	if err := s2.Create(ctx, key, strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
	live2 := NewLive(s2, LiveOptions{Interval: time.Hour})
	InitEmpty(ctx, s2, live2, nil)
	if _, err := Load(ctx, s2); err == nil {
		t.Error("a store with objects got an empty snapshot")
	}
}

// triggerRig drives a compactor without sleeping: every wait it asks for
// is a channel the test fires, and it reports its decisions.
type triggerRig struct {
	waits  chan chan time.Time
	events chan compactEvent
}

func startCompactor(t *testing.T, s backend.Store, l *Live, tr CompactTriggers) *triggerRig {
	t.Helper()
	r := &triggerRig{waits: make(chan chan time.Time, 4), events: make(chan compactEvent, 16)}
	c := &compactor{store: s, live: l, t: tr,
		after: func(time.Duration) <-chan time.Time { ch := make(chan time.Time, 1); r.waits <- ch; return ch },
		rand:  func(d time.Duration) time.Duration { return d / 2 },
		hook:  func(e compactEvent) { r.events <- e }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done }) // stops before the temp dir goes
	return r
}

func (r *triggerRig) expect(t *testing.T, want compactEvent, what string) {
	t.Helper()
	select {
	case e := <-r.events:
		if e != want {
			t.Fatalf("%s: compactor decided %d, want %d", what, e, want)
		}
	case <-time.After(10 * time.Second): // a hang, not a timing
		t.Fatalf("%s: no decision from the compactor", what)
	}
}

func (r *triggerRig) fire(t *testing.T) {
	t.Helper()
	select {
	case ch := <-r.waits:
		ch <- time.Now()
	case <-time.After(10 * time.Second):
		t.Fatal("the compactor does not wait for its jitter")
	}
}

// TestCompactTriggerSegments: after each refresh the compactor checks the
// segment count; it compacts (after its jitter) when the count is reached,
// and not before.
func TestCompactTriggerSegments(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	saveN(t, s, 10, 1)
	l := NewLive(s, LiveOptions{Interval: time.Hour})
	if err := l.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	r := startCompactor(t, s, l, CompactTriggers{Segments: 5})
	r.expect(t, eventBelow, "first load")
	for i := 1; i <= 5; i++ {
		putSegment(t, s, int64(i), "w", []Object{{Key: fmt.Sprintf("x/%d", i), Size: 1}})
		if err := l.LoadOnce(ctx); err != nil {
			t.Fatal(err)
		}
		if i < 5 {
			r.expect(t, eventBelow, fmt.Sprintf("%d segments", i))
		}
	}
	if n := len(journalKeys(t, s)); n != 5 {
		t.Fatalf("%d segments before the jitter ran out, want 5", n)
	}
	r.fire(t)
	r.expect(t, eventAttempted, "5 segments")
	if n := len(journalKeys(t, s)); n != 0 {
		t.Errorf("%d segments left after the triggered compaction", n)
	}
	if err := l.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	r.expect(t, eventBelow, "after the compaction")
	if ix := l.Current(); ix.Len() != 15 || ix.Sources().Applied != 0 {
		t.Errorf("after the compaction: %d objects, %+v", ix.Len(), ix.Sources())
	}
}

// TestCompactTriggerBytes: the byte threshold counts the listed size of
// the segments on the snapshot.
func TestCompactTriggerBytes(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	saveN(t, s, 10, 1)
	k := putSegment(t, s, 1, "w", []Object{{Key: "x/1", Size: 1}})
	oi, err := s.Stat(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	l := NewLive(s, LiveOptions{Interval: time.Hour})
	if err := l.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	r := startCompactor(t, s, l, CompactTriggers{Bytes: oi.Size + 1})
	r.expect(t, eventBelow, "one segment")
	putSegment(t, s, 2, "w", []Object{{Key: "x/2", Size: 1}})
	if err := l.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	r.fire(t)
	r.expect(t, eventAttempted, "two segments")
	if n := len(journalKeys(t, s)); n != 0 {
		t.Errorf("%d segments left after the triggered compaction", n)
	}
}

// gatedStore holds the first snapshot write until gate is closed, and
// counts snapshot writes.
type gatedStore struct {
	backend.Store
	gate chan struct{}
	mu   sync.Mutex
	puts int
}

func (g *gatedStore) Put(ctx context.Context, key string, rd io.Reader, size int64) error {
	if key == SnapshotKey {
		g.mu.Lock()
		g.puts++
		first := g.puts == 1
		g.mu.Unlock()
		if first {
			<-g.gate
		}
	}
	return g.Store.Put(ctx, key, rd, size)
}

// TestCompactTriggerRace: two mounts reach the threshold together; while
// one compacts, the other's attempt finds the lock taken, and one snapshot
// is written.
func TestCompactTriggerRace(t *testing.T) {
	ctx := context.Background()
	fs := newStore(t)
	saveN(t, fs, 10, 1)
	for i := 1; i <= 3; i++ {
		putSegment(t, fs, int64(i), "w", []Object{{Key: fmt.Sprintf("x/%d", i), Size: 1}})
	}
	s := &gatedStore{Store: fs, gate: make(chan struct{})}
	var rigs []*triggerRig
	for range 2 {
		l := NewLive(s, LiveOptions{Interval: time.Hour})
		if err := l.LoadOnce(ctx); err != nil {
			t.Fatal(err)
		}
		rigs = append(rigs, startCompactor(t, s, l, CompactTriggers{Segments: 3}))
	}
	for _, r := range rigs {
		r.fire(t)
	}
	// One compaction waits in its snapshot write; the other must give up.
	got := make(chan compactEvent, 2)
	for _, r := range rigs {
		go func() { got <- <-r.events }()
	}
	select {
	case e := <-got:
		if e != eventAttempted {
			t.Fatalf("decision %d, want an attempt", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("neither compactor finished its attempt")
	}
	close(s.gate)
	if e := <-got; e != eventAttempted {
		t.Fatalf("decision %d, want an attempt", e)
	}
	if s.puts != 1 {
		t.Errorf("%d snapshots written by two racing mounts, want 1", s.puts)
	}
	if n := len(journalKeys(t, fs)); n != 0 {
		t.Errorf("%d segments left", n)
	}
}

// failingPuts refuses snapshot writes.
type failingPuts struct{ backend.Store }

func (f failingPuts) Put(ctx context.Context, key string, rd io.Reader, size int64) error {
	return fmt.Errorf("put %s: %w", key, backend.ErrReadOnly)
}

// TestCompactTriggerPausesAfterFailure: a triggered compaction that fails
// is not retried at every refresh, only after the timer.
func TestCompactTriggerPausesAfterFailure(t *testing.T) {
	ctx := context.Background()
	fs := newStore(t)
	saveN(t, fs, 10, 1)
	putSegment(t, fs, 1, "w", []Object{{Key: "x/1", Size: 1}})
	s := failingPuts{fs}
	l := NewLive(s, LiveOptions{Interval: time.Hour})
	if err := l.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	r := startCompactor(t, s, l, CompactTriggers{Every: time.Hour, Segments: 1})
	timer := <-r.waits
	r.fire(t) // the jitter
	r.expect(t, eventAttempted, "first attempt")
	if err := l.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	r.expect(t, eventPaused, "refresh after a failed attempt")
	// The timer (which itself folds only 64 segments or more) ends the
	// pause: the next refresh tries again.
	timer <- time.Now()
	<-r.waits // the next timer
	if err := l.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	r.fire(t)
	r.expect(t, eventAttempted, "refresh after the timer")
}
