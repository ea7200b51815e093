package index

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

// logRecorder keeps "LEVEL message" of each record.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, rec.Level.String()+" "+rec.Message)
	return nil
}

func (r *logRecorder) count(prefix string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if strings.HasPrefix(m, prefix) {
			n++
		}
	}
	return n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func saveN(t *testing.T, s backend.Store, n int, seed uint64) *Index {
	t.Helper()
	ix := New(randomObjects(synthKeys(t, n, seed), seed), time.Now())
	if err := Save(context.Background(), s, ix); err != nil {
		t.Fatal(err)
	}
	return ix
}

func TestLiveFreshness(t *testing.T) {
	ctx := context.Background()
	s := newCounting(newStore(t))
	a := saveN(t, s, 10, 1)
	clk := testutil.NewClock(time.Unix(1_750_000_000, 0))
	l := NewLive(s, LiveOptions{Interval: time.Minute, MaxAge: 5 * time.Minute, Now: clk.Now})
	if l.Current() != nil || l.Fresh() || !l.LastLoad().IsZero() {
		t.Fatal("a new Live has an index")
	}
	if err := l.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if l.Current().Len() != a.Len() || !l.Fresh() || !l.LastLoad().Equal(clk.Now()) {
		t.Fatalf("after LoadOnce: %d objects, fresh %v, last load %v", l.Current().Len(), l.Fresh(), l.LastLoad())
	}
	loaded := clk.Now()
	clk.Add(5*time.Minute - time.Nanosecond)
	if !l.Fresh() {
		t.Error("stale before MaxAge")
	}
	clk.Add(time.Nanosecond)
	if l.Fresh() || l.Current() == nil {
		t.Error("fresh after MaxAge, or the stale index was dropped")
	}

	// Refreshing an unchanged snapshot: a Stat, no download, fresh again.
	stats := s.Stats()
	if err := l.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if n := s.Opens(SnapshotKey); n != 1 {
		t.Errorf("snapshot opened %d times, want 1: it did not change", n)
	}
	if s.Stats() != stats+1 || !l.Fresh() || !l.LastLoad().Equal(loaded.Add(5*time.Minute)) {
		t.Errorf("unchanged refresh: %d stats, fresh %v, last load %v", s.Stats()-stats, l.Fresh(), l.LastLoad())
	}

	// A new snapshot is picked up.
	b := saveN(t, s, 20, 2)
	if err := l.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if n := s.Opens(SnapshotKey); n != 2 || l.Current().Len() != b.Len() {
		t.Errorf("after a new snapshot: %d opens, %d objects; want 2, %d", n, l.Current().Len(), b.Len())
	}
	if _, ok := l.Current().Lookup(collect(b)[7].Key); !ok {
		t.Error("new snapshot's object missing")
	}
}

func TestLiveDefaults(t *testing.T) {
	clk := testutil.NewClock(time.Unix(1_750_000_000, 0))
	s := newStore(t)
	saveN(t, s, 1, 1)
	l := NewLive(s, LiveOptions{Now: clk.Now})
	if err := l.LoadOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	clk.Add(90*time.Second - 1)
	if !l.Fresh() {
		t.Error("stale before the default MaxAge, 3 x 30 s")
	}
	clk.Add(1)
	if l.Fresh() {
		t.Error("fresh after the default MaxAge")
	}
}

