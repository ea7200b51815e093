package index

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// hexOf returns a 64-digit hash made of i.
func hexOf(i int) string { return fmt.Sprintf("%064x", i) }

// testEq returns a valid record for taskhash hexOf(i) under method.
func testEq(i int, method string) Equivalence {
	return Equivalence{
		Method: method, Taskhash: hexOf(i), Outhash: hexOf(1<<40 + i), Unihash: hexOf(i),
		PN: fmt.Sprint("pn", i%7), PV: "1.0", PR: "r0", Task: "do_populate_sysroot", Owner: "ci",
		Created: time.Unix(1_750_000_000+int64(i), 123),
	}
}

// withEqs returns ix with the records applied as one segment.
func withEqs(ix *Index, eqs ...Equivalence) *Index {
	return apply(ix, []*Segment{{Key: segmentKey(int64(len(eqs)), "t"), Reported: eqs}})
}

// eqItem is one kept record with its part, for comparing indexes whole.
type eqItem struct {
	E     Equivalence
	Flags uint8
}

// eqDump lists every record ix keeps (in force or first of its outhash).
func eqDump(ix *Index) []eqItem {
	var out []eqItem
	ix.eachEq(func(r *eqRun, e *eqEntry) bool {
		out = append(out, eqItem{r.equivalence(e), e.flags})
		return true
	})
	return out
}

func collectEqs(ix *Index) []Equivalence {
	var out []Equivalence
	for e := range ix.Equivalences {
		out = append(out, e)
	}
	return out
}

// norm gives e the time an index gives back.
func norm(e Equivalence) Equivalence {
	e.Created = fromNanos(toNanos(e.Created))
	return e
}

func TestValidateEquivalence(t *testing.T) {
	good := testEq(1, "oe.sstatesig.OEOuthashBasic:do_populate_sysroot")
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	ok := []func(*Equivalence){
		func(e *Equivalence) { e.Outhash = "" },                          // report-equiv
		func(e *Equivalence) { e.Taskhash, e.Unihash = "abcd", "01234" }, // short, odd
		func(e *Equivalence) { e.Unihash = strings.Repeat("f", 128) },
		func(e *Equivalence) { e.PN, e.PV, e.PR, e.Task, e.Owner = "", "", "", "", "" },
		func(e *Equivalence) { e.PN = "gstreamer1.0-plugins-bäd ünicode \uFFFD" },
		func(e *Equivalence) { e.Method = strings.Repeat("m", 1024) },
		func(e *Equivalence) { e.Owner = strings.Repeat("o", 256) },
		func(e *Equivalence) { e.Created = time.Time{} },
	}
	for i, f := range ok {
		e := good
		f(&e)
		if err := e.Validate(); err != nil {
			t.Errorf("ok %d: %v", i, err)
		}
	}
	for name, c := range map[string]struct {
		f    func(*Equivalence)
		want string
	}{
		"no method":         {func(e *Equivalence) { e.Method = "" }, "empty method"},
		"long method":       {func(e *Equivalence) { e.Method = strings.Repeat("m", 1025) }, "method"},
		"upper taskhash":    {func(e *Equivalence) { e.Taskhash = strings.ToUpper(e.Taskhash) + "A" }, "taskhash"},
		"short taskhash":    {func(e *Equivalence) { e.Taskhash = "abc" }, `taskhash "abc"`},
		"long unihash":      {func(e *Equivalence) { e.Unihash = strings.Repeat("a", 129) }, "unihash"},
		"no unihash":        {func(e *Equivalence) { e.Unihash = "" }, "unihash"},
		"bad unihash":       {func(e *Equivalence) { e.Unihash = "abc" }, `unihash "abc"`},
		"non-hex outhash":   {func(e *Equivalence) { e.Outhash = "abcg" }, "outhash"},
		"spaced outhash":    {func(e *Equivalence) { e.Outhash = " abcd" }, "outhash"},
		"long PN":           {func(e *Equivalence) { e.PN = strings.Repeat("p", 257) }, "PN"},
		"newline in task":   {func(e *Equivalence) { e.Task = "do_x\n" }, "task"},
		"DEL in PV":         {func(e *Equivalence) { e.PV = "1\x7f" }, "PV"},
		"C1 in PR":          {func(e *Equivalence) { e.PR = "r\u0085" }, "PR"},
		"invalid UTF-8":     {func(e *Equivalence) { e.Owner = "a\xff" }, "owner"},
		"NUL in method":     {func(e *Equivalence) { e.Method = "m\x00" }, "method"},
		"quotes long value": {func(e *Equivalence) { e.PN = strings.Repeat("\n", 300) }, "(300 bytes)"},
	} {
		e := good
		c.f(&e)
		err := e.Validate()
		if !errors.Is(err, ErrInvalidEquivalence) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrInvalidEquivalence saying %q", name, err, c.want)
		}
	}
}

