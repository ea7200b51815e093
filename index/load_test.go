package index

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"path"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend"
)

// putSegment writes a segment as writer at ns (which orders segments) and
// returns its key.
func putSegment(t *testing.T, s backend.Store, ns int64, writer string, added []Object, acc ...Access) string {
	t.Helper()
	b := encodeSeg(t, &Segment{Time: time.Unix(0, ns), Added: added, Accessed: acc})
	key := segmentKey(ns, writer)
	if err := s.Create(context.Background(), key, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
	return key
}

func putRaw(t *testing.T, s backend.Store, key string, b []byte) {
	t.Helper()
	if err := s.Put(context.Background(), key, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
}

// reverseStore lists keys in reverse order: nothing may depend on the
// store's listing order.
type reverseStore struct{ backend.Store }

func (r reverseStore) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	var all []backend.ObjectInfo
	if err := r.Store.List(ctx, prefix, func(oi backend.ObjectInfo) error { all = append(all, oi); return nil }); err != nil {
		return err
	}
	slices.Reverse(all)
	for _, oi := range all {
		if err := fn(oi); err != nil {
			return err
		}
	}
	return nil
}

func TestLoadAllMergeRules(t *testing.T) {
	ctx := context.Background()
	fs := newStore(t)
	s := newCounting(reverseStore{fs})
	t0 := time.Unix(1_750_000_000, 0)
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	base := New([]Object{
		{Key: "a/1", Size: 1},
		{Key: "b/2", Size: 2, Accessed: at(1)},
	}, t0)
	if err := Save(ctx, s, base); err != nil {
		t.Fatal(err)
	}
	// Segment keys order by time, not by writer: "z" at 100 before "a" at 200.
	k1 := putSegment(t, s, 100, "z", []Object{{Key: "a/1", Size: 99}, {Key: "c/3", Size: 3}},
		Access{"b/2", at(2)}, Access{"a/1", at(3)}, Access{"not/an/object", at(4)})
	k2 := putSegment(t, s, 200, "a", []Object{{Key: "c/3", Size: 77}, {Key: "d/4", Size: 4, Accessed: at(5)}},
		Access{"b/2", at(0)})

	ix, err := LoadAll(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	want := []Object{
		{Key: "a/1", Size: 1, Accessed: at(3)}, // the snapshot's record; the latest access
		{Key: "b/2", Size: 2, Accessed: at(2)}, // the latest of three accesses
		{Key: "c/3", Size: 3},                  // the earlier segment's record
		{Key: "d/4", Size: 4, Accessed: at(5)}, // access time from the record itself
	}
	if got := collect(ix); !reflect.DeepEqual(got, collect(New(want, time.Time{}))) {
		t.Errorf("merged\n%+v\nwant\n%+v", got, want)
	}
	if ix.TotalSize() != 10 || ix.Len() != 4 || !ix.Created().Equal(t0) {
		t.Errorf("TotalSize %d, Len %d, Created %v", ix.TotalSize(), ix.Len(), ix.Created())
	}
	src := ix.Sources()
	if !src.Snapshot || !src.Complete || src.Applied != 2 || src.Covered != 2 || len(src.Skipped) != 0 {
		t.Errorf("sources %+v", src)
	}
	if !slices.Equal(ix.Covered(), []string{k1, k2}) {
		t.Errorf("covered %v", ix.Covered())
	}

	// Saved, the merged index covers both segments: readers skip them.
	if err := Save(ctx, s, ix); err != nil {
		t.Fatal(err)
	}
	opens := s.Opens(k1)
	again, err := LoadAll(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(collect(again), collect(ix)) || again.Sources().Applied != 0 || again.Sources().Covered != 2 {
		t.Errorf("reloaded: %d objects, sources %+v", again.Len(), again.Sources())
	}
	if s.Opens(k1) != opens {
		t.Error("a covered segment was read")
	}
	// Load is LoadAll; LoadSnapshot is the snapshot alone.
	if l, err := Load(ctx, s); err != nil || l.Len() != 4 {
		t.Errorf("Load: %v", err)
	}
	putSegment(t, s, 300, "a", []Object{{Key: "e/5", Size: 5}})
	if l, err := LoadSnapshot(ctx, s); err != nil || l.Len() != 4 {
		t.Errorf("LoadSnapshot: %v", err)
	}
	if l, err := Load(ctx, s); err != nil || l.Len() != 5 {
		t.Errorf("Load after a new segment: %v", err)
	}
}

// compareIndex checks got against the flat index of the same objects:
// every query answers the same.
func compareIndex(t *testing.T, got, want *Index) {
	t.Helper()
	if g, w := collect(got), collect(want); !reflect.DeepEqual(g, w) {
		for i := range min(len(g), len(w)) {
			if !reflect.DeepEqual(g[i], w[i]) {
				t.Fatalf("object %d differs:\n%+v\n%+v", i, g[i], w[i])
			}
		}
		t.Fatalf("objects differ: %d vs %d", got.Len(), want.Len())
	}
	if got.Len() != want.Len() || got.TotalSize() != want.TotalSize() {
		t.Errorf("Len %d/%d, TotalSize %d/%d", got.Len(), want.Len(), got.TotalSize(), want.TotalSize())
	}
	dirs := map[string]bool{"": true}
	for o := range want.Objects {
		for d := path.Dir(o.Key); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
		if g, ok := got.Lookup(o.Key); !ok || !reflect.DeepEqual(g, o) {
			t.Fatalf("Lookup(%s) = %+v, %v; want %+v", o.Key, g, ok, o)
		}
		if _, ok := got.Lookup(o.Key + ".sig"); ok {
			t.Fatalf("Lookup(%s.sig) found", o.Key)
		}
	}
	for d := range dirs {
		if !reflect.DeepEqual(got.Children(d), want.Children(d)) || !got.IsDir(d) {
			t.Fatalf("Children(%q) = %v, want %v", d, got.Children(d), want.Children(d))
		}
		if got.IsDir(d+"x") != want.IsDir(d+"x") || got.Children(d+"x") != nil {
			t.Fatalf("IsDir(%q)", d+"x")
		}
	}
	var buf bytes.Buffer
	if err := Encode(&buf, got); err != nil {
		t.Fatal(err)
	}
	dec, err := Decode(&buf)
	if err != nil || !reflect.DeepEqual(collect(dec), collect(want)) {
		t.Fatalf("encoded merged index: %v", err)
	}
}

// TestApplyModel applies random segments and checks the result against a
// model of the merge rules.
func TestApplyModel(t *testing.T) {
	keys := synthKeys(t, 600, 31)
	r := rand.New(rand.NewPCG(5, 6))
	for round := range 20 {
		objs := randomObjects(keys, uint64(round))
		type rec struct {
			o  Object
			at uint32
		}
		model := map[string]*rec{}
		var base []Object
		for i, o := range objs[:200] {
			if i%3 == 0 {
				o.Accessed = time.Unix(1_750_000_000+int64(r.IntN(1000)), 0)
			}
			base = append(base, o)
			model[o.Key] = &rec{o, toSecs(o.Accessed)}
		}
		ix := New(base, time.Unix(1, 0))
		var segs []*Segment
		pendingAt := map[string]uint32{}
		for s := range 1 + r.IntN(6) {
			seg := &Segment{Key: segmentKey(int64(s), "w")}
			for range r.IntN(60) {
				o := objs[r.IntN(len(objs))]
				o.Size = r.Int64N(100) // a different record of the same key: must lose
				if r.IntN(4) == 0 {
					o.Accessed = time.Unix(1_750_000_000+int64(r.IntN(2000)), 0)
				}
				seg.Added = append(seg.Added, o)
			}
			for range r.IntN(40) {
				k := keys[r.IntN(len(keys))]
				if r.IntN(5) == 0 {
					k = "nowhere/" + k
				}
				seg.Accessed = append(seg.Accessed, Access{k, time.Unix(1_750_000_000+int64(r.IntN(3000)), 0)})
			}
			segs = append(segs, seg)
			for _, o := range seg.Added {
				at := toSecs(o.Accessed)
				pendingAt[o.Key] = max(pendingAt[o.Key], at)
				if model[o.Key] == nil {
					o.Accessed = time.Time{}
					model[o.Key] = &rec{o, 0}
				}
			}
			for _, a := range seg.Accessed {
				pendingAt[a.Key] = max(pendingAt[a.Key], toSecs(a.Time))
			}
		}
		var want []Object
		for k, m := range model {
			m.o.Accessed = fromSecs(max(m.at, pendingAt[k]))
			want = append(want, m.o)
		}
		got := apply(ix, segs)
		compareIndex(t, got, New(want, time.Time{}))
		// Applying again changes nothing.
		compareIndex(t, apply(got, segs), New(want, time.Time{}))
		if got.Sources().Applied != len(segs) {
			t.Errorf("applied %d, want %d", got.Sources().Applied, len(segs))
		}
	}
}

func TestLoadAllJournalOnly(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	_, err := LoadAll(ctx, s)
	if !errors.Is(err, ErrNoIndex) || !strings.Contains(err.Error(), s.Location()) {
		t.Fatalf("LoadAll of an empty store = %v, want ErrNoIndex naming the store", err)
	}
	// Only unreadable segments: still no index.
	putRaw(t, s, segmentKey(1, "w"), []byte("garbage"))
	if _, err := LoadAll(ctx, s); !errors.Is(err, ErrNoIndex) {
		t.Fatalf("LoadAll with only a corrupt segment = %v, want ErrNoIndex", err)
	}
	putSegment(t, s, 2, "w", []Object{{Key: "a/b", Size: 3}})
	ix, err := LoadAll(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	src := ix.Sources()
	if ix.Len() != 1 || src.Snapshot || src.Complete || src.Applied != 1 || len(src.Skipped) != 1 || !ix.Created().IsZero() {
		t.Errorf("journal-only index: %d objects, created %v, sources %+v", ix.Len(), ix.Created(), src)
	}
}

func TestLoadAllSkipsCorrupt(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	if err := Save(ctx, s, New([]Object{{Key: "a/0", Size: 1}}, time.Now())); err != nil {
		t.Fatal(err)
	}
	putSegment(t, s, 1, "w", []Object{{Key: "a/1", Size: 1}})
	bad := segmentKey(2, "evil")
	good := encodeSeg(t, &Segment{Added: []Object{{Key: "a/2", Size: 2}}})
	good[len(good)/2] ^= 1
	putRaw(t, s, bad, good)
	future := segmentKey(3, "newer")
	b := encodeSeg(t, &Segment{Added: []Object{{Key: "a/3", Size: 3}}})
	b[8] = 9 // version 9
	putRaw(t, s, future, fixSum(b))
	stray := JournalPrefix + "README"
	putRaw(t, s, stray, []byte("hello"))
	putSegment(t, s, 4, "w", []Object{{Key: "a/4", Size: 4}})

	ix, err := LoadAll(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if ix.Len() != 3 {
		t.Errorf("%d objects, want a/0, a/1, a/4", ix.Len())
	}
	sk := ix.Sources().Skipped
	if len(sk) != 3 {
		t.Fatalf("skipped %v", sk)
	}
	for i, want := range []string{stray + ": corrupt index: not a segment name", bad + ": corrupt index: checksum mismatch",
		future + ": corrupt index: unsupported version 9"} {
		if !errors.Is(sk[i], ErrCorrupt) || !strings.Contains(sk[i].Error(), want) || !strings.Contains(sk[i].Error(), s.Location()) {
			t.Errorf("skipped[%d] = %v, want it to say %q", i, sk[i], want)
		}
	}
	if ix.Sources().Covered != 2 {
		t.Errorf("covered %v: skipped segments must not be covered", ix.Covered())
	}
}

// openFailStore fails Open of journal segments with err.
type openFailStore struct {
	backend.Store
	err error
}

func (o openFailStore) Open(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	if strings.HasPrefix(key, JournalPrefix) {
		return nil, o.err
	}
	return o.Store.Open(ctx, key, off, n)
}

// noListStore cannot list, like an HTTP mirror.
type noListStore struct{ backend.Store }

func (noListStore) List(context.Context, string, func(backend.ObjectInfo) error) error {
	return backend.ErrNotSupported
}

func TestLoadAllStoreErrors(t *testing.T) {
	ctx := context.Background()
	fs := newStore(t)
	if err := Save(ctx, fs, New([]Object{{Key: "a/0", Size: 1}}, time.Now())); err != nil {
		t.Fatal(err)
	}
	key := putSegment(t, fs, 1, "w", []Object{{Key: "a/1", Size: 1}})

	// A network error is not damage: the load fails, naming the segment.
	boom := errors.New("connection reset")
	if _, err := LoadAll(ctx, openFailStore{fs, boom}); !errors.Is(err, boom) || !strings.Contains(err.Error(), key) {
		t.Errorf("LoadAll = %v, want the store's error naming %s", err, key)
	}
	// A store that cannot list has its snapshot only.
	ix, err := LoadAll(ctx, noListStore{fs})
	if err != nil || ix.Len() != 1 {
		t.Errorf("LoadAll without listing = %d objects, %v", ix.Len(), err)
	}
	if _, err := LoadAll(ctx, noListStore{newStore(t)}); !errors.Is(err, ErrNoIndex) {
		t.Errorf("LoadAll of an empty mirror = %v", err)
	}
	// A damaged snapshot is an error, journal or not.
	putRaw(t, fs, SnapshotKey, []byte("SSTFSIDX garbage"))
	if _, err := LoadAll(ctx, fs); !errors.Is(err, ErrCorrupt) {
		t.Errorf("LoadAll with a damaged snapshot = %v", err)
	}
}

// compactOnOpen runs a compaction (no grace) at the first Open of a
// journal segment, as if another host's compaction had run between the
// reader's List and Open.
type compactOnOpen struct {
	backend.Store
	t     *testing.T
	once  sync.Once
	lists int
	res   CompactResult
}

func (c *compactOnOpen) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	if prefix == JournalPrefix {
		c.lists++
	}
	return c.Store.List(ctx, prefix, fn)
}

func (c *compactOnOpen) Open(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	if strings.HasPrefix(key, JournalPrefix) {
		c.once.Do(func() {
			var err error
			if c.res, err = Compact(ctx, c.Store, CompactOptions{}); err != nil {
				c.t.Error(err)
			}
		})
	}
	return c.Store.Open(ctx, key, off, n)
}

func TestLoadAllSegmentVanishes(t *testing.T) {
	ctx := context.Background()
	fs := newStore(t)
	if err := Save(ctx, fs, New([]Object{{Key: "a/0", Size: 1}}, time.Now())); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 5; i++ {
		putSegment(t, fs, int64(i), "w", []Object{{Key: fmt.Sprint("a/", i), Size: int64(i)}})
	}
	s := &compactOnOpen{Store: fs, t: t}
	ix, err := LoadAll(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if s.res.Deleted != 5 || s.lists != 2 {
		t.Errorf("compaction deleted %d segments, %d listings; want 5 and a second attempt", s.res.Deleted, s.lists)
	}
	if ix.Len() != 6 || !ix.Sources().Snapshot || ix.Sources().Applied != 0 {
		t.Errorf("%d objects, sources %+v; want all 6 from the new snapshot", ix.Len(), ix.Sources())
	}

	// A segment that is listed but never there: give up after 3 attempts.
	ghost := &phantomStore{Store: fs, key: segmentKey(99, "ghost")}
	_, err = LoadAll(ctx, ghost)
	if !errors.Is(err, errVanished) || !strings.Contains(err.Error(), "3 attempts") || !strings.Contains(err.Error(), ghost.key) {
		t.Errorf("LoadAll with a phantom segment = %v", err)
	}
}

// phantomStore lists a segment that does not exist.
type phantomStore struct {
	backend.Store
	key string
}

func (p *phantomStore) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	if err := p.Store.List(ctx, prefix, fn); err != nil {
		return err
	}
	if prefix == JournalPrefix {
		return fn(backend.ObjectInfo{Key: p.key, Size: 100})
	}
	return nil
}