func TestLiveNoIndex(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	clk := testutil.NewClock(time.Unix(1_750_000_000, 0))
	l := NewLive(s, LiveOptions{Interval: time.Minute, Now: clk.Now})
	if err := l.LoadOnce(ctx); !errors.Is(err, ErrNoIndex) || l.Current() != nil || l.Fresh() {
		t.Fatalf("LoadOnce on a store without index = %v, current %v, fresh %v", err, l.Current(), l.Fresh())
	}
	a := saveN(t, s, 5, 1)
	if err := l.LoadOnce(ctx); err != nil || l.Current().Len() != a.Len() {
		t.Fatalf("LoadOnce = %v", err)
	}
	// The snapshot disappears: the old index stays until it is stale.
	if err := s.Delete(ctx, SnapshotKey); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Minute)
	if err := l.LoadOnce(ctx); !errors.Is(err, ErrNoIndex) {
		t.Fatalf("LoadOnce = %v, want ErrNoIndex", err)
	}
	if l.Current().Len() != a.Len() || !l.Fresh() {
		t.Error("previous index dropped early")
	}
	clk.Add(2 * time.Minute)
	if l.Fresh() {
		t.Error("fresh 3 minutes after the last successful load")
	}
}

// secondsStore reports modification times in whole seconds, like S3.
type secondsStore struct{ *countingStore }

func (s secondsStore) Stat(ctx context.Context, key string) (backend.ObjectInfo, error) {
	oi, err := s.countingStore.Stat(ctx, key)
	oi.ModTime = oi.ModTime.Truncate(time.Second)
	return oi, err
}

func TestLiveWholeSecondMtime(t *testing.T) {
	ctx := context.Background()
	cs := newCounting(newStore(t))
	saveN(t, cs, 5, 1)
	l := NewLive(secondsStore{cs}, LiveOptions{})
	// Another snapshot of the same size could have been written in the
	// same second: the first unchanged refresh reads it once more, later
	// ones do not.
	for i, want := range []int{1, 2, 2, 2} {
		if err := l.LoadOnce(ctx); err != nil {
			t.Fatal(err)
		}
		if n := cs.Opens(SnapshotKey); n != want {
			t.Errorf("refresh %d: %d downloads, want %d", i, n, want)
		}
	}
}

func TestLiveRun(t *testing.T) {
	s := newCounting(newStore(t))
	saveN(t, s, 10, 1)
	rec := &logRecorder{}
	l := NewLive(s, LiveOptions{Interval: 2 * time.Millisecond, Logger: slog.New(rec)})
	if err := l.LoadOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { l.Run(ctx) })
	// Readers meanwhile, for the race detector.
	var stop atomic.Bool
	for range 4 {
		wg.Go(func() {
			for !stop.Load() {
				ix := l.Current()
				ix.Lookup("x")
				ix.Children("")
				l.Fresh()
				l.LastLoad()
			}
		})
	}
	t.Cleanup(func() { stop.Store(true); cancel(); wg.Wait() }) // also when the test stops early
	waitFor(t, "unchanged refreshes", func() bool { return s.Stats() > 5 })
	if n := s.Opens(SnapshotKey); n != 1 {
		t.Errorf("unchanged snapshot downloaded %d times", n)
	}
	b := saveN(t, s, 30, 2)
	waitFor(t, "the new snapshot", func() bool { return l.Current().Len() == b.Len() })
	stop.Store(true)
	cancel()
	wg.Wait()
	if n := rec.count("WARN"); n != 0 {
		t.Errorf("%d warnings: %q", n, rec.msgs)
	}
}

// flakyStore fails Stat while failing is set.
type flakyStore struct {
	*countingStore
	failing atomic.Bool
}

func (f *flakyStore) Stat(ctx context.Context, key string) (backend.ObjectInfo, error) {
	oi, err := f.countingStore.Stat(ctx, key)
	if f.failing.Load() {
		return backend.ObjectInfo{}, errors.New("connection refused")
	}
	return oi, err
}

