package mount

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/file"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

const testMethod = "oe.sstatesig.OEOuthashBasic"

func hexOf(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func testReport(i int) index.Equivalence {
	th := hexOf(fmt.Sprint("task ", i))
	return index.Equivalence{Method: testMethod, Taskhash: th, Outhash: hexOf(fmt.Sprint("out ", i)), Unihash: th,
		PN: "p", PV: "1", PR: "r0", Task: "populate_sysroot", Created: time.Unix(1_700_000_000+int64(i), 0).UTC()}
}

// segmentsOf reads the store's journal segments.
func segmentsOf(t *testing.T, s backend.Store) []index.Segment {
	t.Helper()
	var segs []index.Segment
	err := s.List(context.Background(), index.JournalPrefix, func(oi backend.ObjectInfo) error {
		rc, err := s.Open(context.Background(), oi.Key, 0, -1)
		if err != nil {
			return err
		}
		defer rc.Close()
		seg, err := index.DecodeSegment(rc)
		if err != nil {
			return err
		}
		segs = append(segs, *seg)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return segs
}

// TestReportsFileDamagedTail: a reports file whose last entry a crash cut
// short or damaged is read up to that entry: its whole entries are
// pending (Get finds them) and recorded, the damage is logged and cut off
// so that the next report appends a readable entry, and once the batch is
// written the file is empty.
func TestReportsFileDamagedTail(t *testing.T) {
	var whole []byte
	for i := range 3 {
		e, err := encodeReport(testReport(i))
		if err != nil {
			t.Fatal(err)
		}
		whole = append(whole, e...)
	}
	fourth, _ := encodeReport(testReport(3))
	flipped := append([]byte(nil), fourth...)
	flipped[len(flipped)-2] ^= 0x20
	for _, tc := range []struct {
		name string
		tail []byte
	}{
		{"whole", nil},
		{"header cut", fourth[:5]},
		{"entry cut", fourth[:len(fourth)-7]},
		{"checksum", flipped},
		{"length", []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, '{'}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, ReportsFile)
			if err := os.WriteFile(path, append(append([]byte(nil), whole...), tc.tail...), 0o600); err != nil {
				t.Fatal(err)
			}
			store, err := file.New(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			j := index.NewJournal(store, index.JournalOptions{Writer: "test", Window: time.Hour})
			var log testutil.SyncBuffer
			p, err := openReports(path, j, slog.New(slog.NewTextHandler(&log, nil)))
			if err != nil {
				t.Fatalf("a damaged tail is no failure: %v", err)
			}
			t.Cleanup(p.Close)
			if got := p.Len(); got != 3 {
				t.Fatalf("%d reports pending, want 3", got)
			}
			for i := range 3 {
				want := testReport(i)
				if e, ok := p.Get(testMethod, want.Taskhash); !ok || e.Unihash != want.Unihash {
					t.Errorf("Get of report %d: %+v %v", i, e, ok)
				}
				if e, ok := p.GetByOuthash(testMethod, want.Outhash); !ok || e.Taskhash != want.Taskhash {
					t.Errorf("GetByOuthash of report %d: %+v %v", i, e, ok)
				}
			}
			damaged := strings.Contains(log.String(), "damaged entry")
			if damaged != (tc.tail != nil) {
				t.Errorf("damage logged: %v, want %v:\n%s", damaged, tc.tail != nil, log.String())
			}
			if fi, _ := os.Stat(path); fi.Size() != int64(len(whole)) {
				t.Errorf("file holds %d bytes after the start, want the %d of the whole entries", fi.Size(), len(whole))
			}
			// the next report appends an entry that reads back
			if err := p.Record(context.Background(), testReport(3)); err != nil {
				t.Fatal(err)
			}
			data, _ := os.ReadFile(path)
			if es, _, bad := decodeReports(data); bad != nil || len(es) != 4 {
				t.Errorf("file after a new report: %d entries, %v", len(es), bad)
			}
			if err := j.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			p.Close()
			if fi, _ := os.Stat(path); fi.Size() != 0 {
				t.Errorf("file holds %d bytes once the batch is written, want 0", fi.Size())
			}
			segs := segmentsOf(t, store)
			if len(segs) != 1 || len(segs[0].Reported) != 4 {
				t.Fatalf("journal: %d segments (%+v), want one of 4 reports", len(segs), segs)
			}
			if p.Len() != 0 {
				t.Errorf("%d reports still pending", p.Len())
			}
		})
	}
}

// failingCreates fails the first n segment writes of a real store.
type failingCreates struct {
	backend.Store
	n atomic.Int32
}

var errStoreDown = errors.New("store down (injected)")

func (s *failingCreates) Create(ctx context.Context, key string, r io.Reader, size int64) error {
	if s.n.Add(-1) >= 0 {
		return errStoreDown
	}
	return s.Store.Create(ctx, key, r, size)
}

// TestReportsRetryAfterFailedSegment: a report whose segment write fails
// stays pending and in the file, and joins a later batch (after the retry
// delay, moved by hand); once that one is written, it leaves both.
func TestReportsRetryAfterFailedSegment(t *testing.T) {
	fs, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	store := &failingCreates{Store: fs}
	store.n.Store(1)
	j := index.NewJournal(store, index.JournalOptions{Writer: "test", Window: time.Hour})
	written := make(chan index.Segment, 4)
	j.OnWrite(func(s index.Segment) { written <- s })
	path := filepath.Join(t.TempDir(), ReportsFile)
	var log testutil.SyncBuffer
	p, err := openReports(path, j, slog.New(slog.NewTextHandler(&log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	retry := make(chan time.Time)
	asked := make(chan struct{}, 1)
	p.after = func(time.Duration) <-chan time.Time {
		asked <- struct{}{}
		return retry
	}
	e := testReport(7)
	if err := p.Record(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	if err := j.Flush(context.Background()); !errors.Is(err, errStoreDown) {
		t.Fatalf("first write: %v, want the injected failure", err)
	}
	select { // the report waits to be retried
	case <-asked:
	case <-time.After(30 * time.Second):
		t.Fatal("a report whose segment failed is not retried")
	}
	if _, ok := p.Get(testMethod, e.Taskhash); !ok {
		t.Error("a report whose segment failed is not pending")
	}
	if fi, _ := os.Stat(path); fi.Size() == 0 {
		t.Error("a report whose segment failed left the file")
	}
	retry <- time.Now()
	// the retried report is in a new batch: the window is an hour, so
	// Flush writes it (repeat until the retry has joined the batch)
	deadline := time.After(30 * time.Second)
	for done := false; !done; {
		if err := j.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		select {
		case seg := <-written:
			done = len(seg.Reported) == 1 && seg.Reported[0].Taskhash == e.Taskhash
		case <-deadline:
			t.Fatal("the report was not written again")
		default:
			runtime.Gosched()
		}
	}
	p.Close()
	if p.Len() != 0 {
		t.Errorf("%d reports pending after the retry was written", p.Len())
	}
	if fi, _ := os.Stat(path); fi.Size() != 0 {
		t.Errorf("file holds %d bytes after the retry was written", fi.Size())
	}
	if !strings.Contains(log.String(), "retried") {
		t.Errorf("the failure is not logged:\n%s", log.String())
	}
}

// TestReportsFileRewritten: a report that cannot be written (its retry
// never comes) keeps the file from being emptied while thousands of others
// are written; past maxReportsBytes the file is rewritten with only the
// waiting reports, so it stays bounded, and the one left is recorded again
// at the next start.
func TestReportsFileRewritten(t *testing.T) {
	fs, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	store := &failingCreates{Store: fs}
	store.n.Store(1)
	j := index.NewJournal(store, index.JournalOptions{Writer: "test", Window: time.Hour, MaxBatch: 10_000})
	path := filepath.Join(t.TempDir(), ReportsFile)
	p, err := openReports(path, j, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	p.after = func(time.Duration) <-chan time.Time { return nil } // the retry never comes
	stuck := testReport(-1)
	if err := p.Record(context.Background(), stuck); err != nil {
		t.Fatal(err)
	}
	if err := j.Flush(context.Background()); !errors.Is(err, errStoreDown) {
		t.Fatalf("first write: %v, want the injected failure", err)
	}
	one, _ := encodeReport(testReport(0))
	n := 3*maxReportsBytes/len(one) + 10
	largest := int64(0)
	for i := range n {
		if err := p.Record(context.Background(), testReport(i)); err != nil {
			t.Fatal(err)
		}
		if i%100 == 99 {
			if err := j.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		if fi, err := os.Stat(path); err == nil {
			largest = max(largest, fi.Size())
		}
	}
	if largest > maxReportsBytes {
		t.Errorf("the file grew to %d bytes, want at most %d", largest, maxReportsBytes)
	}
	if err := j.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.Close()
	data, _ := os.ReadFile(path)
	es, _, bad := decodeReports(data)
	if bad != nil || len(es) != 1 || es[0].Taskhash != stuck.Taskhash {
		t.Fatalf("file after close: %d entries (%v), want the report not written", len(es), bad)
	}
	p2, err := openReports(path, index.NewJournal(fs, index.JournalOptions{Writer: "test", Window: time.Hour}), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	if _, ok := p2.Get(testMethod, stuck.Taskhash); !ok || p2.Len() != 1 {
		t.Errorf("at the next start: %d pending, the left report pending: %v", p2.Len(), ok)
	}
}
