package index

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend"
)

// readJournal decodes every segment in s, by key.
func readJournal(t *testing.T, s backend.Store) map[string]*Segment {
	t.Helper()
	ctx := context.Background()
	out := map[string]*Segment{}
	err := s.List(ctx, JournalPrefix, func(oi backend.ObjectInfo) error {
		rc, err := s.Open(ctx, oi.Key, 0, -1)
		if err != nil {
			return err
		}
		defer rc.Close()
		seg, err := DecodeSegment(rc)
		if err != nil {
			return fmt.Errorf("%s: %w", oi.Key, err)
		}
		out[oi.Key] = seg
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func testObject(i int) Object {
	o := Object{Key: fmt.Sprintf("ab/%02x/sstate:obj%d.tar.zst", i%256, i), Size: int64(i * 10), ModTime: time.Unix(1_700_000_000+int64(i), 0)}
	o.SHA256[0], o.SHA256[1] = byte(i), byte(i>>8)
	return o
}

// atOnce runs f(0) .. f(n-1) in goroutines released together and fails
// the test with every error they return.
func atOnce(t *testing.T, n int, f func(i int) error) {
	t.Helper()
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		errs  = make(chan error, n)
	)
	for i := range n {
		wg.Go(func() {
			<-start
			if err := f(i); err != nil {
				errs <- err
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestJournalGroupCommit(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	j := NewJournal(s, JournalOptions{Writer: "Host A.example"})
	if j.Writer() != "host-a-example" {
		t.Errorf("writer %q", j.Writer())
	}
	const n = 64
	atOnce(t, n, func(i int) error {
		o := testObject(i)
		if err := j.Added(ctx, o); err != nil {
			return err
		}
		// Durable on return: a segment in the store holds the record.
		for _, seg := range readJournal(t, s) {
			if slices.ContainsFunc(seg.Added, func(a Object) bool { return a.Key == o.Key }) {
				return nil
			}
		}
		return fmt.Errorf("Added(%s) returned before its segment was in the store", o.Key)
	})
	segs := readJournal(t, s)
	seen := map[string]int{}
	for key, seg := range segs {
		name, ok := parseSegmentKey(key)
		if !ok || name.writer != "host-a-example" || !seg.Time.Equal(time.Unix(0, name.time)) {
			t.Errorf("segment %s: writer %q, time %v", key, name.writer, seg.Time)
		}
		for _, o := range seg.Added {
			seen[o.Key]++
		}
	}
	t.Logf("%d Added calls, %d segments", n, len(segs))
	if len(segs) > n/4 {
		t.Errorf("%d segments for %d concurrent calls: not batched", len(segs), n)
	}
	for i := range n {
		if k := testObject(i).Key; seen[k] != 1 {
			t.Errorf("%s recorded %d times", k, seen[k])
		}
	}
}

func TestJournalMaxBatch(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	j := NewJournal(s, JournalOptions{Writer: "w", MaxBatch: 10})
	var wg sync.WaitGroup
	for i := range 55 {
		wg.Go(func() {
			if err := j.Added(ctx, testObject(i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	segs := readJournal(t, s)
	total := 0
	for key, seg := range segs {
		if len(seg.Added) > 10 {
			t.Errorf("%s holds %d objects, MaxBatch is 10", key, len(seg.Added))
		}
		total += len(seg.Added)
	}
	if total != 55 || len(segs) < 6 {
		t.Errorf("%d objects in %d segments", total, len(segs))
	}
}

func TestJournalAccessed(t *testing.T) {
	ctx := context.Background()
	s := newCounting(newStore(t))
	j := NewJournal(s, JournalOptions{Writer: "w"})
	t0 := time.Unix(1_750_000_000, 0)
	j.Accessed("a/b", t0)
	j.Accessed("a/b", t0.Add(time.Minute)) // latest wins
	j.Accessed("a/b", t0.Add(-time.Hour))
	j.Accessed("c", t0)
	j.Accessed(".sstatefs/x", t0) // ignored: not an object
	j.Accessed("a//b", t0)        // ignored: not a key
	j.Accessed("d", time.Time{})  // ignored: no time
	if len(readJournal(t, s)) != 0 {
		t.Fatal("Accessed wrote before a flush")
	}
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	segs := readJournal(t, s)
	if len(segs) != 1 {
		t.Fatalf("%d segments, want 1", len(segs))
	}
	for _, seg := range segs {
		want := []Access{{"a/b", t0.Add(time.Minute)}, {"c", t0}}
		if len(seg.Accessed) != 2 || len(seg.Added) != 0 {
			t.Fatalf("segment %+v", seg)
		}
		for i, a := range seg.Accessed {
			if a.Key != want[i].Key || !a.Time.Equal(want[i].Time) {
				t.Errorf("record %d: %+v, want %+v", i, a, want[i])
			}
		}
	}
	// Nothing pending: no empty segment.
	if err := j.Flush(ctx); err != nil || len(readJournal(t, s)) != 1 {
		t.Errorf("empty flush: %v, %d segments", err, len(readJournal(t, s)))
	}
	// Access records ride along with the next objects.
	j.Accessed("e", t0)
	if err := j.Added(ctx, testObject(1)); err != nil {
		t.Fatal(err)
	}
	segs = readJournal(t, s)
	n := 0
	for _, seg := range segs {
		if len(seg.Added) == 1 && len(seg.Accessed) == 1 && seg.Accessed[0].Key == "e" {
			n++
		}
	}
	if len(segs) != 2 || n != 1 {
		t.Errorf("%d segments, %d with the object and the access record", len(segs), n)
	}
}

func TestJournalRun(t *testing.T) {
	s := newStore(t)
	j := NewJournal(s, JournalOptions{Writer: "w", FlushInterval: 5 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { j.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done }) // also when the test stops early
	for i := range 20 {
		j.Accessed(testObject(i).Key, time.Unix(1_750_000_000+int64(i), 0))
	}
	waitFor(t, "access records", func() bool {
		n := 0
		for _, seg := range readJournal(t, s) {
			n += len(seg.Accessed)
		}
		return n == 20
	})
	cancel()
	<-done
}

// failingStore fails Create while failing is set.
type failingStore struct {
	backend.Store
	failing atomic.Bool
	err     error
	creates atomic.Int64
}

func (f *failingStore) Create(ctx context.Context, key string, r io.Reader, size int64) error {
	f.creates.Add(1)
	if f.failing.Load() {
		return fmt.Errorf("%s: %w", key, f.err)
	}
	return f.Store.Create(ctx, key, r, size)
}

func TestJournalWriteFails(t *testing.T) {
	ctx := context.Background()
	boom := errors.New("connection refused")
	s := &failingStore{Store: newStore(t), err: boom}
	s.failing.Store(true)
	j := NewJournal(s, JournalOptions{Writer: "w"})
	t0 := time.Unix(1_750_000_000, 0)
	j.Accessed("x/y", t0)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			err := j.Added(ctx, testObject(i))
			if !errors.Is(err, boom) || !strings.Contains(err.Error(), JournalPrefix) {
				t.Errorf("Added = %v, want the store's error naming the segment", err)
			}
		})
	}
	wg.Wait()
	if err := j.Flush(ctx); !errors.Is(err, boom) {
		t.Errorf("Flush = %v", err)
	}
	if n := len(readJournal(t, s)); n != 0 {
		t.Fatalf("%d segments after failed writes", n)
	}
	// The access record was kept: written once the store is back.
	s.failing.Store(false)
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	segs := readJournal(t, s)
	if len(segs) != 1 {
		t.Fatalf("%d segments", len(segs))
	}
	for _, seg := range segs {
		if len(seg.Accessed) != 1 || seg.Accessed[0].Key != "x/y" || !seg.Accessed[0].Time.Equal(t0) {
			t.Errorf("segment %+v", seg)
		}
	}
	// And a retried Added succeeds.
	if err := j.Added(ctx, testObject(1)); err != nil {
		t.Error(err)
	}

	// A read-only store: Added fails, access records are dropped.
	ro := &failingStore{Store: newStore(t), err: backend.ErrReadOnly}
	ro.failing.Store(true)
	j = NewJournal(ro, JournalOptions{Writer: "w"})
	if err := j.Added(ctx, testObject(1)); !errors.Is(err, backend.ErrReadOnly) {
		t.Errorf("Added on a read-only store = %v", err)
	}
	j.Accessed("x/y", t0)
	before := ro.creates.Load()
	if err := j.Flush(ctx); err != nil || ro.creates.Load() != before {
		t.Errorf("Flush on a read-only store: %v, %d writes", err, ro.creates.Load()-before)
	}
}

func TestJournalInvalid(t *testing.T) {
	s := newStore(t)
	j := NewJournal(s, JournalOptions{})
	for _, o := range []Object{{Key: SnapshotKey}, {Key: "/abs"}, {Key: "a", Size: -1}} {
		if err := j.Added(context.Background(), o); err == nil {
			t.Errorf("Added(%+v) succeeded", o)
		}
	}
	if n := len(readJournal(t, s)); n != 0 {
		t.Errorf("%d segments", n)
	}
	if j.Writer() == "" {
		t.Error("no default writer id")
	}
}

// blockingStore holds Create until release is closed.
type blockingStore struct {
	backend.Store
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func (b *blockingStore) Create(ctx context.Context, key string, r io.Reader, size int64) error {
	b.once.Do(func() { close(b.entered) })
	select {
	case <-b.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return b.Store.Create(ctx, key, r, size)
}

func TestJournalCancel(t *testing.T) {
	s := &blockingStore{Store: newStore(t), entered: make(chan struct{}), release: make(chan struct{})}
	j := NewJournal(s, JournalOptions{Writer: "w"})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error)
	go func() { errc <- j.Added(ctx, testObject(1)) }()
	<-s.entered
	// A second batch waits for the write in flight, growing meanwhile.
	errc2 := make(chan error, 2)
	for i := 2; i <= 3; i++ {
		go func() { errc2 <- j.Added(context.Background(), testObject(i)) }()
	}
	waitFor(t, "the second batch", func() bool {
		j.mu.Lock()
		defer j.mu.Unlock()
		return j.open != nil && len(j.open.objs) == 2
	})
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Added = %v", err)
	}
	close(s.release)
	for range 2 {
		if err := <-errc2; err != nil {
			t.Error(err)
		}
	}
	// The cancelled caller's record was still written (the write was
	// under way), and the two others share one segment.
	segs := readJournal(t, s)
	sizes := []int{}
	for _, seg := range segs {
		sizes = append(sizes, len(seg.Added))
	}
	slices.Sort(sizes)
	if !slices.Equal(sizes, []int{1, 2}) {
		t.Errorf("segment sizes %v, want [1 2]", sizes)
	}
}

func TestJournalOnWrite(t *testing.T) {
	s := newStore(t)
	j := NewJournal(s, JournalOptions{Writer: "w"})
	var (
		mu   sync.Mutex
		seen []Segment
	)
	j.OnWrite(func(seg Segment) {
		mu.Lock()
		seen = append(seen, seg)
		mu.Unlock()
	})
	if err := j.Added(context.Background(), testObject(7)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 || len(seen[0].Added) != 1 || seen[0].Added[0].Key != testObject(7).Key || seen[0].Writer != "w" {
		t.Fatalf("hook saw %+v before Added returned", seen)
	}
	if _, ok := readJournal(t, s)[seen[0].Key]; !ok {
		t.Errorf("hook's segment key %q not in the store", seen[0].Key)
	}
}

// TestJournalLargeFlush: many long access records are split over segments
// that each stay within the format's limits.
func TestJournalLargeFlush(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 20 MiB")
	}
	s := newStore(t)
	j := NewJournal(s, JournalOptions{Writer: "w", MaxBatch: 1 << 30})
	if j.maxBatch != maxMaxBatch {
		t.Errorf("MaxBatch %d not clamped", j.maxBatch)
	}
	long := strings.Repeat("k", MaxKeyLen-10)
	for i := range 5000 {
		j.Accessed(fmt.Sprintf("%s%06d", long, i), time.Unix(1_750_000_000, 0))
	}
	if err := j.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	n := 0
	segs := readJournal(t, s)
	for _, seg := range segs {
		n += len(seg.Accessed)
	}
	if n != 5000 || len(segs) < 2 {
		t.Errorf("%d records in %d segments", n, len(segs))
	}
}
