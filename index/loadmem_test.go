package index

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/file"
)

// BenchmarkLoadJournal measures what a mount pays to load an index of
// SSTATEFS_INDEX_SCALE objects (opt-in, see scale_test.go) whose journal
// holds 0, 1M and 10M access records, in segments of 400,000 as
// bench/farm.go writes them, from a file store:
//
//	SSTATEFS_INDEX_SCALE=1 go test -run '^$' -bench LoadJournal -benchtime 1x ./index/
//
// It reports the peak RSS of the load (VmHWM, reset before it, less the
// RSS before it: the test's own data), the bytes allocated and the heap
// the index and the loader keep (for a refresh).
func BenchmarkLoadJournal(b *testing.B) {
	n := scaleCount(b)
	ctx := context.Background()
	objs := randomObjects(synthKeys(b, n, 42), 42)
	keys := make([]string, len(objs))
	for i, o := range objs {
		keys[i] = o.Key
	}
	snapDir := b.TempDir()
	src, err := file.New(snapDir)
	if err != nil {
		b.Fatal(err)
	}
	if err := Save(ctx, src, New(objs, time.Now())); err != nil {
		b.Fatal(err)
	}
	objs = nil
	snap, err := os.ReadFile(filepath.Join(snapDir, filepath.FromSlash(SnapshotKey)))
	if err != nil {
		b.Fatal(err)
	}
	for _, accesses := range []int{0, 1_000_000, 10_000_000} {
		b.Run(fmt.Sprintf("access=%d", accesses), func(b *testing.B) {
			dir := b.TempDir()
			s, err := file.New(dir)
			if err != nil {
				b.Fatal(err)
			}
			if err := s.Put(ctx, SnapshotKey, bytes.NewReader(snap), int64(len(snap))); err != nil {
				b.Fatal(err)
			}
			writeAccessSegments(b, s, keys, accesses)
			for b.Loop() {
				b.StopTimer()
				runtime.GC()
				debug.FreeOSMemory()
				resetPeakRSS(b)
				rss := procStatus(b, "VmRSS:")
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				b.StartTimer()
				ld := newLoader(s, nil)
				res, err := ld.load(ctx, func(ctx context.Context) (*Index, backend.ObjectInfo, error) {
					ix, err := LoadSnapshot(ctx, s)
					return ix, backend.ObjectInfo{}, err
				}, nil, "")
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				b.ReportMetric(float64(procStatus(b, "VmHWM:")-rss)/1e6, "peak-RSS-MB")
				runtime.ReadMemStats(&after)
				b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/1e6, "alloc-MB")
				runtime.GC()
				runtime.ReadMemStats(&after)
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/1e6, "kept-heap-MB")
				if got := res.ix.Len(); got != len(keys) {
					b.Fatalf("index of %d objects, want %d", got, len(keys))
				}
				runtime.KeepAlive(ld)
				runtime.KeepAlive(res)
				b.StartTimer()
			}
		})
	}
}

// writeAccessSegments writes n access records of keys into s, in
// segments of at most 400,000, each key at most once a segment.
func writeAccessSegments(b *testing.B, s *file.Store, keys []string, n int) {
	const perSegment = 400_000
	r := rand.New(rand.NewPCG(7, 0xacce55))
	at := time.Unix(1_800_000_000, 0)
	for done := 0; done < n; {
		k := min(perSegment, n-done, len(keys))
		seg := &Segment{Writer: "farm-memory", Time: at}
		seg.Key = fmt.Sprintf("%s%020d-%s-%016x.seg", JournalPrefix, at.UnixNano(), seg.Writer, r.Uint64())
		first := r.IntN(len(keys))
		seg.Accessed = make([]Access, k)
		for i := range k {
			seg.Accessed[i] = Access{Key: keys[(first+i)%len(keys)], Time: at}
		}
		var buf bytes.Buffer
		if err := EncodeSegment(&buf, seg); err != nil {
			b.Fatal(err)
		}
		if err := s.Put(context.Background(), seg.Key, bytes.NewReader(buf.Bytes()), int64(buf.Len())); err != nil {
			b.Fatal(err)
		}
		done += k
		at = at.Add(time.Second)
	}
}

// resetPeakRSS resets the process's VmHWM (Linux: clear_refs 5).
func resetPeakRSS(b *testing.B) {
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		b.Skipf("cannot reset the peak RSS: %v", err)
	}
}

// procStatus returns a size field of /proc/self/status in bytes.
func procStatus(b *testing.B, field string) int64 {
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.SplitSeq(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				b.Fatalf("%s %q: %v", field, v, err)
			}
			return kb << 10
		}
	}
	b.Fatalf("no %s in /proc/self/status", field)
	return 0
}