func TestLiveRunLogsChangesOnly(t *testing.T) {
	fs := newStore(t)
	s := &flakyStore{countingStore: newCounting(fs)}
	saveN(t, s, 3, 1)
	rec := &logRecorder{}
	l := NewLive(s, LiveOptions{Interval: time.Millisecond, Logger: slog.New(rec)})
	if err := l.LoadOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done }) // also when the test stops early
	ticks := func(n int) {
		start := s.Stats()
		waitFor(t, "refreshes", func() bool { return s.Stats() >= start+n })
	}

	s.failing.Store(true)
	ticks(20)
	if n := rec.count("WARN index refresh failed"); n != 1 {
		t.Errorf("%d failure warnings over 20 failing refreshes, want 1: %q", n, rec.msgs)
	}
	if l.Current() == nil {
		t.Error("failing refresh dropped the index")
	}
	s.failing.Store(false)
	ticks(20)
	if n := rec.count("INFO index refresh recovered"); n != 1 {
		t.Errorf("%d recovery messages, want 1: %q", n, rec.msgs)
	}
	if err := fs.Delete(context.Background(), SnapshotKey); err != nil {
		t.Fatal(err)
	}
	ticks(20)
	if n := rec.count("WARN store has no index"); n != 1 {
		t.Errorf("%d no-index warnings, want 1: %q", n, rec.msgs)
	}
	cancel()
	<-done
	if n := rec.count("WARN"); n != 2 {
		t.Errorf("%d warnings in all, want 2: %q", n, rec.msgs)
	}
}

