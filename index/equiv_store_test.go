package index

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

// rawReported encodes a Reported record as EncodeSegment does, without
// checking it.
func rawReported(e Equivalence) []byte {
	b := appendString([]byte{recReported}, e.Method)
	b = appendHash(b, e.Taskhash)
	b = appendHash(b, e.Outhash)
	b = appendHash(b, e.Unihash)
	b = binary.AppendVarint(b, toNanos(e.Created))
	for _, f := range []string{e.PN, e.PV, e.PR, e.Task, e.Owner} {
		b = appendString(b, f)
	}
	return b
}

// putReports writes a segment of equivalences as writer at ns and returns
// its key.
func putReports(t *testing.T, s backend.Store, ns int64, writer string, reps ...Equivalence) string {
	t.Helper()
	b := encodeSeg(t, &Segment{Time: time.Unix(0, ns), Reported: reps})
	key := segmentKey(ns, writer)
	if err := s.Create(context.Background(), key, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
	return key
}

func TestSegmentRoundTripReported(t *testing.T) {
	eqs := []Equivalence{
		testEq(1, "do_a"),
		testEq(1, "do_a"), // twice: kept as recorded
		{Method: "m", Taskhash: "abcde", Unihash: strings.Repeat("f", 128), PN: "bäd"}, // odd, no outhash, zero time
		{Method: strings.Repeat("m", 1024), Taskhash: "1234", Unihash: "0123", Outhash: "12345",
			PN: strings.Repeat("p", 256), Created: time.Unix(-1, 5)},
	}
	seg := Segment{Time: time.Unix(1_750_000_000, 7), Added: randomObjects(realisticKeys(t)[:5], 1),
		Accessed: []Access{{Key: "a/b", Time: time.Unix(9, 0)}}, Reported: eqs}
	b := encodeSeg(t, &seg)
	if v := binary.LittleEndian.Uint32(b[8:]); v != 2 {
		t.Errorf("segment with equivalences written as version %d", v)
	}
	got, err := DecodeSegment(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Reported) != len(eqs) || got.Invalid != 0 || len(got.Added) != 5 || len(got.Accessed) != 1 {
		t.Fatalf("decoded %+v", got)
	}
	for i, e := range eqs {
		if !reflect.DeepEqual(got.Reported[i], norm(e)) {
			t.Errorf("record %d: %+v, want %+v", i, got.Reported[i], e)
		}
	}
	if again := encodeSeg(t, got); !bytes.Equal(again, b) {
		t.Error("re-encoding differs")
	}
	if g, err := DecodeSegment(iotest.OneByteReader(bytes.NewReader(b))); err != nil || !reflect.DeepEqual(g, got) {
		t.Errorf("one-byte reader: %v", err)
	}
	// Without equivalences, version 1: older readers still read it.
	seg.Reported = nil
	if v := binary.LittleEndian.Uint32(encodeSeg(t, &seg)[8:]); v != 1 {
		t.Errorf("segment without equivalences written as version %d", v)
	}
	// What a reader would drop is never written.
	for _, bad := range []Equivalence{{Method: "m", Taskhash: "abc", Unihash: "abcd"}, {Taskhash: "abcd", Unihash: "abcd"}} {
		_, err := encodeSegment(&Segment{Reported: []Equivalence{bad}})
		if !errors.Is(err, ErrInvalidEquivalence) {
			t.Errorf("EncodeSegment(%+v) = %v", bad, err)
		}
	}
}

// goldenSegV1 is what testdata/segment-v1.bin holds: written by the
// version 1 encoder, before equivalences existed.
func goldenSegV1() Segment {
	var sha [32]byte
	for i := range sha {
		sha[i] = byte(7 * i)
	}
	return Segment{Time: time.Unix(1_750_000_200, 789), Added: []Object{
		{Key: "ab/cd/sstate:zlib:core2-64-poky-linux:1.3:r0:core2-64:14:abcd_populate_sysroot.tar.zst", Size: 12345, ModTime: time.Unix(1_750_000_100, 5), SHA256: sha},
		{Key: "ab/cd/sstate:zlib:core2-64-poky-linux:1.3:r0:core2-64:14:abcd_populate_sysroot.tar.zst.siginfo", Size: 678, Accessed: time.Unix(1_750_000_150, 0)},
	}, Accessed: []Access{{Key: "debian-12/ef/01/sstate:quilt-native:x86_64-linux:0.67:r0:x86_64:14:ef01_populate_sysroot.tar.zst", Time: time.Unix(1_750_000_199, 0)}}}
}

func TestDecodeSegmentV1(t *testing.T) {
	b := readGolden(t, "testdata/segment-v1.bin", 1)
	got, err := DecodeSegment(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	want := goldenSegV1()
	if !got.Time.Equal(want.Time) || len(got.Added) != 2 || len(got.Accessed) != 1 || got.Reported != nil {
		t.Fatalf("decoded %+v", got)
	}
	for i, o := range want.Added {
		g := got.Added[i]
		if g.Key != o.Key || g.Size != o.Size || g.SHA256 != o.SHA256 || !g.ModTime.Equal(o.ModTime) ||
			g.ModTime.IsZero() != o.ModTime.IsZero() || !g.Accessed.Equal(o.Accessed) {
			t.Errorf("added %d: %+v, want %+v", i, g, o)
		}
	}
	if a := got.Accessed[0]; a.Key != want.Accessed[0].Key || !a.Time.Equal(want.Accessed[0].Time) {
		t.Errorf("accessed %+v", a)
	}
	// The encoder writes the same bytes for it still.
	if again := encodeSeg(t, got); !bytes.Equal(again, b) {
		t.Error("a segment without equivalences is no longer written as version 1 was")
	}
}

func TestDecodeSegmentReportedCorrupt(t *testing.T) {
	e := testEq(1, "do_x")
	rec := rawReported(e)
	for _, tc := range []struct {
		name, want string
		in         []byte
	}{
		{"absurd method length", "record 0: absurd method length 4097 (limit 4096)",
			segFrame(1, cat([]byte{recReported}, binary.AppendUvarint(nil, 4097)))},
		{"absurd PN length", "record 0: absurd PN length 5000",
			segFrame(1, cat(appendString([]byte{recReported}, "m"), appendHash(nil, "abcd"), appendHash(nil, ""),
				appendHash(nil, "abcd"), binary.AppendVarint(nil, 1), binary.AppendUvarint(nil, 5000)))},
		{"absurd hash length", "record 0: taskhash: absurd hash length 256 digits (limit 255)",
			segFrame(1, cat(appendString([]byte{recReported}, "m"), binary.AppendUvarint(nil, 256)))},
		{"pad nibble", "record 0: unihash: hash with a non-zero pad nibble",
			segFrame(1, cat(appendString([]byte{recReported}, "m"), appendHash(nil, "abcd"), appendHash(nil, ""), []byte{5, 1, 2, 3}))},
		{"cut in method", "record 0: truncated body in method", segFrame(1, rec[:4])},
		{"cut in taskhash", "record 0: truncated body in taskhash", segFrame(1, rec[:1+1+4+10])},
		{"cut in owner", "record 0: truncated body in owner", segFrame(1, rec[:len(rec)-1])},
		{"count too high", "record count mismatch: header says 2 records, body ends after 1", segFrame(2, rec)},
	} {
		t.Run(tc.name, func(t *testing.T) { wantSegCorrupt(t, tc.in, tc.want) })
	}
	if seg, err := DecodeSegment(bytes.NewReader(segFrame(1, rec))); err != nil || len(seg.Reported) != 1 {
		t.Errorf("the record itself: %v", err)
	}
}

// TestDecodeSegmentReportedInvalid: a well-formed record that breaks
// Validate is dropped and counted; the rest of the segment is read.
func TestDecodeSegmentReportedInvalid(t *testing.T) {
	good := testEq(1, "do_x")
	var recs [][]byte
	for _, f := range []func(*Equivalence){
		func(e *Equivalence) { e.Method = "" },
		func(e *Equivalence) { e.Method = strings.Repeat("m", 1100) },
		func(e *Equivalence) { e.Taskhash = "abc" },
		func(e *Equivalence) { e.Unihash = strings.Repeat("a", 200) },
		func(e *Equivalence) { e.Outhash = "12" },
		func(e *Equivalence) { e.PN = "a\nb" },
		func(e *Equivalence) { e.Owner = strings.Repeat("o", 300) },
		func(e *Equivalence) { e.PV = "\xff" },
	} {
		e := good
		f(&e)
		recs = append(recs, rawReported(e))
	}
	raw := cat(rawAdded("a/b", 1, 0), cat(recs...), rawReported(good), rawAccessed("a/b", 5))
	seg, err := DecodeSegment(bytes.NewReader(segFrame(uint64(len(recs)+3), raw)))
	if err != nil {
		t.Fatal(err)
	}
	if seg.Invalid != len(recs) || len(seg.Reported) != 1 || !reflect.DeepEqual(seg.Reported[0], norm(good)) ||
		len(seg.Added) != 1 || len(seg.Accessed) != 1 {
		t.Errorf("decoded %d reported, %d invalid, %d added, %d accessed", len(seg.Reported), seg.Invalid, len(seg.Added), len(seg.Accessed))
	}

	// Loading counts and logs them, and keeps the rest.
	ctx := context.Background()
	s := newStore(t)
	key := segmentKey(5, "buggy")
	putRaw(t, s, key, segFrame(uint64(len(recs)+3), raw))
	rec := &logRecorder{}
	l := NewLive(s, LiveOptions{Logger: slog.New(rec)})
	if err := l.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	ix := l.Current()
	if ix.Sources().Invalid != len(recs) || ix.NumEquivalences() != 1 || len(ix.Sources().Skipped) != 0 || ix.Len() != 1 {
		t.Errorf("sources %+v, %d equivalences", ix.Sources(), ix.NumEquivalences())
	}
	if n := rec.count("WARN index journal segment holds invalid equivalence records"); n != 1 {
		t.Errorf("logs %q", rec.msgs)
	}
	if err := l.LoadOnce(ctx); err != nil || rec.count("WARN index journal segment holds invalid") != 1 {
		t.Errorf("logged again on refresh: %v %q", err, rec.msgs)
	}
}

func TestJournalReported(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	clk := testutil.NewClock(time.Unix(1_750_000_000, 0))
	j := NewJournal(s, JournalOptions{Writer: "hashserv", Now: clk.Now})
	const n = 64
	inSegment := func(match func(*Segment) bool) bool {
		for _, seg := range readJournal(t, s) {
			if match(seg) {
				return true
			}
		}
		return false
	}
	atOnce(t, n, func(i int) error {
		if i%4 == 3 {
			return j.Added(ctx, testObject(i))
		}
		e := testEq(i, "do_x")
		e.Created = time.Time{} // filled in from the journal's clock
		if err := j.Reported(ctx, e); err != nil {
			return err
		}
		// Durable on return: a listed segment holds the record.
		if !inSegment(func(seg *Segment) bool {
			return slices.ContainsFunc(seg.Reported, func(r Equivalence) bool { return r.Taskhash == e.Taskhash })
		}) {
			return fmt.Errorf("Reported(%s) returned before its segment was in the store", e.Taskhash)
		}
		return nil
	})
	segs := readJournal(t, s)
	seen, mixed := map[string]int{}, 0
	for _, seg := range segs {
		for _, e := range seg.Reported {
			seen[e.Taskhash]++
			if !e.Created.Equal(clk.Now()) {
				t.Errorf("Created %v, want the journal's clock %v", e.Created, clk.Now())
			}
		}
		if len(seg.Reported) > 0 && len(seg.Added) > 0 {
			mixed++
		}
	}
	t.Logf("%d calls, %d segments, %d with both objects and equivalences", n, len(segs), mixed)
	if len(segs) > n/4 || mixed == 0 {
		t.Errorf("%d segments (%d mixed) for %d concurrent calls: not batched together", len(segs), mixed, n)
	}
	for i := range n {
		if i%4 != 3 && seen[hexOf(i)] != 1 {
			t.Errorf("taskhash %d recorded %d times", i, seen[hexOf(i)])
		}
	}
	ix, err := LoadAll(ctx, s)
	if err != nil || ix.NumEquivalences() != n-n/4 || ix.Len() != n/4 {
		t.Fatalf("LoadAll: %v, %d equivalences, %d objects", err, ix.NumEquivalences(), ix.Len())
	}

	// Invalid records are refused, and nothing is written.
	before := len(segs)
	for _, f := range []func(*Equivalence){
		func(e *Equivalence) { e.Unihash = "ABC" },
		func(e *Equivalence) { e.Method = "" },
		func(e *Equivalence) { e.PN = strings.Repeat("p", 300) },
	} {
		e := testEq(1000, "do_x")
		f(&e)
		if err := j.Reported(ctx, e); !errors.Is(err, ErrInvalidEquivalence) || !strings.Contains(err.Error(), "index journal") {
			t.Errorf("Reported(%+v) = %v, want ErrInvalidEquivalence", e, err)
		}
	}
	if n := len(readJournal(t, s)); n != before {
		t.Errorf("%d segments after invalid reports, want %d", n, before)
	}
	// A cancelled caller gets its error; a failed write reaches every caller.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := j.Reported(cctx, testEq(1001, "do_x")); !errors.Is(err, context.Canceled) {
		t.Errorf("Reported with a cancelled context = %v", err)
	}
	boom := errors.New("store down")
	fsx := &failingStore{Store: newStore(t), err: boom}
	fsx.failing.Store(true)
	if err := NewJournal(fsx, JournalOptions{}).Reported(ctx, testEq(1, "m")); !errors.Is(err, boom) {
		t.Errorf("Reported on a failing store = %v", err)
	}
}

// shuffleStore lists keys in a random order.
type shuffleStore struct {
	backend.Store
	seed uint64
}

func (s shuffleStore) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	var all []backend.ObjectInfo
	if err := s.Store.List(ctx, prefix, func(oi backend.ObjectInfo) error { all = append(all, oi); return nil }); err != nil {
		return err
	}
	r := rand.New(rand.NewPCG(s.seed, 0))
	r.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	for _, oi := range all {
		if err := fn(oi); err != nil {
			return err
		}
	}
	return nil
}

