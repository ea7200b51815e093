package index

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// longWindow is the window of the tests' journals. Their windows are
// driven by hand (manualWindows): what closes a batch is the count bound,
// Flush, a report or the test, never the clock.
const longWindow = time.Hour

// manualWindows replaces a journal's window timer: it notes each window
// started and ends one only when the test says so.
type manualWindows struct {
	mu    sync.Mutex
	armed []time.Duration
	fire  []chan time.Time
}

func driveWindows(j *Journal) *manualWindows {
	m := &manualWindows{}
	j.timer = func(d time.Duration) (<-chan time.Time, func() bool) {
		c := make(chan time.Time, 1)
		m.mu.Lock()
		m.armed = append(m.armed, d)
		m.fire = append(m.fire, c)
		m.mu.Unlock()
		return c, func() bool { return true }
	}
	return m
}

// end ends window i (the i-th batch's).
func (m *manualWindows) end(t *testing.T, i int) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if i >= len(m.fire) {
		t.Fatalf("window %d was never started (%d were)", i, len(m.fire))
	}
	m.fire[i] <- time.Time{}
}

func (m *manualWindows) started() []time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.armed)
}

// waitStarted waits until n windows were started (by the batches' commit
// goroutines) and returns their lengths.
func (m *manualWindows) waitStarted(t *testing.T, n int) []time.Duration {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for len(m.started()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d windows started, want %d", len(m.started()), n)
		}
		runtime.Gosched()
	}
	return m.started()
}

// openRecords is how many records wait in the open batch.
func (j *Journal) openRecords() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.open == nil {
		return 0
	}
	return len(j.open.objs) + len(j.open.eqs)
}

// waitOpen waits until n records wait in the open batch (they are added by
// goroutines the test started).
func waitOpen(t *testing.T, j *Journal, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for j.openRecords() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d records in the open batch, want %d", j.openRecords(), n)
		}
		runtime.Gosched()
	}
}

// countRecords counts, over every segment in the store, the object records
// per key.
func countRecords(segs map[string]*Segment) map[string]int {
	n := map[string]int{}
	for _, seg := range segs {
		for _, o := range seg.Added {
			n[o.Key]++
		}
	}
	return n
}

// TestJournalWindowAndCount: with a long window, records are written only
// when MaxBatch of them have come or at Flush: 250 Added calls with
// MaxBatch 100 make three segments (100, 100, 50), and the last 50 calls
// return only once Flush has written theirs.
func TestJournalWindowAndCount(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	j := NewJournal(s, JournalOptions{Writer: "w", Window: longWindow, MaxBatch: 100})
	driveWindows(j)
	var wg sync.WaitGroup
	errs := make(chan error, 250)
	for i := range 250 {
		wg.Go(func() { errs <- j.Added(ctx, testObject(i)) })
	}
	// 200 calls return with two full segments; 50 wait for the window
	waitOpen(t, j, 50)
	if segs := readJournal(t, s); len(segs) > 2 {
		t.Fatalf("%d segments before the flush, want at most 2 (full batches)", len(segs))
	}
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	segs := readJournal(t, s)
	if len(segs) != 3 {
		t.Errorf("%d segments for 250 records with MaxBatch 100, want 3", len(segs))
	}
	n := countRecords(segs)
	for i := range 250 {
		if k := testObject(i).Key; n[k] != 1 {
			t.Errorf("%s recorded %d times", k, n[k])
		}
	}
}

// TestJournalReportCutsWindow: bitbake waits for the answer to a report,
// so Reported does not wait for a long window: it writes the open batch
// (objects waiting in it included) at once.
func TestJournalReportCutsWindow(t *testing.T) {
	s := newStore(t)
	j := NewJournal(s, JournalOptions{Writer: "w", Window: longWindow})
	driveWindows(j)
	// a deadline far below the window: a Reported that waited for it fails
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	added := make(chan error, 1)
	go func() { added <- j.Added(ctx, testObject(1)) }()
	waitOpen(t, j, 1)
	if err := j.Reported(ctx, testEq(1, "oe.sstatesig.OEOuthashBasic")); err != nil {
		t.Fatalf("Reported with an object waiting for a window of %v: %v", longWindow, err)
	}
	if err := <-added; err != nil {
		t.Fatal(err)
	}
	segs := readJournal(t, s)
	if len(segs) != 1 {
		t.Fatalf("%d segments, want 1", len(segs))
	}
	for _, seg := range segs {
		if len(seg.Added) != 1 || len(seg.Reported) != 1 {
			t.Errorf("segment holds %d objects and %d equivalences, want 1 and 1", len(seg.Added), len(seg.Reported))
		}
	}
}

// TestJournalAccessesInWindow: an object accessed many times while a batch
// is open yields one access record (the latest time), in the batch's
// segment.
func TestJournalAccessesInWindow(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	j := NewJournal(s, JournalOptions{Writer: "w", Window: longWindow})
	driveWindows(j)
	added := make(chan error, 1)
	go func() { added <- j.Added(ctx, testObject(1)) }()
	waitOpen(t, j, 1)
	t0 := time.Unix(1_750_000_000, 0)
	for i := range 1000 {
		j.Accessed(testObject(1).Key, t0.Add(time.Duration(i)*time.Second))
		j.Accessed(testObject(2).Key, t0)
	}
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-added; err != nil {
		t.Fatal(err)
	}
	segs := readJournal(t, s)
	if len(segs) != 1 {
		t.Fatalf("%d segments, want 1", len(segs))
	}
	for _, seg := range segs {
		if len(seg.Added) != 1 || len(seg.Accessed) != 2 {
			t.Fatalf("segment holds %d objects and %d access records, want 1 and 2", len(seg.Added), len(seg.Accessed))
		}
		if a := seg.Accessed[0]; a.Key != testObject(1).Key || !a.Time.Equal(t0.Add(999*time.Second)) {
			t.Errorf("access record %+v, want the latest of the 1000", a)
		}
	}
}

