package index

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend"
)

func journalKeys(t *testing.T, s backend.Store) []string {
	t.Helper()
	var out []string
	if err := s.List(context.Background(), JournalPrefix, func(oi backend.ObjectInfo) error {
		out = append(out, oi.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func exists(t *testing.T, s backend.Store, key string) bool {
	t.Helper()
	_, err := s.Stat(context.Background(), key)
	if err != nil && !errors.Is(err, backend.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

func TestCompact(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	if err := Save(ctx, s, New([]Object{{Key: "a/0", Size: 1}}, time.Unix(1, 0))); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 4; i++ {
		putSegment(t, s, int64(i), "w", []Object{{Key: fmt.Sprint("a/", i), Size: int64(i)}},
			Access{"a/0", time.Unix(1_750_000_000+int64(i), 0)})
	}
	bad := segmentKey(5, "w")
	putRaw(t, s, bad, []byte("garbage"))
	before, err := LoadAll(ctx, s)
	if err != nil {
		t.Fatal(err)
	}

	// A long grace: folded, but kept.
	res, err := Compact(ctx, s, CompactOptions{Grace: time.Hour, Writer: "compactor"})
	if err != nil {
		t.Fatal(err)
	}
	want := CompactResult{Folded: 4, Kept: 4, Skipped: 1, Objects: 5, Wrote: true}
	if res != want {
		t.Errorf("Compact = %+v, want %+v", res, want)
	}
	snap, err := LoadSnapshot(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Sources().Covered != 4 || !snap.Sources().Complete {
		t.Errorf("snapshot sources %+v", snap.Sources())
	}
	if o, _ := snap.Lookup("a/0"); !o.Accessed.Equal(time.Unix(1_750_000_004, 0)) {
		t.Errorf("access time %v folded", o.Accessed)
	}
	after, err := LoadAll(ctx, s)
	if err != nil || !equalObjects(after, before) || after.Sources().Applied != 0 {
		t.Fatalf("after compaction: %v, sources %+v", err, after.Sources())
	}
	if exists(t, s, CompactLockKey) {
		t.Error("lock left behind")
	}

	// Nothing new to fold: no snapshot written; with no grace, the
	// covered segments go, the unreadable one stays.
	res, err = Compact(ctx, s, CompactOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := (CompactResult{Deleted: 4, Skipped: 1, Objects: 5}); res != want {
		t.Errorf("second Compact = %+v, want %+v", res, want)
	}
	if keys := journalKeys(t, s); len(keys) != 1 || keys[0] != bad {
		t.Errorf("journal %v, want only the unreadable segment", keys)
	}
	if after, err := LoadAll(ctx, s); err != nil || !equalObjects(after, before) {
		t.Errorf("after deleting: %v", err)
	}

	// A store with segments only: the first snapshot, not complete.
	js := newStore(t)
	putSegment(t, js, 1, "w", []Object{{Key: "b/1", Size: 1}})
	if res, err := Compact(ctx, js, CompactOptions{}); err != nil || res.Folded != 1 || res.Deleted != 1 {
		t.Fatalf("Compact of a journal-only store = %+v, %v", res, err)
	}
	if snap, err := LoadSnapshot(ctx, js); err != nil || snap.Len() != 1 || snap.Sources().Complete {
		t.Errorf("first snapshot: %v, sources %+v", err, snap.Sources())
	}
	// And an empty store: nothing to do.
	if res, err := Compact(ctx, newStore(t), CompactOptions{}); err != nil || res != (CompactResult{}) {
		t.Errorf("Compact of an empty store = %+v, %v", res, err)
	}
}

func equalObjects(a, b *Index) bool {
	ca, cb := collect(a), collect(b)
	if len(ca) != len(cb) {
		return false
	}
	for i := range ca {
		if ca[i].Key != cb[i].Key || ca[i].Size != cb[i].Size || ca[i].SHA256 != cb[i].SHA256 ||
			!ca[i].ModTime.Equal(cb[i].ModTime) || !ca[i].Accessed.Equal(cb[i].Accessed) {
			return false
		}
	}
	return true
}

// gateStore holds the first listing of the journal until release closes.
type gateStore struct {
	backend.Store
	entered, release chan struct{}
	once             sync.Once
}

func (g *gateStore) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	if prefix == JournalPrefix {
		g.once.Do(func() { close(g.entered); <-g.release })
	}
	return g.Store.List(ctx, prefix, fn)
}

// compactors runs two compactors of s on wg until ctx is done, counting
// the compactions that finish in done and those that find the lock taken
// in busy; any other error before ctx is done fails the test.
func compactors(t *testing.T, ctx context.Context, wg *sync.WaitGroup, s backend.Store, done, busy *atomic.Int64) {
	for range 2 {
		wg.Go(func() {
			for ctx.Err() == nil {
				_, err := Compact(ctx, s, CompactOptions{})
				switch {
				case err == nil:
					done.Add(1)
				case errors.Is(err, ErrCompactionRunning):
					busy.Add(1)
				case ctx.Err() == nil:
					t.Errorf("Compact: %v", err)
				}
			}
		})
	}
}

// heldCompact puts a segment in fs and starts a Compact with opt, which
// takes the lock and then waits, listing the journal, until g.release is
// closed; its error comes on the channel.
func heldCompact(t *testing.T, fs backend.Store, opt CompactOptions) (*gateStore, <-chan error) {
	t.Helper()
	putSegment(t, fs, 1, "w", []Object{{Key: "a/1", Size: 1}})
	g := &gateStore{Store: fs, entered: make(chan struct{}), release: make(chan struct{})}
	done := make(chan error)
	go func() {
		_, err := Compact(context.Background(), g, opt)
		done <- err
	}()
	<-g.entered
	return g, done
}

func TestCompactLock(t *testing.T) {
	ctx := context.Background()
	fs := newStore(t)
	g, first := heldCompact(t, fs, CompactOptions{Writer: "Host A"})
	_, err := Compact(ctx, fs, CompactOptions{Writer: "host-b"})
	if !errors.Is(err, ErrCompactionRunning) || !strings.Contains(err.Error(), `held by "host-a"`) ||
		!strings.Contains(err.Error(), CompactLockKey) {
		t.Errorf("second Compact = %v, want ErrCompactionRunning naming the holder", err)
	}
	close(g.release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if exists(t, fs, CompactLockKey) {
		t.Error("lock left behind")
	}

	// An expired lock (its holder crashed) is broken.
	rec := &logRecorder{}
	writeLock := func(c lockContent) {
		b, _ := json.Marshal(c)
		putRaw(t, fs, CompactLockKey, b)
	}
	writeLock(lockContent{Holder: "dead", Token: "x", Expires: time.Now().Add(-time.Minute)})
	if _, err := Compact(ctx, fs, CompactOptions{Logger: slog.New(rec)}); err != nil {
		t.Errorf("Compact over an expired lock: %v", err)
	}
	if rec.count("WARN index compaction: breaking an expired lock") != 1 || exists(t, fs, CompactLockKey) {
		t.Errorf("logs %q", rec.msgs)
	}
	// A live one is not.
	writeLock(lockContent{Holder: "alive", Token: "y", Expires: time.Now().Add(time.Minute)})
	if _, err := Compact(ctx, fs, CompactOptions{}); !errors.Is(err, ErrCompactionRunning) || !strings.Contains(err.Error(), `"alive"`) {
		t.Errorf("Compact over a live lock = %v", err)
	}
	// An unreadable lock expires LockTTL after it was written.
	putRaw(t, fs, CompactLockKey, []byte("{garbage"))
	if _, err := Compact(ctx, fs, CompactOptions{LockTTL: time.Hour}); !errors.Is(err, ErrCompactionRunning) {
		t.Errorf("Compact over a fresh unreadable lock = %v", err)
	}
	later := func() time.Time { return time.Now().Add(2 * time.Hour) }
	if _, err := Compact(ctx, fs, CompactOptions{LockTTL: time.Hour, Now: later}); err != nil {
		t.Errorf("Compact over an old unreadable lock = %v", err)
	}
}

// TestCompactLostLock: a compaction whose lock was broken (it ran past
// its expiry) does not write its snapshot.
func TestCompactLostLock(t *testing.T) {
	fs := newStore(t)
	g, done := heldCompact(t, fs, CompactOptions{})
	b, _ := json.Marshal(lockContent{Holder: "thief", Token: "z", Expires: time.Now().Add(time.Hour)})
	putRaw(t, fs, CompactLockKey, b)
	close(g.release)
	if err := <-done; err == nil || !strings.Contains(err.Error(), `lost the lock`) {
		t.Errorf("Compact = %v, want lost lock", err)
	}
	if exists(t, fs, SnapshotKey) {
		t.Error("snapshot written without the lock")
	}
	if !exists(t, fs, CompactLockKey) {
		t.Error("the other holder's lock was released")
	}
}

// TestFourWriters: four journals (four hosts) publish overlapping objects
// into one store at once and record accesses, while two compactors fold
// and delete segments with no grace and readers load the index; nothing is
// lost and every object is listed once with its size and digest.
func TestFourWriters(t *testing.T) {
	ctx := context.Background()
	fs := newStore(t)
	const (
		writers = 4
		perHost = 60
		step    = 20 // writer w publishes objects w*step .. w*step+perHost-1
	)
	content := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, i%7*100+i) }
	key := func(i int) string {
		return fmt.Sprintf("debian-12/%02x/%02x/sstate:obj%d:_populate_sysroot.tar.zst", i, i*7%256, i)
	}
	total := (writers-1)*step + perHost

	var (
		accessMu  sync.Mutex
		lastAt    = map[string]time.Time{} // the latest access recorded per key
		published []string                 // keys whose Added returned
		clock     atomic.Int64
	)
	clock.Store(1_750_000_000)
	live := NewLive(fs, LiveOptions{})
	journals := make([]*Journal, writers)
	for w := range journals {
		journals[w] = NewJournal(fs, JournalOptions{Writer: fmt.Sprint("host", w), FlushInterval: 3 * time.Millisecond, MaxBatch: 7})
	}
	journals[0].OnWrite(live.Apply)

	bg, stop := context.WithCancel(ctx)
	var bgWG sync.WaitGroup
	var compactions, busy, readerRetries atomic.Int64
	compactors(t, bg, &bgWG, fs, &compactions, &busy)
	// Readers: every index they see is consistent. With no grace period,
	// a load may give up when segments vanish three times in a row.
	check := func(ix *Index) {
		for o := range ix.Objects {
			var i int
			fmt.Sscanf(o.Key[strings.Index(o.Key, "obj")+3:], "%d", &i)
			if o.Key != key(i) || o.Size != int64(len(content(i))) || o.SHA256 != sha256.Sum256(content(i)) {
				t.Errorf("bad entry %+v", o)
			}
		}
	}
	bgWG.Go(func() {
		for bg.Err() == nil {
			ix, err := LoadAll(bg, fs)
			switch {
			case err == nil:
				check(ix)
			case errors.Is(err, errVanished):
				readerRetries.Add(1)
			case !errors.Is(err, ErrNoIndex) && bg.Err() == nil:
				t.Errorf("LoadAll: %v", err)
			}
		}
	})
	bgWG.Go(func() {
		for bg.Err() == nil {
			if err := live.LoadOnce(bg); err == nil {
				check(live.Current())
			} else if !errors.Is(err, ErrNoIndex) && !errors.Is(err, errVanished) && bg.Err() == nil {
				t.Errorf("Live: %v", err)
			}
		}
	})
	for _, j := range journals {
		bgWG.Go(func() { j.Run(bg) })
	}

	var wg sync.WaitGroup
	for w, j := range journals {
		for worker := range 3 { // like the upload queue's workers
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(w), uint64(worker)))
				for i := w*step + worker; i < w*step+perHost; i += 3 {
					b := content(i)
					err := fs.Create(ctx, key(i), bytes.NewReader(b), int64(len(b)))
					if err != nil && !errors.Is(err, backend.ErrExist) {
						t.Error(err)
						return
					}
					oi, err := fs.Stat(ctx, key(i))
					if err != nil {
						t.Error(err)
						return
					}
					o := Object{Key: key(i), Size: oi.Size, ModTime: oi.ModTime, SHA256: sha256.Sum256(b)}
					for {
						if err := j.Added(ctx, o); err == nil {
							break
						} else {
							t.Errorf("Added: %v", err)
							return
						}
					}
					// bitbake then uses some published objects. (An access
					// recorded before any record of its object may be
					// dropped: it is kept only while no compaction separates
					// the two.)
					accessMu.Lock()
					published = append(published, o.Key)
					accessMu.Unlock()
					for range 2 {
						accessMu.Lock()
						k := published[r.IntN(len(published))]
						at := time.Unix(clock.Add(1), 0)
						lastAt[k] = at
						j.Accessed(k, at)
						accessMu.Unlock()
					}
				}
			})
		}
	}
	wg.Wait()
	for _, j := range journals {
		if err := j.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	stop()
	bgWG.Wait()
	t.Logf("%d compactions (%d found the lock taken), %d reader retries", compactions.Load(), busy.Load(), readerRetries.Load())
	if compactions.Load() == 0 {
		t.Error("no compaction ran")
	}

	verify := func(what string, ix *Index) {
		t.Helper()
		if ix.Len() != total {
			t.Errorf("%s: %d objects, want %d", what, ix.Len(), total)
		}
		seen := map[string]int{}
		for o := range ix.Objects {
			seen[o.Key]++
		}
		check(ix)
		for i := range total {
			k := key(i)
			o, ok := ix.Lookup(k)
			if !ok || seen[k] != 1 {
				t.Errorf("%s: %s listed %d times", what, k, seen[k])
				continue
			}
			if want := lastAt[k]; !o.Accessed.Equal(want) {
				t.Errorf("%s: %s accessed %v, want %v", what, k, o.Accessed, want)
			}
		}
	}
	final, err := LoadAll(ctx, fs)
	if err != nil {
		t.Fatal(err)
	}
	verify("LoadAll", final)
	if err := live.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	verify("Live", live.Current())
	res, err := Compact(ctx, fs, CompactOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if keys := journalKeys(t, fs); len(keys) != 0 {
		t.Errorf("%d segments left after the last compaction (%+v)", len(keys), res)
	}
	snap, err := LoadSnapshot(ctx, fs)
	if err != nil {
		t.Fatal(err)
	}
	verify("snapshot", snap)
}