// journalModel is the model of the journal's segments in key order.
func journalModel(t *testing.T, s backend.Store, base []Equivalence) *eqModel {
	t.Helper()
	m := newEqModel()
	for _, e := range base {
		m.add(e)
	}
	segs := readJournal(t, s)
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range segs {
			if !yield(k) {
				return
			}
		}
	}) {
		for _, e := range segs[k].Reported {
			m.add(e)
		}
	}
	return m
}

// TestLoadAllEquivalencesAnyOrder: the same snapshot and segments give the
// same records in force whatever order the store lists them in, and the
// model's: the snapshot first, then segments by key (time), records in
// segment order.
func TestLoadAllEquivalencesAnyOrder(t *testing.T) {
	ctx := context.Background()
	fs := newStore(t)
	p := newReportPool(7)
	var base []Equivalence
	for range 50 {
		base = append(base, p.report())
	}
	if err := Save(ctx, fs, withEqs(New(nil, time.Unix(1, 0)), base...)); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		var reps []Equivalence
		for range 1 + p.r.IntN(10) {
			reps = append(reps, p.report())
		}
		// Writers' names do not sort like their times.
		putReports(t, fs, int64(1000+i*7%30), fmt.Sprintf("w%d", 30-i), reps...)
	}
	m := journalModel(t, fs, base)
	var first []eqItem
	for i, s := range []backend.Store{fs, reverseStore{fs}, shuffleStore{fs, 1}, shuffleStore{fs, 2}, shuffleStore{fs, 3}} {
		ix, err := LoadAll(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		m.check(t, fmt.Sprint("listing ", i), ix)
		if i == 0 {
			first = eqDump(ix)
		} else if !reflect.DeepEqual(eqDump(ix), first) {
			t.Errorf("listing %d: records differ", i)
		}
	}
}