func TestPackedHashes(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var hs []string
	for range 2000 {
		n := []int{4, 5, 6, 7, 40, 63, 64, 127, 128}[r.IntN(9)]
		b := make([]byte, n)
		for i := range b {
			b[i] = hexDigits[r.IntN(3)*7%16] // few digits: many shared prefixes
		}
		hs = append(hs, string(b))
	}
	for i, h := range hs {
		p := appendPacked(nil, h)
		if len(p) != packedLen(len(h)) || unpack(p, len(h)) != h {
			t.Fatalf("%q packs to %x, unpacks to %q", h, p, unpack(p, len(h)))
		}
		g := hs[(i*7919)%len(hs)]
		if got, want := cmpPacked(p, len(h), appendPacked(nil, g), len(g)), strings.Compare(h, g); got != want {
			t.Fatalf("cmpPacked(%q, %q) = %d, want %d", h, g, got, want)
		}
		q, ok := packQuery(h)
		if !ok || !bytes.Equal(q.packed(), p) {
			t.Fatalf("packQuery(%q)", h)
		}
	}
	for _, bad := range []string{"", "abc", "ABCD", strings.Repeat("a", 129), "abcx"} {
		if _, ok := packQuery(bad); ok {
			t.Errorf("packQuery(%q) accepted", bad)
		}
	}
}

func TestEquivalenceLookups(t *testing.T) {
	const m1, m2 = "do_a", "do_b"
	a := testEq(1, m1)
	b := testEq(1, m2) // same taskhash, other method
	b.Unihash, b.Outhash = hexOf(1000), hexOf(4000)
	conflict := testEq(1, m1) // same key as a: loses, and so does its outhash
	conflict.Unihash, conflict.Outhash = hexOf(2000), hexOf(3000)
	c := testEq(2, m1) // same outhash as a: matched to a
	c.Outhash = a.Outhash
	d := testEq(3, m1) // report-equiv: no outhash
	d.Outhash, d.Unihash = "", hexOf(1000)
	odd := Equivalence{Method: m2, Taskhash: "abcde", Unihash: "0123456", Outhash: "fffff"}

	ix := withEqs(New([]Object{{Key: "a/b", Size: 1}}, time.Unix(1, 0)), a, b, conflict, c, d, odd)
	if n := ix.NumEquivalences(); n != 5 {
		t.Errorf("NumEquivalences = %d, want 5", n)
	}
	check := func(what string, got Equivalence, ok bool, want Equivalence) {
		t.Helper()
		if !ok || !reflect.DeepEqual(got, norm(want)) {
			t.Errorf("%s = %+v, %v; want %+v", what, got, ok, want)
		}
	}
	for _, e := range []Equivalence{a, b, c, d, odd} {
		got, ok := ix.Equivalence(e.Method, e.Taskhash)
		check("Equivalence "+e.Method+" "+e.Taskhash, got, ok, e)
	}
	if _, ok := ix.Equivalence(m2, hexOf(2)); ok {
		t.Error("found a taskhash under another method")
	}
	got, ok := ix.ByTaskhash(a.Taskhash)
	check("ByTaskhash", got, ok, a) // m1 < m2
	got, ok = ix.ByTaskhash(c.Taskhash)
	check("ByTaskhash", got, ok, c)
	got, ok = ix.ByOuthash(m1, a.Outhash)
	check("ByOuthash", got, ok, a)
	// The loser's outhash was new: kept for matching, with the unihash in
	// force for its taskhash.
	joined := conflict
	joined.Unihash = a.Unihash
	got, ok = ix.ByOuthash(m1, conflict.Outhash)
	check("ByOuthash of a losing record", got, ok, joined)
	if _, ok := ix.ByOuthash(m2, a.Outhash); ok {
		t.Error("ByOuthash found an outhash under another method")
	}
	got, ok = ix.ByOuthash(m2, "fffff")
	check("ByOuthash odd", got, ok, odd)
	for _, u := range []string{a.Unihash, b.Unihash, c.Unihash, "0123456"} {
		if !ix.UnihashKnown(u) {
			t.Errorf("UnihashKnown(%s) = false", u)
		}
	}
	if ix.UnihashKnown(conflict.Unihash) {
		t.Error("the unihash of a losing record is known")
	}
	for _, bad := range []string{"", "xyz", "ABCD" + a.Taskhash[4:]} {
		if _, ok := ix.Equivalence(m1, bad); ok {
			t.Errorf("Equivalence(%q)", bad)
		}
		if _, ok := ix.ByOuthash(m1, bad); ok || ix.UnihashKnown(bad) {
			t.Errorf("ByOuthash/UnihashKnown(%q)", bad)
		}
		if _, ok := ix.ByTaskhash(bad); ok {
			t.Errorf("ByTaskhash(%q)", bad)
		}
	}
	// All records in force, by taskhash then method.
	want := []Equivalence{a, b, c, d, odd}
	slices.SortFunc(want, func(x, y Equivalence) int {
		return cmp.Or(strings.Compare(x.Taskhash, y.Taskhash), strings.Compare(x.Method, y.Method))
	})
	for i := range want {
		want[i] = norm(want[i])
	}
	if got := collectEqs(ix); !reflect.DeepEqual(got, want) {
		t.Errorf("Equivalences =\n%+v\nwant\n%+v", got, want)
	}
	n := 0
	ix.Equivalences(func(Equivalence) bool { n++; return false })
	if n != 1 {
		t.Errorf("Equivalences went on after false: %d calls", n)
	}
	// Objects are unaffected.
	if _, ok := ix.Lookup("a/b"); !ok || ix.Len() != 1 {
		t.Error("objects lost")
	}

	var nilIx *Index
	if _, ok := nilIx.Equivalence(m1, a.Taskhash); ok || nilIx.NumEquivalences() != 0 || nilIx.UnihashKnown(a.Unihash) {
		t.Error("nil index has equivalences")
	}
	if _, ok := nilIx.ByTaskhash(a.Taskhash); ok {
		t.Error("nil ByTaskhash")
	}
	if _, ok := nilIx.ByOuthash(m1, a.Outhash); ok {
		t.Error("nil ByOuthash")
	}
	nilIx.Equivalences(func(Equivalence) bool { t.Error("nil index has equivalences"); return true })
}