func TestLiveJournal(t *testing.T) {
	ctx := context.Background()
	s := newCounting(newStore(t))
	saveN(t, s, 10, 1)
	k1 := putSegment(t, s, 1, "a", []Object{{Key: "x/1", Size: 1}})
	k2 := putSegment(t, s, 2, "b", []Object{{Key: "x/2", Size: 2}})
	rec := &logRecorder{}
	l := NewLive(s, LiveOptions{Logger: slog.New(rec)})
	if err := l.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if n := l.Current().Len(); n != 12 || !l.Fresh() {
		t.Fatalf("%d objects, fresh %v", n, l.Fresh())
	}
	// Refreshes download only new segments, and the snapshot only when it
	// changed.
	k3 := putSegment(t, s, 3, "a", []Object{{Key: "x/3", Size: 3}})
	bad := segmentKey(4, "evil")
	putRaw(t, s, bad, []byte("garbage"))
	for range 3 {
		if err := l.LoadOnce(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if l.Current().Len() != 13 {
		t.Errorf("%d objects after a new segment", l.Current().Len())
	}
	for key, want := range map[string]int{SnapshotKey: 1, k1: 1, k2: 1, k3: 1, bad: 1} {
		if n := s.Opens(key); n != want {
			t.Errorf("%s opened %d times, want %d", key, n, want)
		}
	}
	if n := rec.count("WARN index journal segment skipped"); n != 1 {
		t.Errorf("corrupt segment logged %d times, want once: %q", n, rec.msgs)
	}
	if sk := l.Current().Sources().Skipped; len(sk) != 1 || !strings.Contains(sk[0].Error(), bad) {
		t.Errorf("skipped %v", sk)
	}

	// A compaction folds the segments into a new snapshot: read once,
	// and the segments it covers are forgotten.
	if _, err := Compact(ctx, s, CompactOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := l.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if n := s.Opens(SnapshotKey); n != 3 || l.Current().Len() != 13 || l.Current().Sources().Applied != 0 {
		t.Errorf("after compaction: %d snapshot downloads (want 3: Live, Compact, Live), %d objects, %+v", n, l.Current().Len(), l.Current().Sources())
	}
	l.mu.Lock()
	cached := len(l.loader.cache)
	l.mu.Unlock()
	if cached != 1 { // the corrupt one, still there
		t.Errorf("%d segments cached after compaction", cached)
	}
}

func TestLiveApply(t *testing.T) {
	ctx := context.Background()
	s := newCounting(newStore(t))
	l := NewLive(s, LiveOptions{})
	j := NewJournal(s, JournalOptions{Writer: "me"})
	j.OnWrite(l.Apply)

	// No index yet: Apply waits for the next load, which includes the
	// segment; a journal-only index answers hits, not misses.
	if err := j.Added(ctx, Object{Key: "a/1", Size: 1}); err != nil {
		t.Fatal(err)
	}
	if l.Current() != nil {
		t.Fatal("Apply made an index out of nothing")
	}
	if err := l.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Current().Lookup("a/1"); !ok || l.Fresh() {
		t.Errorf("journal-only index: found %v, fresh %v (want not fresh: it is not complete)", ok, l.Fresh())
	}

	saveN(t, s, 5, 1)
	if err := l.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if !l.Fresh() || l.Current().Len() != 6 {
		t.Fatalf("with a snapshot: fresh %v, %d objects", l.Fresh(), l.Current().Len())
	}
	// What this process records is visible at once, without a refresh...
	opens := s.TotalOpens()
	if err := j.Added(ctx, Object{Key: "a/2", Size: 2}); err != nil {
		t.Fatal(err)
	}
	j.Accessed("a/1", time.Unix(1_750_000_000, 0))
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Current().Lookup("a/2"); !ok || s.TotalOpens() != opens {
		t.Errorf("a/2 visible %v, %d downloads", ok, s.TotalOpens()-opens)
	}
	if o, _ := l.Current().Lookup("a/1"); !o.Accessed.Equal(time.Unix(1_750_000_000, 0)) {
		t.Errorf("access time %v", o.Accessed)
	}
	// ...and refreshes keep it without downloading it.
	for range 2 {
		if err := l.LoadOnce(ctx); err != nil {
			t.Fatal(err)
		}
		if _, ok := l.Current().Lookup("a/2"); !ok || l.Current().Len() != 7 {
			t.Fatal("refresh lost the applied segment")
		}
	}
	for _, key := range journalKeys(t, s) {
		if key != journalKeys(t, s)[0] && s.Opens(key) != 0 {
			t.Errorf("own segment %s downloaded", key)
		}
	}
	l.localMu.Lock()
	left := len(l.local)
	l.localMu.Unlock()
	if left != 0 {
		t.Errorf("%d local segments kept after they were listed", left)
	}
	// Apply ignores what is not a segment.
	l.Apply(Segment{Key: "x", Added: []Object{{Key: "b/1"}}})
	if _, ok := l.Current().Lookup("b/1"); ok {
		t.Error("applied a segment without a segment key")
	}
}

// TestLiveRefreshListsWhatChanged: Run's refreshes list only the journal
// keys named since the last listing (less SkewMargin), so their cost grows
// with what changed; a writer whose clock lags by more than the margin is
// found by the whole listing made every FullListEvery, and not later.
func TestLiveRefreshListsWhatChanged(t *testing.T) {
	ctx := context.Background()
	s := newCounting(newStore(t))
	saveN(t, s, 10, 1)
	clk := testutil.NewClock(time.Unix(1_750_000_000, 0))
	const skew, whole = 2 * time.Minute, 10 * time.Minute
	l := NewLive(s, LiveOptions{Interval: time.Minute, Now: clk.Now, SkewMargin: skew, FullListEvery: whole})
	// History: 50 segments from an hour ago.
	for i := range 50 {
		putSegment(t, s, clk.Now().Add(-time.Hour).UnixNano()+int64(i), "old", []Object{{Key: fmt.Sprintf("old/%d", i), Size: 1}})
	}
	if err := l.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if lists, n := s.Listings(); len(lists) != 1 || lists[0] != "" || n != 50 {
		t.Fatalf("first load: listings %q returning %d keys, want one whole listing of 50", lists, n)
	}
	has := func(key string) bool { _, ok := l.Current().Lookup(key); return ok }

	// A minute later: a writer on time and one whose clock lags by a
	// minute and a half (within the margin) are listed; one lagging by five minutes
	// is not yet.
	clk.Add(time.Minute)
	putSegment(t, s, clk.Now().UnixNano(), "ontime", []Object{{Key: "new/ontime", Size: 1}})
	putSegment(t, s, clk.Now().Add(-90*time.Second).UnixNano(), "slow", []Object{{Key: "new/slow", Size: 1}})
	putSegment(t, s, clk.Now().Add(-5*time.Minute).UnixNano(), "lagging", []Object{{Key: "new/lagging", Size: 1}})
	l.tick(ctx)
	if lists, n := s.Listings(); len(lists) != 1 || lists[0] == "" || n != 2 {
		t.Errorf("refresh: listings %q returning %d keys, want one listing after a key returning 2", lists, n)
	}
	if !has("new/ontime") || !has("new/slow") || !l.Fresh() {
		t.Errorf("refresh missed a segment within the margin (fresh %v)", l.Fresh())
	}
	// Refreshes until FullListEvery after the first load miss the lagging
	// writer's segment; none lists more than the last minutes.
	for clk.Now().Sub(time.Unix(1_750_000_000, 0)) < whole-time.Minute {
		clk.Add(time.Minute)
		l.tick(ctx)
		if lists, n := s.Listings(); len(lists) != 1 || lists[0] == "" || n > 2 {
			t.Errorf("refresh at %v: listings %q returning %d keys, want one listing after a key returning at most 2",
				clk.Now().Sub(time.Unix(1_750_000_000, 0)), lists, n)
		}
		if has("new/lagging") {
			t.Fatalf("a segment named before the listing's start was found by a listing after it")
		}
	}
	clk.Add(time.Minute)
	l.tick(ctx)
	if lists, n := s.Listings(); len(lists) != 1 || lists[0] != "" || n != 53 {
		t.Errorf("refresh after %v: listings %q returning %d keys, want one whole listing of 53", whole, lists, n)
	}
	if !has("new/lagging") {
		t.Errorf("the lagging writer's segment is still missing after a whole listing")
	}
	if all, err := LoadAll(ctx, s); err != nil || all.Len() != l.Current().Len() {
		t.Errorf("Live has %d objects, LoadAll %d (%v)", l.Current().Len(), all.Len(), err)
	}
	// A compaction deletes the segments: the next refresh after a key
	// reads the new snapshot and applies nothing.
	if _, err := Compact(ctx, s, CompactOptions{}); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Minute)
	l.tick(ctx)
	if src := l.Current().Sources(); src.Applied != 0 || l.Current().Len() != 63 || !has("new/lagging") {
		t.Errorf("after compaction: %d objects, %+v", l.Current().Len(), src)
	}
}

// TestLiveApplySlowUpload: a segment this process wrote and applied, whose
// upload took longer than SkewMargin (its key is older than the next
// listing's start), stays in the index until a listing finds it.
func TestLiveApplySlowUpload(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	saveN(t, s, 10, 1)
	clk := testutil.NewClock(time.Unix(1_750_000_000, 0))
	l := NewLive(s, LiveOptions{Interval: time.Minute, Now: clk.Now, SkewMargin: 2 * time.Minute, FullListEvery: 10 * time.Minute})
	if err := l.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	clk.Add(5 * time.Minute)
	l.tick(ctx)
	// Named three minutes ago, uploaded and applied now.
	ns := clk.Now().Add(-3 * time.Minute).UnixNano()
	key := putSegment(t, s, ns, "me", []Object{{Key: "mine/1", Size: 1}})
	l.Apply(Segment{Key: key, Writer: "me", Time: time.Unix(0, ns), Added: []Object{{Key: "mine/1", Size: 1}}})
	for i := range 4 {
		clk.Add(time.Minute)
		l.tick(ctx)
		if _, ok := l.Current().Lookup("mine/1"); !ok {
			t.Fatalf("refresh %d after Apply lost a segment this process wrote", i+1)
		}
	}
	clk.Add(time.Minute) // ten minutes after the whole listing of LoadOnce
	l.tick(ctx)
	if _, ok := l.Current().Lookup("mine/1"); !ok {
		t.Fatal("the whole listing lost the segment")
	}
	l.localMu.Lock()
	n := len(l.local)
	l.localMu.Unlock()
	if n != 0 {
		t.Errorf("%d local segments kept after a listing found them", n)
	}
}
