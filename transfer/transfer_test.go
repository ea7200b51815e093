package transfer

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/file"
	"github.com/sstatefs/sstatefs/backend/httpstore"
	"github.com/sstatefs/sstatefs/index"
)

type recorder struct {
	mu   sync.Mutex
	objs []index.Object
}

func (r *recorder) Added(ctx context.Context, o index.Object) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.objs = append(r.objs, o)
	return nil
}

// countingStore counts creates on a real store and can fail them.
type countingStore struct {
	backend.Store
	creates atomic.Int64
	failKey string
}

func (s *countingStore) Create(ctx context.Context, key string, r io.Reader, size int64) error {
	s.creates.Add(1)
	if key == s.failKey {
		return errors.New("injected failure")
	}
	return s.Store.Create(ctx, key, r, size)
}

func hashKey(i int) string {
	h := sha256.Sum256([]byte{byte(i)})
	return hex.EncodeToString(h[:])
}

func objKey(i int, task string) string {
	h := hashKey(i)
	return "debian-12/" + h[0:2] + "/" + h[2:4] + "/sstate:p" + string(rune('a'+i)) + ":x86_64-linux:1.0:r0:x86_64:14:" + h + "_" + task + ".tar.zst"
}

func write(t *testing.T, dir, key string, data []byte) {
	t.Helper()
	p := filepath.Join(dir, key)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func rnd(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestPushSkipsResumesAndRecords(t *testing.T) {
	local := t.TempDir()
	want := map[string][]byte{}
	for i := range 12 {
		k := objKey(i, "populate_sysroot")
		want[k] = rnd(1000 + i)
		want[k+".siginfo"] = rnd(100)
	}
	for k, d := range want {
		write(t, local, k, d)
	}
	// not objects: bitbake temp files, locks, the sanity check
	write(t, local, objKey(0, "populate_sysroot")+"Ab3x_9Qz", []byte("tmp"))
	write(t, local, objKey(1, "populate_sysroot")+".lock", nil)
	write(t, local, strings.Repeat("z", 200), nil)

	fstore, _ := file.New(t.TempDir())
	store := &countingStore{Store: fstore, failKey: objKey(3, "populate_sysroot")}
	rec := &recorder{}
	var lastDone, lastTotal int
	res, err := Push(context.Background(), PushOptions{Dir: local, Store: store, Recorder: rec, Jobs: 4,
		Progress: func(d, tot int, db, tb int64) { lastDone, lastTotal = d, tot }})
	if err == nil || len(res.Failed) != 1 || !strings.Contains(err.Error(), objKey(3, "populate_sysroot")) {
		t.Fatalf("push with one failing object: %+v, %v", res, err)
	}
	if res.Uploaded != 23 || res.Ignored != 3 || lastDone != 24 || lastTotal != 24 {
		t.Fatalf("first push: %+v, progress %d/%d", res, lastDone, lastTotal)
	}
	// resume: only the failed object is uploaded; the index skips the rest
	store.failKey = ""
	known := index.New(rec.objs, rec.objs[0].ModTime)
	before := store.creates.Load()
	res, err = Push(context.Background(), PushOptions{Dir: local, Store: store, Recorder: rec, Known: known})
	if err != nil || res.Uploaded != 1 || res.Skipped != 23 {
		t.Fatalf("resumed push: %+v, %v", res, err)
	}
	if n := store.creates.Load() - before; n != 1 {
		t.Fatalf("resumed push created %d objects, want 1", n)
	}
	// without an index, existing objects are compared and recorded, not replaced
	res, err = Push(context.Background(), PushOptions{Dir: local, Store: store, Recorder: &recorder{}})
	if err != nil || res.Existing != 24 || res.Uploaded != 0 {
		t.Fatalf("push without index: %+v, %v", res, err)
	}
	for k, d := range want {
		got, err := os.ReadFile(filepath.Join(fstore.Root(), k))
		if err != nil || !bytes.Equal(got, d) {
			t.Fatalf("%s in the store: %v", k, err)
		}
	}
	recorded := map[string]index.Object{}
	for _, o := range rec.objs {
		recorded[o.Key] = o
	}
	for k, d := range want {
		if o, ok := recorded[k]; !ok || o.SHA256 != sha256.Sum256(d) || o.Size != int64(len(d)) {
			t.Errorf("%s recorded as %+v", k, o)
		}
	}
	// a local object that differs from the store's: the store's is kept
	write(t, local, objKey(0, "populate_sysroot"), []byte("different"))
	res, err = Push(context.Background(), PushOptions{Dir: local, Store: store, Recorder: &recorder{}})
	if err != nil || res.Conflicts != 1 {
		t.Fatalf("conflict: %+v, %v", res, err)
	}
	if got, _ := os.ReadFile(filepath.Join(fstore.Root(), objKey(0, "populate_sysroot"))); bytes.Equal(got, []byte("different")) {
		t.Fatal("push overwrote an existing object")
	}
}

func TestPushRefusesReadOnly(t *testing.T) {
	ro := readOnly{}
	_, err := Push(context.Background(), PushOptions{Dir: t.TempDir(), Store: ro, Recorder: &recorder{}})
	if !errors.Is(err, backend.ErrReadOnly) {
		t.Fatalf("push to a read-only store = %v", err)
	}
}

type readOnly struct{ backend.Store }

func (readOnly) ReadOnly() bool   { return true }
func (readOnly) Location() string { return "https://mirror.example/x" }

func TestExport(t *testing.T) {
	fstore, _ := file.New(t.TempDir())
	ctx := context.Background()
	data := map[string][]byte{}
	for i := range 5 {
		for _, k := range []string{objKey(i, "package"), objKey(i, "package") + ".siginfo"} {
			data[k] = rnd(500 + i)
			fstore.Create(ctx, k, bytes.NewReader(data[k]), int64(len(data[k])))
		}
	}
	ix, err := index.Build(ctx, fstore, index.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	res, err := Export(ctx, ExportOptions{Dir: dst, Sources: []Source{{Store: fstore, Index: ix}}})
	if err != nil || res.Written != 10 {
		t.Fatalf("export: %+v %v", res, err)
	}
	for k, d := range data {
		got, err := os.ReadFile(filepath.Join(dst, k))
		if err != nil || !bytes.Equal(got, d) {
			t.Fatalf("%s: %v", k, err)
		}
	}
	// again: everything is skipped
	if res, err := Export(ctx, ExportOptions{Dir: dst, Sources: []Source{{Store: fstore, Index: ix}}}); err != nil || res.Skipped != 10 || res.Written != 0 {
		t.Fatalf("second export: %+v %v", res, err)
	}
	// a list: the object, its siginfo, and a missing one
	dst2 := t.TempDir()
	res, err = Export(ctx, ExportOptions{Dir: dst2, Sources: []Source{{Store: fstore, Index: ix}}, Keys: []string{objKey(2, "package"), "# comment", objKey(9, "package")}})
	if err != nil || res.Written != 2 || len(res.Missing) != 1 {
		t.Fatalf("list export: %+v %v", res, err)
	}
	// an invalid key in the list is reported and the others go on
	dst4 := t.TempDir()
	res, err = Export(ctx, ExportOptions{Dir: dst4, Sources: []Source{{Store: fstore, Index: ix}}, Keys: []string{"ab/../../etc/shadow", objKey(3, "package")}})
	if err != nil || res.Written != 2 || len(res.Invalid) != 1 || !strings.Contains(res.Invalid[0].Error(), "etc/shadow") {
		t.Fatalf("list with an invalid key: %+v %v", res, err)
	}
	// a store object whose bytes do not match the index: error, no file
	p := filepath.Join(fstore.Root(), objKey(4, "package"))
	bad := append([]byte(nil), data[objKey(4, "package")]...)
	bad[0] ^= 1
	os.WriteFile(p, bad, 0o644)
	dst3 := t.TempDir()
	res, err = Export(ctx, ExportOptions{Dir: dst3, Sources: []Source{{Store: fstore, Index: ix}}, Keys: []string{objKey(4, "package")}})
	if err == nil || !strings.Contains(err.Error(), "does not match the index") {
		t.Fatalf("corrupt object exported: %+v %v", res, err)
	}
	if _, err := os.Stat(filepath.Join(dst3, objKey(4, "package"))); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a corrupt object was written")
	}
}

// TestPushRecordsChunks: push records the chunk digests of a large object
// (from the pass that hashes it), through a real journal segment into the
// index readers load, and on into a snapshot.
func TestPushRecordsChunks(t *testing.T) {
	local := t.TempDir()
	k := objKey(1, "populate_sysroot")
	data := rnd(2*index.ChunkSize + 4321)
	write(t, local, k, data)
	write(t, local, objKey(2, "populate_sysroot"), []byte("small"))
	fstore, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	j := index.NewJournal(fstore, index.JournalOptions{Writer: "push"})
	if _, err := Push(ctx, PushOptions{Dir: local, Store: fstore, Recorder: j}); err != nil {
		t.Fatal(err)
	}
	var want [][32]byte
	for off := 0; off < len(data); off += index.ChunkSize {
		want = append(want, sha256.Sum256(data[off:min(off+index.ChunkSize, len(data))]))
	}
	check := func(ix *index.Index, what string) {
		t.Helper()
		o, ok := ix.Lookup(k)
		if !ok || o.SHA256 != sha256.Sum256(data) || !reflect.DeepEqual(o.Chunks, want) {
			t.Fatalf("%s: %d chunk digests recorded, want %d", what, len(o.Chunks), len(want))
		}
		if o, _ := ix.Lookup(objKey(2, "populate_sysroot")); o.Chunks != nil {
			t.Fatalf("%s: chunk digests for a small object", what)
		}
	}
	ix, err := index.LoadAll(ctx, fstore)
	if err != nil {
		t.Fatal(err)
	}
	check(ix, "journal")
	if err := index.Save(ctx, fstore, ix); err != nil {
		t.Fatal(err)
	}
	snap, err := index.LoadSnapshot(ctx, fstore)
	if err != nil {
		t.Fatal(err)
	}
	check(snap, "snapshot")
}

// TestPushNeverFollowsLinks: links under sstate names (to a secret outside,
// as a local user could plant; bitbake's own links to file:// mirror
// objects look the same) and names with a newline are not uploaded, and
// each is warned about by name.
func TestPushNeverFollowsLinks(t *testing.T) {
	local := t.TempDir()
	outside := t.TempDir()
	secret := filepath.Join(outside, "shadow")
	write(t, outside, "shadow", []byte("root:secret"))
	good := objKey(0, "populate_sysroot")
	write(t, local, good, []byte("good object"))
	linked := objKey(1, "populate_sysroot")
	os.MkdirAll(filepath.Dir(filepath.Join(local, linked)), 0o755)
	if err := os.Symlink(secret, filepath.Join(local, linked)); err != nil {
		t.Fatal(err)
	}
	// a linked directory holding an object: never entered
	write(t, outside, "ab/"+filepath.Base(objKey(2, "package")), []byte("outside object"))
	os.MkdirAll(filepath.Dir(filepath.Join(local, filepath.Dir(objKey(2, "package")))), 0o755)
	if err := os.Symlink(filepath.Join(outside, "ab"), filepath.Join(local, filepath.Dir(objKey(2, "package")))); err != nil {
		t.Fatal(err)
	}
	newline := strings.Replace(objKey(3, "package"), "sstate:pd:", "sstate:pd\nINFO forged:", 1)
	write(t, local, newline, []byte("x"))

	var logBuf bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logBuf}, nil))
	fstore, _ := file.New(t.TempDir())
	res, err := Push(context.Background(), PushOptions{Dir: local, Store: fstore, Recorder: &recorder{}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if res.Uploaded != 1 || res.Symlinks != 1 || res.BadNames != 1 {
		t.Errorf("push: %+v; want 1 uploaded, 1 link, 1 bad name", res)
	}
	var inStore []string
	fstore.List(context.Background(), "", func(oi backend.ObjectInfo) error { inStore = append(inStore, oi.Key); return nil })
	if len(inStore) != 1 || inStore[0] != good {
		t.Errorf("the store holds %q, want only %s", inStore, good)
	}
	mu.Lock()
	logged := logBuf.String()
	mu.Unlock()
	for _, want := range []string{filepath.Join(local, linked), "file://", strconv.Quote(filepath.Join(local, newline))} {
		if !strings.Contains(logged, want) {
			t.Errorf("warnings do not mention %q:\n%s", want, logged)
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestExportNeverWritesThroughLinks plants links in the destination: under
// an object's name (to a file outside of the object's size, which must not
// pass for the object) and in place of a directory. Nothing outside
// changes; the object under the link is written in its place.
func TestExportNeverWritesThroughLinks(t *testing.T) {
	ctx := context.Background()
	fstore, _ := file.New(t.TempDir())
	a, b := objKey(0, "package"), objKey(1, "package")
	data := map[string][]byte{a: rnd(300), b: rnd(400)}
	for k, d := range data {
		if err := fstore.Create(ctx, k, bytes.NewReader(d), int64(len(d))); err != nil {
			t.Fatal(err)
		}
	}
	ix, err := index.Build(ctx, fstore, index.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dst, outside := t.TempDir(), t.TempDir()
	victim := filepath.Join(outside, "victim")
	write(t, outside, "victim", bytes.Repeat([]byte("v"), len(data[a])))
	os.MkdirAll(filepath.Dir(filepath.Join(dst, a)), 0o755)
	if err := os.Symlink(victim, filepath.Join(dst, a)); err != nil {
		t.Fatal(err)
	}
	// b's "debian-12/xx" directory is a link to outside
	bdir := filepath.Dir(filepath.Join(dst, b))
	os.MkdirAll(filepath.Dir(bdir), 0o755)
	if err := os.Symlink(outside, bdir); err != nil {
		t.Fatal(err)
	}

	res, err := Export(ctx, ExportOptions{Dir: dst, Sources: []Source{{Store: fstore, Index: ix}}})
	if err == nil || len(res.Failed) != 1 || !strings.Contains(err.Error(), b) {
		t.Errorf("export: %+v, %v; want %s to fail", res, err, b)
	}
	if got, _ := os.ReadFile(victim); !bytes.Equal(got, bytes.Repeat([]byte("v"), len(data[a]))) {
		t.Error("export wrote through the link planted under an object's name")
	}
	if fi, err := os.Lstat(filepath.Join(dst, a)); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("%s is not a regular file after export: %v", a, err)
	}
	if got, _ := os.ReadFile(filepath.Join(dst, a)); !bytes.Equal(got, data[a]) {
		t.Errorf("%s does not hold the object", a)
	}
	entries, _ := os.ReadDir(outside)
	for _, e := range entries {
		if e.Name() != "victim" {
			t.Errorf("export wrote %s outside the destination", e.Name())
		}
	}
}

// TestPushOutcomes: each object's outcome is tallied as what it is, and
// the index learns what the store holds: new and already-there objects with
// the store's mtime, a conflicting one not at all.
func TestPushOutcomes(t *testing.T) {
	local := t.TempDir()
	fresh, same, same2, other := objKey(0, "package"), objKey(1, "package"), objKey(3, "package"), objKey(2, "package")
	data := map[string][]byte{fresh: rnd(3000), same: rnd(2000), same2: rnd(1500), other: rnd(1000)}
	for k, d := range data {
		write(t, local, k, d)
	}
	store, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for k, d := range map[string][]byte{same: data[same], same2: data[same2], other: rnd(len(data[other]))} {
		if err := store.Create(ctx, k, bytes.NewReader(d), int64(len(d))); err != nil {
			t.Fatal(err)
		}
	}
	rec := &recorder{}
	res, err := Push(ctx, PushOptions{Dir: local, Store: store, Recorder: rec})
	if err != nil || res.Uploaded != 1 || res.UploadedBytes != 3000 || res.Existing != 2 || res.Conflicts != 1 || len(res.Failed) != 0 {
		t.Fatalf("push: %+v, %v", res, err)
	}
	got := map[string]index.Object{}
	for _, o := range rec.objs {
		got[o.Key] = o
	}
	if len(got) != 3 {
		t.Fatalf("recorded %d objects, want the new one and the two already there: %+v", len(got), rec.objs)
	}
	for _, k := range []string{fresh, same, same2} {
		oi, err := store.Stat(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if o := got[k]; o.SHA256 != sha256.Sum256(data[k]) || o.Size != oi.Size || !o.ModTime.Equal(oi.ModTime) {
			t.Errorf("%s recorded as %+v, the store has %+v", k, o, oi)
		}
	}
}

// failingStat is a real store whose Stat fails (a store that is down).
type failingStat struct{ backend.Store }

func (failingStat) Stat(context.Context, string) (backend.ObjectInfo, error) {
	return backend.ObjectInfo{}, errors.New("injected: store down")
}

// TestExportMerged exports three stores in trust order: an indexed file
// store, a file store without an index (listed) and an HTTP mirror without
// an index (which cannot be listed). A name in several stores comes from
// the most trusted one; the mirror is left out of a whole export and named;
// a list finds its objects there; a store that cannot answer for a name is
// not replaced by a less trusted one.
func TestExportMerged(t *testing.T) {
	ctx := context.Background()
	a, _ := file.New(t.TempDir())
	b, _ := file.New(t.TempDir())
	k0, k1, k2, k3, k9 := objKey(0, "package"), objKey(1, "package"), objKey(2, "package"), objKey(3, "package"), objKey(9, "package")
	aData := map[string][]byte{k0: rnd(100), k1: rnd(200), k1 + ".siginfo": rnd(10)}
	bData := map[string][]byte{k1: rnd(200), k1 + ".siginfo": rnd(10), k2: rnd(300)}
	for st, data := range map[*file.Store]map[string][]byte{a: aData, b: bData} {
		for k, d := range data {
			if err := st.Create(ctx, k, bytes.NewReader(d), int64(len(d))); err != nil {
				t.Fatal(err)
			}
		}
	}
	ixA, err := index.Build(ctx, a, index.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mirrorDir := t.TempDir()
	k3Data := rnd(400)
	write(t, mirrorDir, k3, k3Data)
	srv := httptest.NewServer(http.FileServer(http.Dir(mirrorDir)))
	t.Cleanup(srv.Close)
	mirror, err := httpstore.New(httpstore.Config{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	sources := []Source{{Name: "a", Store: a, Index: ixA}, {Name: "b", Store: b}, {Name: "public", Store: mirror}}

	dst := t.TempDir()
	res, err := Export(ctx, ExportOptions{Dir: dst, Sources: sources})
	if err != nil {
		t.Fatalf("merged export: %+v, %v", res, err)
	}
	want := map[string][]byte{k0: aData[k0], k1: aData[k1], k1 + ".siginfo": aData[k1+".siginfo"], k2: bData[k2]}
	for k, d := range want {
		if got, err := os.ReadFile(filepath.Join(dst, k)); err != nil || !bytes.Equal(got, d) {
			t.Errorf("%s: not the most trusted store's bytes (%v)", k, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dst, k3)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the unlisted mirror's object was exported: %v", err)
	}
	wantBy := []SourceCount{{Written: 3, WrittenBytes: 310}, {Written: 1, WrittenBytes: 300}, {}}
	if res.Written != 4 || !reflect.DeepEqual(res.BySource, wantBy) || !reflect.DeepEqual(res.Unlisted, []string{"public"}) {
		t.Errorf("merged export result %+v, want 4 written, by source %+v, public unlisted", res, wantBy)
	}

	// the other trust order: b's bytes win
	dst2 := t.TempDir()
	if res, err := Export(ctx, ExportOptions{Dir: dst2, Sources: []Source{sources[1], sources[0]}}); err != nil || res.Written != 4 {
		t.Fatalf("export b, a: %+v, %v", res, err)
	}
	if got, _ := os.ReadFile(filepath.Join(dst2, k1)); !bytes.Equal(got, bData[k1]) {
		t.Errorf("%s: with b first, not b's bytes", k1)
	}

	// a list: each name from the first store that has it, the mirror
	// probed; an absent name is missing
	dst3 := t.TempDir()
	res, err = Export(ctx, ExportOptions{Dir: dst3, Sources: sources, Keys: []string{k1, k2, k3, k9}})
	if err != nil || !reflect.DeepEqual(res.Missing, []string{k9}) || !reflect.DeepEqual(res.BySource, []SourceCount{{Written: 2, WrittenBytes: 210}, {Written: 1, WrittenBytes: 300}, {Written: 1, WrittenBytes: 400}}) {
		t.Fatalf("list export: %+v, %v", res, err)
	}
	for k, d := range map[string][]byte{k1: aData[k1], k2: bData[k2], k3: k3Data} {
		if got, _ := os.ReadFile(filepath.Join(dst3, k)); !bytes.Equal(got, d) {
			t.Errorf("list export %s: not the most trusted store's bytes", k)
		}
	}

	// a more trusted store that cannot say whether it has k2: k2 fails,
	// b's copy is not taken in its place
	dst4 := t.TempDir()
	down := []Source{{Name: "a", Store: failingStat{a}, Index: ixA}, sources[1]}
	res, err = Export(ctx, ExportOptions{Dir: dst4, Sources: down, Keys: []string{k2}})
	if len(res.Failed) != 1 || !strings.Contains(res.Failed[0].Error(), "store a") {
		t.Errorf("list export with a down store: %+v, %v; want k2 failed naming store a", res, err)
	}
	if _, err := os.Stat(filepath.Join(dst4, k2)); !errors.Is(err, os.ErrNotExist) {
		t.Error("a less trusted store's object stood in for a store that is down")
	}

	// the mirror alone cannot be exported whole
	if _, err := Export(ctx, ExportOptions{Dir: t.TempDir(), Sources: sources[2:]}); err == nil || !strings.Contains(err.Error(), "cannot be listed") {
		t.Errorf("whole export of an HTTP mirror alone: %v", err)
	}
}