// TestApplyEquivalenceRules: the first report wins, across snapshot,
// earlier and later segments, within a segment, and when applied again.
func TestApplyEquivalenceRules(t *testing.T) {
	const m = "do_x"
	rep := func(i, uni int) Equivalence {
		e := testEq(i, m)
		e.Unihash = hexOf(uni)
		e.Outhash = hexOf(1<<40 + uni)
		return e
	}
	snap := withEqs(New(nil, time.Unix(1, 0)), rep(1, 100))
	dec, err := Decode(bytes.NewReader(encode(t, snap)))
	if err != nil {
		t.Fatal(err)
	}
	segs := []*Segment{
		{Key: segmentKey(1, "b"), Reported: []Equivalence{rep(1, 101), rep(2, 200), rep(2, 201)}},
		{Key: segmentKey(2, "a"), Reported: []Equivalence{rep(2, 202), rep(3, 300)}},
	}
	got := apply(dec, segs)
	for i, want := range map[int]int{1: 100, 2: 200, 3: 300} {
		if e, ok := got.Equivalence(m, hexOf(i)); !ok || e.Unihash != hexOf(want) {
			t.Errorf("taskhash %d: %s, want %s", i, e.Unihash, hexOf(want))
		}
	}
	// Each losing report brought a new outhash: matched to the winner.
	for out, th := range map[int]int{101: 1, 201: 2, 202: 2} {
		e, ok := got.ByOuthash(m, hexOf(1<<40+out))
		want, _ := got.Equivalence(m, hexOf(th))
		if !ok || e.Taskhash != hexOf(th) || e.Unihash != want.Unihash {
			t.Errorf("ByOuthash %d = %+v, %v", out, e, ok)
		}
	}
	before := eqDump(got)
	if again := apply(got, segs); !reflect.DeepEqual(eqDump(again), before) {
		t.Error("applying the segments again changed the equivalences")
	}
	if again := apply(apply(dec, segs[:1]), segs[1:]); !reflect.DeepEqual(eqDump(again), before) {
		t.Error("applying the segments one by one differs")
	}
	// Invalid records given to apply (a caller's bug) are ignored.
	bad := rep(9, 9)
	bad.Method = ""
	if n := withEqs(got, bad).NumEquivalences(); n != 3 {
		t.Errorf("invalid record applied: %d", n)
	}
}

// eqModel is the brute-force answer of the merge rules: records in the
// order they are applied.
type eqModel struct {
	winner map[[2]string]Equivalence // (method, taskhash)
	first  map[[2]string]Equivalence // (method, outhash)
}

func newEqModel() *eqModel {
	return &eqModel{winner: map[[2]string]Equivalence{}, first: map[[2]string]Equivalence{}}
}

func (m *eqModel) add(e Equivalence) {
	e = norm(e)
	if _, ok := m.winner[[2]string{e.Method, e.Taskhash}]; !ok {
		m.winner[[2]string{e.Method, e.Taskhash}] = e
	}
	if _, ok := m.first[[2]string{e.Method, e.Outhash}]; !ok && e.Outhash != "" {
		m.first[[2]string{e.Method, e.Outhash}] = e
	}
}

