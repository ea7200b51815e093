package view_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/file"
	"github.com/sstatefs/sstatefs/cache"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/index/indextest"
	"github.com/sstatefs/sstatefs/internal/testutil"
	"github.com/sstatefs/sstatefs/view"
)

const method = "oe.sstatesig.OEOuthashBasic"

func hash(c byte) string { return strings.Repeat(string(c), 64) }

// key is the store key of an sstate package object named by hash h.
func key(h string) string {
	return h[0:2] + "/" + h[2:4] + "/sstate:zlib:core2-64-poky-linux:1.3:r0:core2-64:14:" + h + "_package.tar.zst"
}

// faulty fails every Stat and Open while down is set (a store that does
// not answer), counting the calls that reach it.
type faulty struct {
	backend.Store
	down         atomic.Bool
	stats, opens atomic.Int64
}

var errDown = errors.New("connection refused (injected)")

func (f *faulty) Stat(ctx context.Context, k string) (backend.ObjectInfo, error) {
	f.stats.Add(1)
	if f.down.Load() {
		return backend.ObjectInfo{}, errDown
	}
	return f.Store.Stat(ctx, k)
}

func (f *faulty) Open(ctx context.Context, k string, off, n int64) (io.ReadCloser, error) {
	f.opens.Add(1)
	if f.down.Load() {
		return nil, errDown
	}
	return f.Store.Open(ctx, k, off, n)
}

// newStore writes objects (key -> content) into a file store and, when
// indexed, its index with the equivalence records eqs.
func newStore(t *testing.T, name string, objects map[string]string, eqs []index.Equivalence, indexed bool) (view.Store, *faulty) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	for k, v := range objects {
		p := filepath.Join(dir, filepath.FromSlash(k))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fs, err := file.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	if indexed {
		indextest.Write(t, fs, name, eqs, nil)
	}
	f := &faulty{Store: fs}
	live := index.NewLive(f, index.LiveOptions{Interval: time.Hour})
	if err := live.LoadOnce(ctx); err != nil && !errors.Is(err, index.ErrNoIndex) {
		t.Fatal(err)
	}
	f.stats.Store(0) // count the lookups' requests only
	return view.Store{Name: name, Store: f, Index: live}, f
}