// TestJournalLater: a bulk writer's Added does not wait for the segment,
// so a few workers fill batches up to MaxBatch: 1,000 records from 8
// workers make 2 segments with MaxBatch 500 (Flush writes none: the last
// batch closed full), each record once.
func TestJournalLater(t *testing.T) {
	ctx := context.Background()
	s := newCounting(newStore(t))
	j := NewJournal(s, JournalOptions{Writer: "w", Window: longWindow, MaxBatch: 500})
	driveWindows(j)
	l := j.Later()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < 1000; i += 8 {
				if err := l.Added(ctx, testObject(i)); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	segs := readJournal(t, s)
	if len(segs) != 2 {
		t.Errorf("%d segments for 1000 records with MaxBatch 500, want 2", len(segs))
	}
	n := countRecords(segs)
	for i := range 1000 {
		if k := testObject(i).Key; n[k] != 1 {
			t.Errorf("%s recorded %d times", k, n[k])
		}
	}
	if err := l.Added(ctx, Object{Key: "a//b"}); err == nil {
		t.Error("Later.Added took an invalid key")
	}
}

// TestJournalLaterFlushReportsFailure: a batch written in the background
// (it closed full) that failed is reported by the next Flush.
func TestJournalLaterFlushReportsFailure(t *testing.T) {
	ctx := context.Background()
	s := &failingStore{Store: newStore(t), err: errors.New("store down")}
	s.failing.Store(true)
	j := NewJournal(s, JournalOptions{Writer: "w", Window: longWindow, MaxBatch: 1})
	l := j.Later()
	if err := l.Added(ctx, testObject(1)); err != nil {
		t.Fatal(err)
	}
	if err := l.Flush(ctx); !errors.Is(err, s.err) {
		t.Fatalf("Flush: %v, want the failed write's error", err)
	}
}

// TestJournalWindow: records that come one after another, as a build
// publishes them, share one segment, written when the window (as
// configured) ends; until then none is in the store and no call returns.
func TestJournalWindow(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	const window = 10 * time.Second
	j := NewJournal(s, JournalOptions{Writer: "w", Window: window})
	w := driveWindows(j)
	const n = 20
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- j.Added(ctx, testObject(i)) }()
		waitOpen(t, j, i+1) // the next comes after this one is waiting
	}
	if got := w.waitStarted(t, 1); !slices.Equal(got, []time.Duration{window}) {
		t.Fatalf("windows started: %v, want one of %v", got, window)
	}
	if segs := readJournal(t, s); len(segs) != 0 {
		t.Fatalf("%d segments written before the window ended", len(segs))
	}
	select {
	case err := <-errs:
		t.Fatalf("Added returned before its segment was written: %v", err)
	default:
	}
	w.end(t, 0)
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	segs := readJournal(t, s)
	if len(segs) != 1 {
		t.Fatalf("%d segments for %d records in one window, want 1", len(segs), n)
	}
	if c := countRecords(segs); len(c) != n {
		t.Errorf("%d objects recorded, want %d", len(c), n)
	}
}

// TestJournalHurry: while the upload queue drains, records do not wait for
// the window: Hurry writes the open batch at once, and a batch opened
// before done is called waits only commitWindow.
func TestJournalHurry(t *testing.T) {
	// a deadline far below the window: an Added that waited for it fails
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := newStore(t)
	j := NewJournal(s, JournalOptions{Writer: "w", Window: longWindow})
	w := driveWindows(j)
	added := make(chan error, 1)
	go func() { added <- j.Added(ctx, testObject(1)) }()
	waitOpen(t, j, 1)
	w.waitStarted(t, 1) // the first batch's window is armed before Hurry
	done := j.Hurry()
	if err := <-added; err != nil {
		t.Fatal(err)
	}
	go func() { added <- j.Added(ctx, testObject(2)) }()
	waitOpen(t, j, 1)
	if got := w.waitStarted(t, 2); !slices.Equal(got, []time.Duration{longWindow, commitWindow}) {
		t.Errorf("windows started: %v, want %v then %v", got, longWindow, commitWindow)
	}
	done()
	w.end(t, 1)
	if err := <-added; err != nil {
		t.Fatal(err)
	}
	if segs := readJournal(t, s); len(segs) != 2 {
		t.Errorf("%d segments, want 2", len(segs))
	}
	// done: the window is long again
	go func() { added <- j.Added(ctx, testObject(3)) }()
	waitOpen(t, j, 1)
	if got := w.waitStarted(t, 3); len(got) != 3 || got[2] != longWindow {
		t.Errorf("windows started: %v, want the third of %v", got, longWindow)
	}
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-added; err != nil {
		t.Fatal(err)
	}
}