// TestCompactBuildKeepEquivalences: compaction folds equivalences into the
// snapshot, and a build (which lists the store, where they are not) keeps
// them; Summarize counts them.
func TestCompactBuildKeepEquivalences(t *testing.T) {
	ctx := context.Background()
	fs := newStore(t)
	content := writeObjects(t, fs, realisticKeys(t)[:20])
	p := newReportPool(3)
	var base []Equivalence
	for range 40 {
		base = append(base, p.report())
	}
	snap, err := Build(ctx, fs, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := Save(ctx, fs, withEqs(snap, base...)); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		var reps []Equivalence
		for range 10 {
			reps = append(reps, p.report())
		}
		putReports(t, fs, int64(100+i), "w", reps...)
	}
	m := journalModel(t, fs, base)
	before, err := LoadAll(ctx, fs)
	if err != nil {
		t.Fatal(err)
	}
	m.check(t, "before", before)
	if s := Summarize(before); s.Equivalences != len(m.winner) || s.Objects != len(content) {
		t.Errorf("Summarize: %d equivalences, %d objects", s.Equivalences, s.Objects)
	}

	// A build keeps every equivalence, from the snapshot and the journal.
	built, err := Build(ctx, fs, BuildOptions{Previous: before})
	if err != nil {
		t.Fatal(err)
	}
	checkBuilt(t, fs, built, content)
	m.check(t, "built", built)
	if err := Save(ctx, fs, built); err != nil {
		t.Fatal(err)
	}
	after, err := LoadAll(ctx, fs)
	if err != nil || after.Sources().Applied != 0 {
		t.Fatalf("after saving the build: %v, %+v", err, after.Sources())
	}
	m.check(t, "saved build", after)

	// More reports; a compaction folds them, conflicts included.
	for i := range 3 {
		var reps []Equivalence
		for range 10 {
			e := p.report()
			m.add(e)
			reps = append(reps, e)
		}
		putReports(t, fs, int64(200+i), "w", reps...)
	}
	res, err := Compact(ctx, fs, CompactOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Folded != 3 || res.Deleted != 8 || res.Equivalences != len(m.winner) || !res.Wrote {
		t.Errorf("Compact = %+v, want 3 folded, 8 deleted, %d equivalences", res, len(m.winner))
	}
	folded, err := LoadSnapshot(ctx, fs)
	if err != nil {
		t.Fatal(err)
	}
	m.check(t, "compacted snapshot", folded)
	if len(journalKeys(t, fs)) != 0 {
		t.Error("segments left")
	}
	if s := Summarize(folded); s.Equivalences != len(m.winner) {
		t.Errorf("Summarize: %d equivalences", s.Equivalences)
	}
	// A build over a store with no index at all has none.
	empty := newStore(t)
	writeObjects(t, empty, realisticKeys(t)[:2])
	if ix, err := Build(ctx, empty, BuildOptions{}); err != nil || ix.NumEquivalences() != 0 {
		t.Errorf("build of a store without index: %v", err)
	}
}

func TestLiveApplyReported(t *testing.T) {
	ctx := context.Background()
	s := newCounting(newStore(t))
	saveN(t, s, 3, 1)
	l := NewLive(s, LiveOptions{})
	if err := l.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	j := NewJournal(s, JournalOptions{Writer: "me"})
	j.OnWrite(l.Apply)
	mine := testEq(1, "do_x")
	mine.Unihash = hexOf(111)
	opens := s.TotalOpens()
	if err := j.Reported(ctx, mine); err != nil {
		t.Fatal(err)
	}
	// Visible at once, without a download.
	if e, ok := l.Current().Equivalence("do_x", mine.Taskhash); !ok || e.Unihash != mine.Unihash || s.TotalOpens() != opens {
		t.Fatalf("after Reported: %+v, %v, %d downloads", e, ok, s.TotalOpens()-opens)
	}
	// Another host reported the same taskhash in an earlier segment that
	// this host had not loaded: after a refresh, its record is in force,
	// as on every other host.
	theirs := testEq(1, "do_x")
	theirs.Unihash = hexOf(222)
	putReports(t, s, 1, "other", theirs)
	if err := l.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if e, _ := l.Current().Equivalence("do_x", mine.Taskhash); e.Unihash != theirs.Unihash {
		t.Errorf("after refresh: unihash %s, want the earlier segment's %s", e.Unihash, theirs.Unihash)
	}
	all, err := LoadAll(ctx, s)
	if err != nil || !reflect.DeepEqual(eqDump(all), eqDump(l.Current())) {
		t.Errorf("Live and LoadAll differ: %v", err)
	}
	// Both outhashes are known; the later one matches to the record in force.
	if e, ok := l.Current().ByOuthash("do_x", mine.Outhash); !ok || e.Unihash != theirs.Unihash {
		t.Errorf("ByOuthash(mine) = %+v, %v", e, ok)
	}
}

// TestFourReporters: four hosts report conflicting unihashes for the same
// taskhashes at once (each host's own segments applied to its Live at
// once), with compactions folding and deleting segments meanwhile or not;
// at the end every LoadAll, whatever the listing order, every host's Live
// and the compacted snapshot put the same records in force.
func TestFourReporters(t *testing.T) {
	for _, compact := range []bool{false, true} {
		t.Run(fmt.Sprint("compact=", compact), func(t *testing.T) { fourReporters(t, compact) })
	}
}

func fourReporters(t *testing.T, compact bool) {
	ctx := context.Background()
	fs := newStore(t)
	const (
		hosts  = 4
		tasks  = 40
		method = "oe.sstatesig.OEOuthashBasic:do_populate_sysroot"
	)
	unihash := func(h, i int) string { return fmt.Sprintf("%060x%04x", i, h) }
	report := func(h, i int) Equivalence {
		e := Equivalence{Method: method, Taskhash: hexOf(i), Unihash: unihash(h, i),
			Outhash: hexOf(1<<40 + i*hosts + h), PN: fmt.Sprint("pn", i), Owner: fmt.Sprint("host", h)}
		if i%5 == 0 {
			e.Outhash = hexOf(1<<40 + i*hosts) // reproducible: the same output everywhere
		}
		return e
	}
	// check: every record in force is one some host reported.
	check := func(what string, ix *Index) {
		for e := range ix.Equivalences {
			var i, h int
			fmt.Sscanf(e.Taskhash, "%x", &i)
			fmt.Sscanf(e.Unihash[60:], "%x", &h)
			if h >= hosts || e.Unihash != unihash(h, i) || e.Owner != fmt.Sprint("host", h) || e.Method != method {
				t.Errorf("%s: bad record %+v", what, e)
			}
		}
	}
	if err := Save(ctx, fs, New(nil, time.Now())); err != nil {
		t.Fatal(err)
	}
	journals := make([]*Journal, hosts)
	lives := make([]*Live, hosts)
	for h := range hosts {
		journals[h] = NewJournal(fs, JournalOptions{Writer: fmt.Sprint("host", h), MaxBatch: 5})
		lives[h] = NewLive(fs, LiveOptions{})
		if err := lives[h].LoadOnce(ctx); err != nil {
			t.Fatal(err)
		}
		journals[h].OnWrite(lives[h].Apply)
	}

	bg, stop := context.WithCancel(ctx)
	var bgWG sync.WaitGroup
	var compactions, busy, loads atomic.Int64
	if compact {
		compactors(t, bg, &bgWG, fs, &compactions, &busy)
	}
	bgWG.Go(func() {
		for bg.Err() == nil {
			ix, err := LoadAll(bg, fs)
			switch {
			case err == nil:
				loads.Add(1)
				check("LoadAll", ix)
			case errors.Is(err, errVanished) || bg.Err() != nil:
			default:
				t.Errorf("LoadAll: %v", err)
			}
		}
	})
	bgWG.Go(func() {
		for bg.Err() == nil {
			if err := lives[0].LoadOnce(bg); err == nil {
				check("Live", lives[0].Current())
			} else if !errors.Is(err, errVanished) && bg.Err() == nil {
				t.Errorf("Live: %v", err)
			}
		}
	})

	var wg sync.WaitGroup
	for h := range hosts {
		for worker := range 3 {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(h), uint64(worker)))
				for _, i := range r.Perm(tasks) {
					if i%3 != worker {
						continue
					}
					if err := journals[h].Reported(ctx, report(h, i)); err != nil {
						t.Errorf("Reported: %v", err)
						return
					}
					// This host's index has a record in force at once.
					if _, ok := lives[h].Current().Equivalence(method, hexOf(i)); !ok {
						t.Errorf("host %d: taskhash %d not in force after Reported returned", h, i)
					}
				}
			})
		}
	}
	wg.Wait()
	stop()
	bgWG.Wait()
	t.Logf("%d compactions (%d found the lock taken), %d loads during the reports", compactions.Load(), busy.Load(), loads.Load())

	var model *eqModel
	if !compact {
		model = journalModel(t, fs, nil)
	}
	var first []eqItem
	views := 0
	compare := func(what string, ix *Index) {
		t.Helper()
		views++
		check(what, ix)
		if ix.NumEquivalences() != tasks {
			t.Errorf("%s: %d records in force, want %d", what, ix.NumEquivalences(), tasks)
		}
		if model != nil {
			model.check(t, what, ix)
		}
		if first == nil {
			first = eqDump(ix)
		} else if !reflect.DeepEqual(eqDump(ix), first) {
			t.Errorf("%s: the records differ from the first view's", what)
		}
	}
	for i, s := range []backend.Store{fs, reverseStore{fs}, shuffleStore{fs, 1}, shuffleStore{fs, 2}} {
		ix, err := LoadAll(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		compare(fmt.Sprint("LoadAll ", i), ix)
	}
	for h, l := range lives {
		if err := l.LoadOnce(ctx); err != nil {
			t.Fatal(err)
		}
		compare(fmt.Sprint("Live of host ", h), l.Current())
	}
	if _, err := Compact(ctx, fs, CompactOptions{}); err != nil {
		t.Fatal(err)
	}
	snap, err := LoadSnapshot(ctx, fs)
	if err != nil {
		t.Fatal(err)
	}
	compare("snapshot", snap)
	if len(journalKeys(t, fs)) != 0 {
		t.Error("segments left after the last compaction")
	}
	winners := map[int]int{}
	for e := range snap.Equivalences {
		var h int
		fmt.Sscanf(e.Unihash[60:], "%x", &h)
		winners[h]++
	}
	t.Logf("%d views agree; records in force by host: %v", views, winners)
}