// check compares every query of ix with the model.
func (m *eqModel) check(t *testing.T, what string, ix *Index) {
	t.Helper()
	var want []Equivalence
	unis := map[string]bool{}
	byTask := map[string]Equivalence{}
	for _, e := range m.winner {
		want = append(want, e)
		unis[e.Unihash] = true
		if b, ok := byTask[e.Taskhash]; !ok || e.Method < b.Method {
			byTask[e.Taskhash] = e
		}
	}
	slices.SortFunc(want, func(x, y Equivalence) int {
		return cmp.Or(strings.Compare(x.Taskhash, y.Taskhash), strings.Compare(x.Method, y.Method))
	})
	if got := collectEqs(ix); !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: Equivalences differ: %d records, want %d", what, len(got), len(want))
	}
	if ix.NumEquivalences() != len(want) {
		t.Fatalf("%s: NumEquivalences %d, want %d", what, ix.NumEquivalences(), len(want))
	}
	for _, e := range want {
		if got, ok := ix.Equivalence(e.Method, e.Taskhash); !ok || !reflect.DeepEqual(got, e) {
			t.Fatalf("%s: Equivalence(%s, %s) = %+v, %v; want %+v", what, e.Method, e.Taskhash, got, ok, e)
		}
		if !ix.UnihashKnown(e.Unihash) {
			t.Fatalf("%s: UnihashKnown(%s) = false", what, e.Unihash)
		}
	}
	for th, e := range byTask {
		if got, ok := ix.ByTaskhash(th); !ok || !reflect.DeepEqual(got, e) {
			t.Fatalf("%s: ByTaskhash(%s) = %+v, want %+v", what, th, got, e)
		}
	}
	for k, e := range m.first {
		e.Unihash = m.winner[[2]string{e.Method, e.Taskhash}].Unihash
		if got, ok := ix.ByOuthash(k[0], k[1]); !ok || !reflect.DeepEqual(got, e) {
			t.Fatalf("%s: ByOuthash(%s, %s) = %+v, %v; want %+v", what, k[0], k[1], got, ok, e)
		}
	}
	if n := len(eqDump(ix)); n < len(want) || n > len(want)+len(m.first) {
		t.Fatalf("%s: %d records kept for %d in force and %d outhashes", what, n, len(want), len(m.first))
	}
}

// randomReports draws records from small pools, so that taskhashes and
// outhashes repeat under one method and across methods; hashes have odd
// and even lengths.
type reportPool struct {
	r                   *rand.Rand
	methods, tasks, out []string
}

func newReportPool(seed uint64) *reportPool {
	r := rand.New(rand.NewPCG(seed, 9))
	h := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = hexDigits[r.IntN(4)] // few digits: shared prefixes
		}
		return string(b)
	}
	p := &reportPool{r: r, methods: []string{"do_a", "do_b", "oe.sstatesig.OEOuthashBasic"}}
	for range 40 {
		p.tasks = append(p.tasks, h([]int{5, 6, 64, 64, 64}[r.IntN(5)]))
	}
	for range 25 {
		p.out = append(p.out, h([]int{7, 64}[r.IntN(2)]))
	}
	return p
}

func (p *reportPool) report() Equivalence {
	r := p.r
	e := Equivalence{
		Method: p.methods[r.IntN(len(p.methods))], Taskhash: p.tasks[r.IntN(len(p.tasks))],
		PN: []string{"zlib", "busybox", ""}[r.IntN(3)], PV: "1." + fmt.Sprint(r.IntN(3)), Task: "do_install",
		Owner: []string{"", "ci", "dev"}[r.IntN(3)], Created: time.Unix(1_750_000_000+r.Int64N(1000), r.Int64N(1e9)),
	}
	e.Unihash = e.Taskhash
	if r.IntN(3) == 0 {
		e.Unihash = p.tasks[r.IntN(len(p.tasks))]
	}
	if r.IntN(5) != 0 {
		e.Outhash = p.out[r.IntN(len(p.out))]
	}
	return e
}

// TestApplyEquivalenceModel applies random segments on a decoded snapshot
// and checks every query against the model, then after a round trip
// through the snapshot format (a compaction).
func TestApplyEquivalenceModel(t *testing.T) {
	for round := range 30 {
		p := newReportPool(uint64(round))
		m := newEqModel()
		var snapRecs []Equivalence
		for range p.r.IntN(80) {
			e := p.report()
			snapRecs = append(snapRecs, e)
			m.add(e)
		}
		snap, err := Decode(bytes.NewReader(encode(t, withEqs(New(nil, time.Unix(1, 0)), snapRecs...))))
		if err != nil {
			t.Fatal(err)
		}
		m.check(t, "snapshot", snap)
		var segs []*Segment
		for s := range 1 + p.r.IntN(6) {
			seg := &Segment{Key: segmentKey(int64(s), "w")}
			for range p.r.IntN(40) {
				e := p.report()
				seg.Reported = append(seg.Reported, e)
				m.add(e)
			}
			segs = append(segs, seg)
		}
		got := apply(snap, segs)
		m.check(t, fmt.Sprintf("round %d", round), got)
		m.check(t, "applied again", apply(got, segs))
		folded, err := Decode(bytes.NewReader(encode(t, got)))
		if err != nil {
			t.Fatal(err)
		}
		m.check(t, "folded", folded)
		if !reflect.DeepEqual(eqDump(folded), eqDump(got)) {
			t.Fatal("folding changed the records kept")
		}
		if !bytes.Equal(encode(t, folded), encode(t, got)) {
			t.Fatal("re-encoding differs")
		}
	}
}

