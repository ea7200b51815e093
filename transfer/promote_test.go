package transfer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/index/indextest"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/file"
	"github.com/sstatefs/sstatefs/backend/httpstore"
	"github.com/sstatefs/sstatefs/index"
)

const testMethod = "oe.sstatesig.OEOuthashBasic"

// hexOf is a 64-digit hash made from s.
func hexOf(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// equivFor is an equivalence record naming object i's unihash.
func equivFor(i int, taskSeed string) index.Equivalence {
	return index.Equivalence{Method: testMethod, Taskhash: hexOf("task" + taskSeed), Outhash: hexOf("out" + taskSeed),
		Unihash: hashKey(i), PN: "p", Task: "do_populate_sysroot"}
}

// source is a file:// store with an index built over its objects, the
// given equivalence records and access records in its journal.
type source struct {
	store *file.Store
	data  map[string][]byte
}

func newSource(t *testing.T, data map[string][]byte, eqs []index.Equivalence, access map[string]time.Time) source {
	t.Helper()
	s, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for k, d := range data {
		write(t, s.Root(), k, d)
	}
	indextest.Write(t, s, "project", eqs, access)
	return source{store: s, data: data}
}

func (s source) index(t *testing.T) *index.Index { return loadAll(t, s.store) }

func loadAll(t *testing.T, s backend.Store) *index.Index {
	t.Helper()
	ix, err := index.LoadAll(context.Background(), s)
	if errors.Is(err, index.ErrNoIndex) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return ix
}

// promoteTo runs Promote from src into dst with dst's journal and index.
func promoteTo(t *testing.T, ctx context.Context, src backend.Store, srcIx *index.Index, dst backend.Store, opt PromoteOptions) (PromoteResult, error) {
	t.Helper()
	opt.From, opt.FromIndex, opt.To = src, srcIx, dst
	opt.ToIndex = loadAll(t, dst)
	j := index.NewJournal(dst, index.JournalOptions{Writer: "promote"})
	opt.Recorder = j
	opt.TempDir = t.TempDir()
	res, err := Promote(ctx, opt)
	if ferr := j.Flush(context.Background()); ferr != nil {
		t.Fatal(ferr)
	}
	return res, err
}

func readKey(t *testing.T, s backend.Store, key string) ([]byte, error) {
	t.Helper()
	rc, err := s.Open(context.Background(), key, 0, -1)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func keysOf(m map[string][]byte) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// TestPromoteCarriesCompanionsAndEquivalences promotes a whole indexed
// store into an empty one: every object with its companions arrives with
// the source's bytes and digests, recorded in the destination's index, and
// the equivalence records naming promoted objects resolve there; a record
// naming no object stays behind. A second run copies nothing.
func TestPromoteCarriesCompanionsAndEquivalences(t *testing.T) {
	data := map[string][]byte{}
	for i := range 5 {
		k := objKey(i, "populate_sysroot")
		data[k] = rnd(3000 + i)
		data[k+".siginfo"] = rnd(200)
	}
	data[objKey(0, "populate_sysroot")+".sig"] = rnd(50)
	eqs := []index.Equivalence{equivFor(0, "a"), equivFor(0, "b"), equivFor(3, "c"), equivFor(9, "orphan")}
	src := newSource(t, data, eqs, nil)
	dst, _ := file.New(t.TempDir())

	var lastDone, lastTotal int
	res, err := promoteTo(t, context.Background(), src.store, src.index(t), dst, PromoteOptions{Jobs: 3,
		Progress: func(d, tot int, _, _ int64) { lastDone, lastTotal = d, tot }})
	if err != nil || res.Promoted != len(data) || res.Existing != 0 || len(res.Conflicts) != 0 || len(res.Unverified) != 0 {
		t.Fatalf("promote: %+v, %v", res, err)
	}
	// progress counts objects with their companions
	if lastDone != 5 || lastTotal != 5 {
		t.Errorf("progress %d/%d, want 5/5", lastDone, lastTotal)
	}
	if res.Equivalences != 3 {
		t.Errorf("equivalences carried: %d, want 3 (the orphan stays)", res.Equivalences)
	}
	dix := loadAll(t, dst)
	for k, d := range data {
		got, err := readKey(t, dst, k)
		if err != nil || !bytes.Equal(got, d) {
			t.Errorf("%s at the destination: %v", k, err)
		}
		if o, ok := dix.Lookup(k); !ok || o.SHA256 != sha256.Sum256(d) {
			t.Errorf("%s in the destination's index: %+v, %v", k, o, ok)
		}
	}
	for _, e := range eqs[:3] {
		if got, ok := dix.Equivalence(e.Method, e.Taskhash); !ok || got.Unihash != e.Unihash {
			t.Errorf("equivalence %s at the destination: %+v, %v", e.Taskhash, got, ok)
		}
	}
	if _, ok := dix.Equivalence(testMethod, eqs[3].Taskhash); ok {
		t.Error("an equivalence naming no promoted object was carried")
	}

	res, err = promoteTo(t, context.Background(), src.store, src.index(t), dst, PromoteOptions{})
	if err != nil || res.Promoted != 0 || res.Existing != len(data) || res.Equivalences != 0 || res.EquivalencesKnown != 3 {
		t.Fatalf("second promote: %+v, %v", res, err)
	}
}

// TestPromoteConflictKept: the destination holds other bytes under a name
// its index does not know: the conditional create finds them, they are
// kept and reported (on every run), and neither its .siginfo nor the
// equivalence naming that object is carried.
func TestPromoteConflictKept(t *testing.T) {
	a, b := objKey(0, "populate_sysroot"), objKey(1, "populate_sysroot")
	data := map[string][]byte{a: rnd(2000), a + ".siginfo": rnd(100), b: rnd(2000)}
	src := newSource(t, data, []index.Equivalence{equivFor(0, "a"), equivFor(1, "b")}, nil)
	dst, _ := file.New(t.TempDir())
	theirs := []byte("the company's own build of it")
	write(t, dst.Root(), a, theirs)

	for run := range 2 {
		res, err := promoteTo(t, context.Background(), src.store, src.index(t), dst, PromoteOptions{})
		if err != nil || len(res.Conflicts) != 1 || res.Conflicts[0] != a {
			t.Fatalf("run %d: %+v, %v", run, res, err)
		}
		if got, _ := readKey(t, dst, a); !bytes.Equal(got, theirs) {
			t.Fatalf("run %d: the destination's object was replaced", run)
		}
		if run == 0 && (res.Promoted != 1 || res.Equivalences != 1) {
			t.Fatalf("run 0: %+v", res)
		}
	}
	if _, err := dst.Stat(context.Background(), a+".siginfo"); !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("the .siginfo of a conflicting object went beside the destination's own: %v", err)
	}
	dix := loadAll(t, dst)
	if _, ok := dix.Equivalence(testMethod, equivFor(0, "a").Taskhash); ok {
		t.Error("the equivalence of a conflicting object was carried")
	}
	if _, ok := dix.Equivalence(testMethod, equivFor(1, "b").Taskhash); !ok {
		t.Error("the equivalence of the promoted object is missing")
	}
}

// TestPromoteDigestMismatch: bytes in the source that are not those its
// index records never reach the destination.
func TestPromoteDigestMismatch(t *testing.T) {
	a, b := objKey(0, "populate_sysroot"), objKey(1, "populate_sysroot")
	src := newSource(t, map[string][]byte{a: rnd(4000), b: rnd(4000)}, nil, nil)
	srcIx := src.index(t)
	write(t, src.store.Root(), a, rnd(4000)) // same size, other bytes
	dst, _ := file.New(t.TempDir())
	res, err := promoteTo(t, context.Background(), src.store, srcIx, dst, PromoteOptions{})
	if !errors.Is(err, ErrDigestMismatch) || len(res.Failed) != 1 || !strings.Contains(err.Error(), a) || res.Promoted != 1 {
		t.Fatalf("promote of a corrupt source object: %+v, %v", res, err)
	}
	if _, err := dst.Stat(context.Background(), a); !errors.Is(err, backend.ErrNotExist) {
		t.Fatalf("the corrupt object reached the destination: %v", err)
	}
}

// cancellingStore is a real store whose Open cancels the run at the
// cancelAt-th call (counting from 1; 0: never) and counts Opens.
type cancellingStore struct {
	backend.Store
	opens    atomic.Int64
	cancelAt int64
	cancel   context.CancelFunc
}

func (s *cancellingStore) Open(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	if s.opens.Add(1) == s.cancelAt {
		s.cancel()
		return nil, context.Canceled
	}
	return s.Store.Open(ctx, key, off, n)
}

// TestPromoteResumes: a run cancelled midway leaves some objects promoted;
// the next run reads only the others from the source.
func TestPromoteResumes(t *testing.T) {
	data := map[string][]byte{}
	for i := range 8 {
		data[objKey(i, "package")] = rnd(5000)
	}
	src := newSource(t, data, []index.Equivalence{equivFor(7, "z")}, nil)
	dst, _ := file.New(t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wrapped := &cancellingStore{Store: src.store, cancelAt: 4, cancel: cancel}
	res, err := promoteTo(t, ctx, wrapped, src.index(t), dst, PromoteOptions{Jobs: 1})
	// what the interruption left undone is not counted as failed
	if !errors.Is(err, context.Canceled) || len(res.Failed) != 0 {
		t.Fatalf("cancelled promote: %+v, %v", res, err)
	}
	done := loadAll(t, dst).Len()
	if done == 0 || done >= len(data) {
		t.Fatalf("after the cancelled run the destination records %d of %d objects", done, len(data))
	}

	wrapped = &cancellingStore{Store: src.store}
	res, err = promoteTo(t, context.Background(), wrapped, src.index(t), dst, PromoteOptions{Jobs: 2})
	if err != nil || res.Promoted+res.Existing != len(data) || res.Equivalences != 1 {
		t.Fatalf("resumed promote: %+v, %v", res, err)
	}
	if n := int(wrapped.opens.Load()); n != len(data)-done {
		t.Errorf("the resumed run read %d objects from the source, want %d", n, len(data)-done)
	}
	for k, d := range data {
		if got, err := readKey(t, dst, k); err != nil || !bytes.Equal(got, d) {
			t.Errorf("%s at the destination: %v", k, err)
		}
	}
}

// TestPromoteAccessedSince selects the objects with an access record at or
// after the time, with their companions.
func TestPromoteAccessedSince(t *testing.T) {
	data := map[string][]byte{}
	for i := range 4 {
		k := objKey(i, "populate_sysroot")
		data[k] = rnd(1000)
		data[k+".siginfo"] = rnd(100)
	}
	since := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	access := map[string]time.Time{
		objKey(0, "populate_sysroot"): since.Add(48 * time.Hour),
		objKey(1, "populate_sysroot"): since, // at the bound: selected
		objKey(2, "populate_sysroot"): since.Add(-time.Hour),
	}
	src := newSource(t, data, nil, access)
	dst, _ := file.New(t.TempDir())
	res, err := promoteTo(t, context.Background(), src.store, src.index(t), dst, PromoteOptions{AccessedSince: since})
	if err != nil || res.Promoted != 4 {
		t.Fatalf("promote --accessed-since: %+v, %v", res, err)
	}
	for i := range 4 {
		k := objKey(i, "populate_sysroot")
		for _, key := range []string{k, k + ".siginfo"} {
			_, err := dst.Stat(context.Background(), key)
			if want := i < 2; (err == nil) != want {
				t.Errorf("%s at the destination: %v, want it there: %v", key, err, want)
			}
		}
	}
}

// TestPromoteWithoutSourceIndex: a store without an index needs a list;
// listed objects (by key or bare file name) come with the companions the
// store has, marked unverified; a name it lacks is reported.
func TestPromoteWithoutSourceIndex(t *testing.T) {
	s, _ := file.New(t.TempDir())
	top := "ab/cd/sstate:q::1.0:r0::14:abcd" + strings.Repeat("0", 60) + "_unpack.tar.zst"
	native := objKey(1, "populate_sysroot")
	data := map[string][]byte{top: rnd(100), top + ".siginfo": rnd(10), native: rnd(100)}
	for k, d := range data {
		write(t, s.Root(), k, d)
	}
	dst, _ := file.New(t.TempDir())
	_, err := promoteTo(t, context.Background(), s, nil, dst, PromoteOptions{})
	if !errors.Is(err, ErrNoSourceIndex) {
		t.Fatalf("promote everything of a store without an index: %v", err)
	}
	missing := "ab/cd/sstate:gone::1.0:r0::14:abcd" + strings.Repeat("1", 60) + "_unpack.tar.zst"
	res, err := promoteTo(t, context.Background(), s, nil, dst, PromoteOptions{Keys: []string{path.Base(top), native, missing}})
	if err != nil || res.Promoted != 3 || len(res.Missing) != 1 || res.Missing[0] != missing {
		t.Fatalf("promote listed objects: %+v, %v", res, err)
	}
	if want := keysOf(data); strings.Join(res.Unverified, " ") != strings.Join(want, " ") {
		t.Errorf("unverified = %q, want %q", res.Unverified, want)
	}
	for k, d := range data {
		if got, err := readKey(t, dst, k); err != nil || !bytes.Equal(got, d) {
			t.Errorf("%s at the destination: %v", k, err)
		}
	}
}

// TestPromoteBareNameFromIndex: a bare file name finds its native object
// through the source's index.
func TestPromoteBareNameFromIndex(t *testing.T) {
	k := objKey(2, "populate_sysroot")
	src := newSource(t, map[string][]byte{k: rnd(10), k + ".siginfo": rnd(10), objKey(3, "package"): rnd(10)}, nil, nil)
	dst, _ := file.New(t.TempDir())
	res, err := promoteTo(t, context.Background(), src.store, src.index(t), dst, PromoteOptions{Keys: []string{path.Base(k)}})
	if err != nil || res.Promoted != 2 || len(res.Unverified) != 0 {
		t.Fatalf("promote by file name: %+v, %v", res, err)
	}
}

// TestPromoteDryRun lists what would be copied, by key, and writes nothing.
func TestPromoteDryRun(t *testing.T) {
	a, b := objKey(0, "package"), objKey(1, "package")
	src := newSource(t, map[string][]byte{a: rnd(10), b: rnd(20)}, []index.Equivalence{equivFor(1, "b")}, nil)
	dstDir := t.TempDir()
	dst, _ := file.New(dstDir)
	res, err := Promote(context.Background(), PromoteOptions{From: src.store, FromIndex: src.index(t), To: dst, DryRun: true})
	if err != nil || len(res.Planned) != 2 || res.Planned[0].Key != b || res.Equivalences != 1 || res.Promoted != 0 {
		t.Fatalf("dry run: %+v, %v", res, err)
	}
	if ents, _ := os.ReadDir(dstDir); len(ents) != 0 {
		t.Fatalf("a dry run wrote %d entries into the destination", len(ents))
	}
}

// TestPromoteRefusedTargets: a read-only store (an HTTP mirror) and the
// source itself are refused before anything is read.
func TestPromoteRefusedTargets(t *testing.T) {
	src := newSource(t, map[string][]byte{objKey(0, "package"): rnd(10)}, nil, nil)
	srv := httptest.NewServer(http.FileServer(http.Dir(t.TempDir())))
	defer srv.Close()
	mirror, err := httpstore.New(httpstore.Config{URL: srv.URL + "/"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Promote(context.Background(), PromoteOptions{From: src.store, FromIndex: src.index(t), To: mirror, Recorder: index.NewJournal(mirror, index.JournalOptions{})})
	if !errors.Is(err, backend.ErrReadOnly) || !strings.Contains(err.Error(), mirror.Location()) {
		t.Errorf("promote into an HTTP mirror: %v", err)
	}
	same, _ := file.New(src.store.Root())
	_, err = Promote(context.Background(), PromoteOptions{From: src.store, FromIndex: src.index(t), To: same, Recorder: index.NewJournal(same, index.JournalOptions{})})
	if !errors.Is(err, ErrSameStore) {
		t.Errorf("promote into the source itself: %v", err)
	}
	if _, err := os.Stat(filepath.Join(src.store.Root(), objKey(0, "package"))); err != nil {
		t.Fatal(err)
	}
}