// TestLiveRefreshKeepsFoldedSegments: the loader keeps the access times of
// the segments it read folded, not their records; a refresh after a new
// snapshot that covers some of them downloads neither those nor the
// others again, and gives the index a new mount would load.
func TestLiveRefreshKeepsFoldedSegments(t *testing.T) {
	ctx := context.Background()
	s := newCounting(newStore(t))
	t0 := time.Unix(1_750_000_000, 0)
	objs := []Object{{Key: "a/1", Size: 1}, {Key: "a/2", Size: 2}, {Key: "a/3", Size: 3}}
	base := New(objs, t0)
	if err := Save(ctx, s, base); err != nil {
		t.Fatal(err)
	}
	at := func(sec int64) time.Time { return t0.Add(time.Duration(sec) * time.Second) }
	k1 := putSegment(t, s, 1, "w", []Object{{Key: "b/4", Size: 4, Accessed: at(10)}}, Access{Key: "a/1", Time: at(11)})
	k2 := putSegment(t, s, 2, "w", nil, Access{Key: "a/2", Time: at(20)}, Access{Key: "b/4", Time: at(21)},
		Access{Key: "gone/x", Time: at(22)})
	l := NewLive(s, LiveOptions{})
	if err := l.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	want := map[string]time.Time{"a/1": at(11), "a/2": at(20), "a/3": {}, "b/4": at(21)}
	checkAccessed := func(when string, ix *Index) {
		t.Helper()
		if ix.Len() != len(want) {
			t.Errorf("%s: %d objects, want %d", when, ix.Len(), len(want))
		}
		for k, w := range want {
			if o, ok := ix.Lookup(k); !ok || !o.Accessed.Equal(w) {
				t.Errorf("%s: %s accessed %v (found %v), want %v", when, k, o.Accessed, ok, w)
			}
		}
	}
	checkAccessed("first load", l.Current())

	// A compaction folds the first segment into a new snapshot; a third
	// segment arrives.
	rc, err := s.Store.Open(ctx, k1, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	seg1, err := DecodeSegment(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	seg1.Key = k1
	covering := apply(base, []*Segment{seg1})
	if err := Save(ctx, s, covering); err != nil {
		t.Fatal(err)
	}
	if !covering.coversSegment(k1) || covering.coversSegment(k2) {
		t.Fatalf("the new snapshot covers %v", covering.covered)
	}
	k3 := putSegment(t, s, 3, "w", nil, Access{Key: "a/3", Time: at(30)}, Access{Key: "a/1", Time: at(31)})
	opens := map[string]int{k1: s.Opens(k1), k2: s.Opens(k2)}
	if err := l.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	for k, n := range opens {
		if s.Opens(k) != n {
			t.Errorf("refresh downloaded %s again", k)
		}
	}
	if s.Opens(k3) != 1 {
		t.Errorf("%s downloaded %d times, want 1", k3, s.Opens(k3))
	}
	want["a/3"], want["a/1"] = at(30), at(31)
	checkAccessed("refresh after a new snapshot", l.Current())
	fresh, err := LoadAll(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	checkAccessed("a new mount", fresh)
}

// TestLoadAllFoldsNothingOfCorruptSegment: a segment that turns out
// corrupt after some of its access records decoded is skipped whole; none
// of its access times are taken.
func TestLoadAllFoldsNothingOfCorruptSegment(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	if err := Save(ctx, s, New([]Object{{Key: "a/1", Size: 1}}, time.Unix(1_750_000_000, 0))); err != nil {
		t.Fatal(err)
	}
	b := encodeSeg(t, &Segment{Time: time.Unix(0, 1), Accessed: []Access{{Key: "a/1", Time: time.Unix(1_760_000_000, 0)}}})
	binary.LittleEndian.PutUint64(b[20:], 2) // one record more than the body holds
	putRaw(t, s, segmentKey(1, "w"), fixSum(b))
	putSegment(t, s, 2, "w", []Object{{Key: "a/2", Size: 2}})
	ix, err := LoadAll(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if len(ix.Sources().Skipped) != 1 {
		t.Fatalf("skipped %v, want the corrupt segment", ix.Sources().Skipped)
	}
	if _, ok := ix.Lookup("a/2"); !ok {
		t.Error("a/2 of the good segment missing")
	}
	if o, _ := ix.Lookup("a/1"); !o.Accessed.IsZero() {
		t.Errorf("a/1 accessed %v, from a segment skipped as corrupt", o.Accessed)
	}
}