func TestSnapshotRoundTripV3(t *testing.T) {
	objs := randomObjects(realisticKeys(t)[:50], 5)
	objs[3].Accessed = time.Unix(1_750_000_000, 0)
	eqs := []Equivalence{
		testEq(1, "do_a"),
		{Method: "do_b", Taskhash: "abcde", Unihash: "abcde"},                                  // odd, no outhash, zero time
		{Method: "do_b", Taskhash: strings.Repeat("f", 128), Unihash: "0123", Outhash: "9999"}, // longest, shortest
		{Method: "m", Taskhash: "1234", Unihash: "1234", Outhash: "5678", PN: "bäd", Created: time.Unix(-5, 1)},
		{Method: "m", Taskhash: "1234", Unihash: "4321", Outhash: "8765"}, // loses; kept for its outhash
	}
	for i := range 200 {
		e := testEq(100+i, []string{"do_a", "do_b"}[i%2])
		if i%3 == 0 {
			e.Unihash = hexOf(5000 + i)
		}
		eqs = append(eqs, e)
	}
	ix := withEqs(New(objs, time.Unix(1_750_000_000, 5)), eqs...)
	ix.complete = false
	data := encode(t, ix)
	if v := binary.LittleEndian.Uint32(data[8:]); v != 3 {
		t.Fatalf("version %d", v)
	}
	got, err := Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(eqDump(got), eqDump(ix)) || got.NumEquivalences() != len(eqs)-1 {
		t.Fatalf("equivalences differ: %d, want %d", got.NumEquivalences(), len(eqs)-1)
	}
	if !reflect.DeepEqual(collect(got), collect(ix)) || !slices.Equal(got.Covered(), ix.Covered()) ||
		got.Sources().Complete || !got.Created().Equal(ix.Created()) || got.Sources().Invalid != 0 {
		t.Errorf("objects or sources differ: %+v", got.Sources())
	}
	if !bytes.Equal(encode(t, got), data) {
		t.Error("re-encoding differs")
	}
	// Only records with a part are kept; one in force, one for its outhash.
	if e, _ := got.ByOuthash("m", "8765"); e.Unihash != "1234" || e.Taskhash != "1234" {
		t.Errorf("ByOuthash of the losing record: %+v", e)
	}
	// Without equivalences, Encode writes version 2.
	if v := binary.LittleEndian.Uint32(encode(t, New(objs, time.Now()))[8:]); v != 2 {
		t.Errorf("index without equivalences written as version %d", v)
	}
	// An index of equivalences alone.
	only := withEqs(nil, eqs[:3]...)
	if d, err := Decode(bytes.NewReader(encode(t, only))); err != nil || d.NumEquivalences() != 3 || d.Len() != 0 {
		t.Errorf("equivalences only: %v", err)
	}
}

// goldenV2Index is what testdata/snapshot-v2.bin holds: written by the
// version 2 encoder, before equivalences existed.
func goldenV2Index(t testing.TB) *Index {
	objs := append(randomObjects(realisticKeys(t)[40:80], 78), Object{Key: "zz/empty", Size: 0})
	for i := range objs {
		if i%3 == 0 {
			objs[i].Accessed = time.Unix(1_750_000_000+int64(i), 0)
		}
	}
	ix := New(objs, time.Unix(1_750_000_100, 456))
	ix.covered, ix.complete = testSegKeys(3), false
	return ix
}

func TestDecodeV2(t *testing.T) {
	got, err := Decode(bytes.NewReader(readGolden(t, "testdata/snapshot-v2.bin", 2)))
	if err != nil {
		t.Fatal(err)
	}
	want := goldenV2Index(t)
	if !reflect.DeepEqual(collect(got), collect(want)) || !got.Created().Equal(want.Created()) ||
		!slices.Equal(got.Covered(), want.Covered()) || got.NumEquivalences() != 0 {
		t.Error("version 2 snapshot decodes differently")
	}
	if src := got.Sources(); !src.Snapshot || src.Complete || src.Covered != 3 {
		t.Errorf("sources %+v", src)
	}
	// Written again, it is version 2; with an equivalence, version 3.
	if v := binary.LittleEndian.Uint32(encode(t, got)[8:]); v != 2 {
		t.Errorf("re-encoded as version %d", v)
	}
	with := withEqs(got, testEq(1, "m"))
	d, err := Decode(bytes.NewReader(encode(t, with)))
	if err != nil || !reflect.DeepEqual(collect(d), collect(want)) || d.NumEquivalences() != 1 {
		t.Errorf("with an equivalence: %v", err)
	}
}

