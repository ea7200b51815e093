package index

import (
	"context"
	"errors"
	"testing"
)

// TestJournalReportedLater: ReportedLater adds the report to the open
// batch and returns at once, without cutting a long window short (the
// caller made the report durable elsewhere); its wait returns once Flush
// wrote the segment, in which the report rides with the objects; an
// invalid report is refused before it joins a batch.
func TestJournalReportedLater(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	j := NewJournal(s, JournalOptions{Writer: "w", Window: longWindow})
	driveWindows(j)
	added := make(chan error, 1)
	go func() { added <- j.Added(ctx, testObject(1)) }()
	waitOpen(t, j, 1)
	var waits []func(context.Context) error
	for i := range 3 {
		wait, err := j.ReportedLater(ctx, testEq(i, "oe.sstatesig.OEOuthashBasic"))
		if err != nil {
			t.Fatal(err)
		}
		waits = append(waits, wait)
	}
	j.mu.Lock()
	hurried := j.open != nil && j.open.hurried
	j.mu.Unlock()
	if hurried {
		t.Error("ReportedLater cut the window short")
	}
	if len(readJournal(t, s)) != 0 {
		t.Fatal("a segment was written before the window ended")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := waits[0](cctx); !errors.Is(err, context.Canceled) {
		t.Errorf("wait before the segment is written: %v, want the context's error", err)
	}
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for i, wait := range waits {
		// written: nil even on a done context
		if err := wait(cctx); err != nil {
			t.Errorf("wait of report %d: %v", i, err)
		}
	}
	if err := <-added; err != nil {
		t.Fatal(err)
	}
	segs := readJournal(t, s)
	if len(segs) != 1 {
		t.Fatalf("%d segments, want 1", len(segs))
	}
	for _, seg := range segs {
		if len(seg.Added) != 1 || len(seg.Reported) != 3 {
			t.Errorf("segment holds %d objects and %d equivalences, want 1 and 3", len(seg.Added), len(seg.Reported))
		}
	}
	if _, err := j.ReportedLater(ctx, Equivalence{Method: "m", Taskhash: "abc", Unihash: "abcd"}); !errors.Is(err, ErrInvalidEquivalence) {
		t.Errorf("invalid report: %v, want ErrInvalidEquivalence", err)
	}
}