func newView(t *testing.T, clock *testutil.Clock, stores ...view.Store) *view.View {
	t.Helper()
	c, err := cache.Open(cache.Options{Dir: filepath.Join(t.TempDir(), "cache")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return view.New(view.Options{Stores: stores, Cache: c, Now: clock.Now})
}

func read(t *testing.T, v *view.View, o view.Object) string {
	t.Helper()
	h, err := v.Open(context.Background(), o)
	if err != nil {
		t.Fatalf("open %s: %v", o.Key, err)
	}
	defer h.Close()
	b := make([]byte, o.Size)
	n, err := h.ReadAt(context.Background(), b, 0)
	if err != nil && !errors.Is(err, io.EOF) || int64(n) != o.Size {
		t.Fatalf("read %s: %d bytes, %v", o.Key, n, err)
	}
	return string(b)
}

// TestTrustOrder: a name is served from the most trusted store that has
// it; a store without an index is probed only for names no indexed store
// has; a name nowhere is absent.
func TestTrustOrder(t *testing.T) {
	both, second, mirror, nowhere := key(hash('a')), key(hash('b')), key(hash('c')), key(hash('d'))
	project, _ := newStore(t, "project", map[string]string{both: "project bytes"}, nil, true)
	company, _ := newStore(t, "company", map[string]string{both: "company bytes!", second: "company only"}, nil, true)
	public, pf := newStore(t, "public", map[string]string{both: "public", mirror: "public only"}, nil, false)
	v := newView(t, testutil.NewClock(time.Now()), project, company, public)
	ctx := context.Background()
	for _, tc := range []struct {
		key, want string
		store     int
	}{{both, "project bytes", 0}, {second, "company only", 1}, {mirror, "public only", 2}} {
		o, err := v.Stat(ctx, tc.key)
		if err != nil {
			t.Fatalf("stat %s: %v", tc.key, err)
		}
		if o.Store != tc.store || o.Size != int64(len(tc.want)) {
			t.Errorf("%s: store %d size %d, want store %d size %d", tc.key, o.Store, o.Size, tc.store, len(tc.want))
		}
		if got := read(t, v, o); got != tc.want {
			t.Errorf("%s: read %q, want %q", tc.key, got, tc.want)
		}
	}
	if n := pf.stats.Load(); n != 1 {
		t.Errorf("the store without index was asked %d times, want once (only for the name the indexed stores lack)", n)
	}
	if _, err := v.Stat(ctx, nowhere); !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("stat of a name nowhere: %v, want ErrNotExist", err)
	}
	st := v.StoreStats()
	if st[0].Hits != 1 || st[1].Hits != 1 || st[2].ProbeHits != 1 || st[2].Probes != 2 {
		t.Errorf("per-store counters %+v", st)
	}
	// the listing merges the stores' indexes, each name once
	if n := len(v.ReadDir("aa/aa")); n != 1 {
		t.Errorf("ReadDir(aa/aa) lists %d names, want 1", n)
	}
}

// TestDownStoreLeftOut: a store that does not answer is left out without
// being asked again until its back-off ends; its names are absent, the
// other stores' names are served, an indexed name it shares with a less
// trusted store comes from that store, and it comes back once it answers.
func TestDownStoreLeftOut(t *testing.T) {
	shared, onlyMirror, onlyFirst := key(hash('a')), key(hash('c')), key(hash('e'))
	first, ff := newStore(t, "first", map[string]string{shared: "first", onlyFirst: "first only"}, nil, true)
	second, _ := newStore(t, "second", map[string]string{shared: "second"}, nil, true)
	mirror, mf := newStore(t, "mirror", map[string]string{onlyMirror: "mirror"}, nil, false)
	clock := testutil.NewClock(time.Now())
	v := newView(t, clock, first, second, mirror)
	ctx := context.Background()

	mf.down.Store(true)
	if _, err := v.Stat(ctx, onlyMirror); !errors.Is(err, backend.ErrNotExist) {
		t.Fatalf("name of a store that does not answer: %v, want absent", err)
	}
	asked := mf.stats.Load()
	if _, err := v.Stat(ctx, key(hash('f'))); !errors.Is(err, backend.ErrNotExist) {
		t.Fatalf("name nowhere: %v", err)
	}
	if mf.stats.Load() != asked {
		t.Errorf("a store that does not answer was asked again during its back-off")
	}
	if st := v.StoreStats()[2]; !st.Down || !strings.Contains(st.LastError, "injected") {
		t.Errorf("mirror state %+v, want down with its error", st)
	}
	// the first store fails a download: its shared name comes from the
	// second store, its own name is still its own (an open may fail)
	ff.down.Store(true)
	o, err := v.Stat(ctx, shared)
	if err != nil {
		t.Fatal(err)
	}
	if h, err := v.Open(ctx, o); err == nil {
		_, err = h.ReadAt(ctx, make([]byte, 1), 0)
		h.Close()
		if err == nil {
			t.Fatal("read from a store that does not answer succeeded")
		}
	}
	o, err = v.Stat(ctx, shared)
	if err != nil || o.Store != 1 || read(t, v, o) != "second" {
		t.Fatalf("shared name with the first store down: store %d, %v; want the second store's", o.Store, err)
	}
	if o, err := v.Stat(ctx, onlyFirst); err != nil || o.Store != 0 {
		t.Fatalf("name only in a store that does not answer: %v", err)
	}
	// back: after the back-off, the next lookup asks again
	mf.down.Store(false)
	ff.down.Store(false)
	clock.Add(time.Hour)
	o, err = v.Stat(ctx, onlyMirror)
	if err != nil || o.Store != 2 {
		t.Fatalf("after the mirror is back: %v", err)
	}
	if o, err := v.Stat(ctx, shared); err != nil || o.Store != 0 {
		t.Fatalf("after the first store is back: store %d, %v", o.Store, err)
	}
}

// TestEquivalenceTrust: a resolution is only as trusted as the less
// trusted of record and object; a less trusted store's record never leads
// a name to a more trusted store's object, unless that store accepts any
// record; between two records the more trusted wins.
func TestEquivalenceTrust(t *testing.T) {
	t1, u1 := hash('1'), hash('a')
	t2, u2 := hash('2'), hash('b')
	t3, u3p, u3c := hash('3'), hash('c'), hash('d')
	eq := func(task, uni string) index.Equivalence {
		return index.Equivalence{Method: method, Taskhash: task, Outhash: hash('f')[:63] + task[:1], Unihash: uni, Created: time.Now().UTC()}
	}
	for _, any := range []bool{false, true} {
		project, _ := newStore(t, "project",
			map[string]string{key(u2): "project object", key(u3p): "project u3", key(u3c): "x"},
			[]index.Equivalence{eq(t1, u1), eq(t3, u3p)}, true)
		project.AnyEquivalences = any
		company, _ := newStore(t, "company",
			map[string]string{key(u1): "company object", key(u3c): "company u3"},
			[]index.Equivalence{eq(t2, u2), eq(t3, u3c)}, true)
		v := newView(t, testutil.NewClock(time.Now()), project, company)
		ctx := context.Background()

		// (a) project's record, company's object: allowed, trust of the company
		o, err := v.Stat(ctx, key(t1))
		if err != nil || o.Store != 1 || read(t, v, o) != "company object" {
			t.Fatalf("any=%v: taskhash of a project record to a company object: store %d, %v", any, o.Store, err)
		}
		// (b) company's record, project's object: refused by default
		o, err = v.Stat(ctx, key(t2))
		e, got := v.Equivalence(method, t2)
		if !any {
			if !errors.Is(err, backend.ErrNotExist) {
				t.Errorf("a less trusted record redirected a name to a more trusted object: %+v, %v", o, err)
			}
			if got {
				t.Errorf("get answered a less trusted record leading to a more trusted object: %+v", e)
			}
		} else {
			if err != nil || o.Store != 0 || read(t, v, o) != "project object" {
				t.Errorf("equivalences_from = any: %+v, %v", o, err)
			}
			if !got || e.Unihash != u2 {
				t.Errorf("equivalences_from = any: get %+v %v", e, got)
			}
		}
		// (c) both stores have a record: the project's wins
		if e, ok := v.Equivalence(method, t3); !ok || e.Unihash != u3p {
			t.Errorf("any=%v: get of a taskhash both stores know = %+v %v, want the project's", any, e, ok)
		}
		if o, err := v.Stat(ctx, key(t3)); err != nil || read(t, v, o) != "project u3" {
			t.Errorf("any=%v: name resolved by two records: %v", any, err)
		}
	}
}