// frame3 builds a version 3 snapshot around a raw body.
func frame3(count, covered, eqs uint64, raw []byte) []byte {
	body := testEncoder.EncodeAll(raw, nil)
	hdr := make([]byte, headerLenV3)
	copy(hdr, magic)
	binary.LittleEndian.PutUint32(hdr[8:], 3)
	binary.LittleEndian.PutUint32(hdr[12:], flagComplete)
	binary.LittleEndian.PutUint64(hdr[24:], count)
	binary.LittleEndian.PutUint64(hdr[32:], covered)
	binary.LittleEndian.PutUint64(hdr[40:], eqs)
	binary.LittleEndian.PutUint64(hdr[48:], uint64(len(body)))
	var buf bytes.Buffer
	writeFrame(&buf, hdr, body)
	return buf.Bytes()
}

// rawStrings encodes a string table.
func rawStrings(strs ...string) []byte {
	b := binary.AppendUvarint(nil, uint64(len(strs)))
	for _, s := range strs {
		b = appendString(b, s)
	}
	return b
}

// rawEq encodes a snapshot equivalence record; uh "" with eqSameUnihash
// omits the unihash.
type rawEq struct {
	flags      byte
	method     uint64
	th, oh, uh string
	ids        [5]uint64
}

func (r rawEq) bytes() []byte {
	b := binary.AppendUvarint([]byte{r.flags}, r.method)
	b = appendHash(b, r.th)
	b = appendHash(b, r.oh)
	if r.flags&eqSameUnihash == 0 {
		b = appendHash(b, r.uh)
	}
	b = binary.AppendVarint(b, 1)
	for _, id := range r.ids {
		b = binary.AppendUvarint(b, id)
	}
	return b
}

func rawEqs(recs ...rawEq) []byte {
	var b []byte
	for _, r := range recs {
		b = append(b, r.bytes()...)
	}
	return b
}

func TestDecodeCorruptV3(t *testing.T) {
	w := byte(eqWinner | eqFirstOut)
	rec := func(flags byte, th, oh string) rawEq {
		return rawEq{flags: flags, method: 1, th: th, oh: oh, uh: "abcd"}
	}
	a, b := strings.Repeat("a", 64), strings.Repeat("b", 64)
	good := rawEqs(rec(w, a, "1111"), rec(w, b, "2222"))
	strs := rawStrings("do_x")
	for _, tc := range []struct {
		name, want string
		in         []byte
	}{
		{"absurd count", "absurd equivalence count 16777217", frame3(0, 0, maxEquivalences+1, nil)},
		{"count too high", "equivalence count mismatch: header says 3, body ends after 2", frame3(0, 0, 3, cat(strs, good))},
		{"count too low", "equivalence count mismatch: header says 1 equivalences, body has more", frame3(0, 0, 1, cat(strs, good))},
		{"no string count", "equivalence strings: truncated body in count", frame3(0, 0, 1, nil)},
		{"absurd string count", "equivalence strings: absurd count 7 for 1 records", frame3(0, 0, 1, rawStrings("a", "b", "c", "d", "e", "f", "g"))},
		{"empty string", "equivalence string 1: bad length 0", frame3(0, 0, 1, rawStrings(""))},
		{"long string", "equivalence string 1: bad length 4097", frame3(0, 0, 1, rawStrings(strings.Repeat("s", 4097)))},
		{"strings not increasing", `equivalence strings not strictly increasing: 2 "a" follows "b"`, frame3(0, 0, 1, rawStrings("b", "a"))},
		{"strings twice", "equivalence strings not strictly increasing", frame3(0, 0, 1, rawStrings("a", "a"))},
		{"string cut", "equivalence string 1: truncated body in string", frame3(0, 0, 1, rawStrings("abc")[:3])},
		{"unknown flags", "equivalence 0: unknown flags 0x9", frame3(0, 0, 1, cat(strs, rawEqs(rec(8|eqWinner, a, ""))))},
		{"no part", "equivalence 0: neither in force nor the first of its outhash", frame3(0, 0, 1, cat(strs, rawEqs(rec(eqSameUnihash, a, ""))))},
		{"method beyond", "equivalence 0: method id 2 beyond the 1 strings", frame3(0, 0, 1, cat(strs, rawEqs(rawEq{flags: w, method: 2, th: a, oh: "11", uh: a})))},
		{"PN beyond", "equivalence 0: PN id 9 beyond", frame3(0, 0, 1, cat(strs, rawEqs(rawEq{flags: w, method: 1, th: a, oh: "1111", uh: a, ids: [5]uint64{9}})))},
		{"first out without outhash", "equivalence 0: the first of its outhash without an outhash", frame3(0, 0, 1, cat(strs, rawEqs(rec(w, a, ""))))},
		{"not increasing", "equivalences not strictly increasing: 1 (taskhash " + a + ") follows taskhash " + b,
			frame3(0, 0, 2, cat(strs, rawEqs(rec(w, b, "2222"), rec(w, a, "1111"))))},
		{"twice", "equivalences not strictly increasing: 1", frame3(0, 0, 2, cat(strs, rawEqs(rec(w, a, "1111"), rec(w, a, "1111"))))},
		{"other part first", "equivalences not strictly increasing: 1", frame3(0, 0, 2, cat(strs, rawEqs(rec(eqFirstOut, a, "1111"), rec(eqWinner, a, ""))))},
		{"two in force", "equivalence 1: a second record in force for taskhash " + a,
			frame3(0, 0, 2, cat(strs, rawEqs(rec(w, a, "1111"), rec(w, a, "2222"))))},
		{"two first of an outhash", `two equivalences are the first of method "do_x" and outhash 1111`,
			frame3(0, 0, 2, cat(strs, good[:len(good)/2], rawEqs(rec(w, b, "1111"))))},
		{"absurd hash length", "equivalence 0: taskhash: absurd hash length 256 digits (limit 255)",
			frame3(0, 0, 1, cat(strs, []byte{eqWinner, 1}, binary.AppendUvarint(nil, 256)))},
		{"pad nibble", "equivalence 0: outhash: hash with a non-zero pad nibble",
			frame3(0, 0, 1, cat(strs, []byte{eqWinner, 1}, appendHash(nil, a), []byte{3, 0x12, 0x34}))},
		{"cut in unihash", "equivalence 0: truncated body in unihash", frame3(0, 0, 1, cat(strs, rec(w, a, "1111").bytes()[:40]))},
		{"cut in created", "equivalence 0: truncated body in created",
			frame3(0, 0, 1, cat(strs, rawEq{flags: w | eqSameUnihash, method: 1, th: a, oh: "11"}.bytes()[:2+33+2]))},
		{"cut in owner", "equivalence 0: truncated body in owner", frame3(0, 0, 1, cat(strs, rec(w, a, "1111").bytes()[:len(rec(w, a, "1111").bytes())-1]))},
		{"objects before", "entry 0", frame3(1, 0, 1, cat(strs, good))},
	} {
		t.Run(tc.name, func(t *testing.T) { wantCorrupt(t, tc.in, tc.want) })
	}
	// The same records, well formed, decode.
	ix, err := Decode(bytes.NewReader(frame3(0, 0, 2, cat(strs, good))))
	if err != nil || ix.NumEquivalences() != 2 {
		t.Fatalf("good records: %v", err)
	}
}

// TestDecodeInvalidEquivalences: well-formed records that break Validate
// are dropped and counted, the rest is read.
func TestDecodeInvalidEquivalences(t *testing.T) {
	w := byte(eqWinner | eqFirstOut)
	h := func(c string) string { return strings.Repeat(c, 64) }
	long := strings.Repeat("m", 1100)
	// Strings, sorted: 1 "bad\n", 2 "do_x", 3 long method, 4 "zlib".
	strs := rawStrings("bad\n", "do_x", long, "zlib")
	recs := []rawEq{
		{flags: w, method: 2, th: h("1"), oh: h("a"), uh: h("1"), ids: [5]uint64{4}},             // valid
		{flags: w, method: 3, th: h("2"), oh: h("b"), uh: h("2")},                                // method too long
		{flags: w, method: 2, th: h("3"), oh: h("c"), uh: h("3"), ids: [5]uint64{1}},             // PN with a newline
		{flags: eqFirstOut, method: 2, th: h("3"), oh: h("d"), uh: h("3")},                       // its record in force is invalid
		{flags: eqWinner, method: 2, th: h("4"), oh: "", uh: "abc"},                              // unihash too short
		{flags: w, method: 0, th: h("5"), oh: h("e"), uh: h("5")},                                // no method
		{flags: w, method: 2, th: h("6"), oh: h("f"), uh: strings.Repeat("7", 200)},              // unihash too long
		{flags: eqWinner | eqSameUnihash, method: 2, th: h("8"), oh: "123", uh: h("8")},          // outhash too short
		{flags: w, method: 2, th: h("9"), oh: h("9"), uh: h("a"), ids: [5]uint64{0, 0, 0, 4, 0}}, // valid
	}
	ix, err := Decode(bytes.NewReader(frame3(0, 0, uint64(len(recs)), cat(strs, rawEqs(recs...)))))
	if err != nil {
		t.Fatal(err)
	}
	if ix.NumEquivalences() != 2 || ix.Sources().Invalid != 7 {
		t.Errorf("%d equivalences, %d invalid; want 2, 7", ix.NumEquivalences(), ix.Sources().Invalid)
	}
	if e, ok := ix.Equivalence("do_x", h("1")); !ok || e.PN != "zlib" {
		t.Errorf("valid record: %+v", e)
	}
	if e, ok := ix.Equivalence("do_x", h("9")); !ok || e.Task != "zlib" || e.Unihash != h("a") {
		t.Errorf("valid record: %+v", e)
	}
	if _, ok := ix.ByOuthash("do_x", h("d")); ok {
		t.Error("kept a record whose taskhash has no valid record in force")
	}
	// Folded again, the invalid records are gone for good.
	again, err := Decode(bytes.NewReader(encode(t, ix)))
	if err != nil || !reflect.DeepEqual(eqDump(again), eqDump(ix)) || again.Sources().Invalid != 0 {
		t.Errorf("re-encoded: %v", err)
	}
	// And in a merged index, the count adds up.
	seg := &Segment{Key: segmentKey(1, "w"), Invalid: 2}
	if n := apply(ix, []*Segment{seg}).Sources().Invalid; n != 9 {
		t.Errorf("Invalid after a segment with 2 = %d", n)
	}
}

// TestDecodeEquivalences100k measures the memory of equivalences: heap
// bytes per record of a decoded 100,000-record snapshot with bitbake's
// shapes (one method per task, a few hundred recipes, most unihashes
// equal to their taskhash).
func TestDecodeEquivalences100k(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	const n = 100_000
	data := encode(t, realisticEquivalences(n, 1))
	ix, elapsed, heap := timedDecode(t, data)
	per := heap / n
	t.Logf("100k equivalences: snapshot %d bytes (%.1f/record), decode %v, heap %.1f bytes/record",
		len(data), float64(len(data))/n, elapsed, per)
	if ix.NumEquivalences() != n {
		t.Fatalf("NumEquivalences = %d", ix.NumEquivalences())
	}
	// 40-byte entry, 64 to 96 bytes of hashes, 8 of lookup tables.
	if per > 150 {
		t.Errorf("heap %.1f bytes/record, want at most 150", per)
	}
	runtime.KeepAlive(ix)
	runtime.KeepAlive(data)
}

// realisticEquivalences returns an index of n records in force shaped like
// a hash equivalence server's.
func realisticEquivalences(n int, seed uint64) *Index {
	r := rand.New(rand.NewPCG(seed, 3))
	tasks := []string{"do_populate_sysroot", "do_package", "do_packagedata", "do_package_write_rpm", "do_deploy",
		"do_populate_lic", "do_package_qa", "do_create_spdx", "do_fetch", "do_unpack", "do_patch"}
	eqs := make([]Equivalence, n)
	for i := range eqs {
		task := tasks[r.IntN(len(tasks))]
		pn := fmt.Sprint("recipe", r.IntN(400))
		e := Equivalence{Method: "oe.sstatesig.OEOuthashBasic:" + task, Taskhash: randomHash(r), Outhash: randomHash(r),
			PN: pn, PV: fmt.Sprint("1.", len(pn)%9), PR: "r0", Task: task, Owner: []string{"", "ci"}[r.IntN(2)],
			Created: time.Unix(1_750_000_000+int64(i), int64(r.IntN(1e6))*1000)}
		e.Unihash = e.Taskhash
		if r.IntN(4) == 0 {
			e.Unihash = randomHash(r)
		}
		eqs[i] = e
	}
	return withEqs(New(nil, time.Unix(1_750_000_000, 0)), eqs...)
}

func BenchmarkEquivalenceLookup(b *testing.B) {
	ix := realisticEquivalences(100_000, 1)
	all := collectEqs(ix)
	b.Run("Equivalence", func(b *testing.B) {
		i := 0
		for b.Loop() {
			e := &all[i%len(all)]
			if _, ok := ix.Equivalence(e.Method, e.Taskhash); !ok {
				b.Fatal("miss")
			}
			i++
		}
	})
	b.Run("UnihashKnown", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if !ix.UnihashKnown(all[i%len(all)].Unihash) {
				b.Fatal("miss")
			}
			i++
		}
	})
	b.Run("ByOuthash", func(b *testing.B) {
		i := 0
		for b.Loop() {
			e := &all[i%len(all)]
			if _, ok := ix.ByOuthash(e.Method, e.Outhash); !ok {
				b.Fatal("miss")
			}
			i++
		}
	})
}

// BenchmarkDecode100kEquivalences decodes a snapshot of 100,000
// equivalence records and reports the heap they keep.
func BenchmarkDecode100kEquivalences(b *testing.B) {
	const n = 100_000
	benchDecode(b, encode(b, realisticEquivalences(n, 1)), n, "eq")
}

// BenchmarkApplyReported applies a segment of 50 reports to an index with
// 10,000 journal equivalences: the cost of Live.Apply on a busy server.
func BenchmarkApplyReported(b *testing.B) {
	ix := realisticEquivalences(10_000, 2) // all in the journal's run
	seg := &Segment{Key: segmentKey(1, "w")}
	for e := range realisticEquivalences(50, 3).Equivalences {
		seg.Reported = append(seg.Reported, e)
	}
	b.ReportAllocs()
	for b.Loop() {
		apply(ix, []*Segment{seg})
	}
}
