package index

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/file"
)

// writeObjects puts n objects of the sample under s (behind its back, as
// bitbake would) and returns their content by key.
func writeObjects(t *testing.T, s *file.Store, keys []string) map[string][]byte {
	t.Helper()
	content := map[string][]byte{}
	for i, k := range keys {
		b := make([]byte, i*97%5000) // some empty
		rand.Read(b)
		writeFile(t, s, k, b)
		content[k] = b
	}
	return content
}

func writeFile(t *testing.T, s *file.Store, key string, b []byte) {
	t.Helper()
	p := filepath.Join(s.Root(), filepath.FromSlash(key))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func checkBuilt(t *testing.T, s *file.Store, ix *Index, content map[string][]byte) {
	t.Helper()
	if ix.Len() != len(content) {
		t.Errorf("Len = %d, want %d", ix.Len(), len(content))
	}
	var total int64
	for k, b := range content {
		o, ok := ix.Lookup(k)
		if !ok {
			t.Fatalf("%s missing", k)
		}
		fi, err := os.Stat(filepath.Join(s.Root(), filepath.FromSlash(k)))
		if err != nil {
			t.Fatal(err)
		}
		if o.SHA256 != sha256.Sum256(b) || o.Size != int64(len(b)) || !o.ModTime.Equal(fi.ModTime()) {
			t.Errorf("%s: got %x %d %v, want %x %d %v", k, o.SHA256, o.Size, o.ModTime,
				sha256.Sum256(b), len(b), fi.ModTime())
		}
		total += int64(len(b))
	}
	if ix.TotalSize() != total {
		t.Errorf("TotalSize = %d, want %d", ix.TotalSize(), total)
	}
}

func TestBuild(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	keys := realisticKeys(t)[:300]
	content := writeObjects(t, s, keys)
	// Not objects: metadata, and temp files of sstatefs and bitbake.
	if err := Save(ctx, s, New(nil, time.Now())); err != nil {
		t.Fatal(err)
	}
	pkg := keys[0]
	dir := pkg[:strings.LastIndexByte(pkg, '/')+1]
	for _, k := range []string{
		".sstatefs/journal/0001",
		pkg + "a1b2_c3d",            // NamedTemporaryFile of a package
		dir + "sigtask.k2j3h4g5",    // mkstemp of a siginfo
		pkg + ".tmp", pkg + ".lock", // mirror download
		dir + "." + "x.sstatefs-tmp",                    // file store temp
		"ab/cd/sstate:x::1:r0::10:ab_fetch.tgzQWERTYUI", // not a temp name: upper case
	} {
		writeFile(t, s, k, []byte("junk"))
	}
	content["ab/cd/sstate:x::1:r0::10:ab_fetch.tgzQWERTYUI"] = []byte("junk")

	start := time.Now()
	var calls, lastDone, lastTotal int
	var lastBytes int64
	ix, err := Build(ctx, s, BuildOptions{Concurrency: 3, Progress: func(done, total int, bytes int64) {
		calls++ // never concurrent, says the contract; -race checks it
		if done < lastDone || bytes < lastBytes {
			t.Errorf("progress went back: %d %d after %d %d", done, bytes, lastDone, lastBytes)
		}
		lastDone, lastTotal, lastBytes = done, total, bytes
	}})
	if err != nil {
		t.Fatal(err)
	}
	checkBuilt(t, s, ix, content)
	if ix.Created().Before(start.Add(-time.Second)) || ix.Created().After(time.Now()) {
		t.Errorf("Created = %v, build started %v", ix.Created(), start)
	}
	if calls != len(content)+1 || lastDone != len(content) || lastTotal != len(content) || lastBytes != ix.TotalSize() {
		t.Errorf("progress: %d calls, last (%d, %d, %d); want %d calls, last (%d, %d, %d)",
			calls, lastDone, lastTotal, lastBytes, len(content)+1, len(content), len(content), ix.TotalSize())
	}
}

func TestBuildReusesPrevious(t *testing.T) {
	ctx := context.Background()
	fs := newStore(t)
	content := writeObjects(t, fs, realisticKeys(t)[:100])
	prev, err := Build(ctx, fs, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}

	s := newCounting(fs)
	ix, err := Build(ctx, s, BuildOptions{Previous: prev, Progress: func(done, total int, _ int64) {
		if total != 0 {
			t.Errorf("progress total %d, want 0: nothing to read", total)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if n := s.ObjectOpens(); n != 0 {
		t.Errorf("%d objects opened, want none: all unchanged", n)
	}
	checkBuilt(t, fs, ix, content)

	// Change one object (content and mtime), add one, remove one.
	keys := realisticKeys(t)
	changed, added, removed := keys[3], keys[200], keys[4]
	content[changed] = []byte("new content")
	writeFile(t, fs, changed, content[changed])
	p := filepath.Join(fs.Root(), filepath.FromSlash(changed))
	if err := os.Chtimes(p, time.Time{}, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	content[added] = []byte("added")
	writeFile(t, fs, added, content[added])
	delete(content, removed)
	if err := fs.Delete(ctx, removed); err != nil {
		t.Fatal(err)
	}
	ix, err = Build(ctx, s, BuildOptions{Previous: prev})
	if err != nil {
		t.Fatal(err)
	}
	if s.ObjectOpens() != 2 || s.Opens(changed) != 1 || s.Opens(added) != 1 {
		t.Errorf("opens %v, want one each of the changed and the added object", s.opens)
	}
	checkBuilt(t, fs, ix, content)

	// A previous entry without a digest is not reused.
	var objs []Object
	for o := range prev.Objects {
		o.SHA256 = [32]byte{}
		objs = append(objs, o)
	}
	s2 := newCounting(fs)
	if _, err := Build(ctx, s2, BuildOptions{Previous: New(objs, time.Now())}); err != nil {
		t.Fatal(err)
	}
	if s2.ObjectOpens() != len(content) {
		t.Errorf("%d opens, want %d", s2.ObjectOpens(), len(content))
	}
}

// faultyStore fails Open of chosen keys.
type faultyStore struct {
	backend.Store
	mu   sync.Mutex
	errs map[string]error
}

func (f *faultyStore) Open(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	f.mu.Lock()
	err := f.errs[key]
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return f.Store.Open(ctx, key, off, n)
}

func TestBuildVanished(t *testing.T) {
	fs := newStore(t)
	keys := realisticKeys(t)[:50]
	content := writeObjects(t, fs, keys)
	gone := keys[7]
	delete(content, gone)
	s := &faultyStore{Store: fs, errs: map[string]error{gone: fmt.Errorf("%s: %w", gone, backend.ErrNotExist)}}
	ix, err := Build(context.Background(), s, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkBuilt(t, fs, ix, content)
	if _, ok := ix.Lookup(gone); ok {
		t.Error("vanished object indexed")
	}
}

func TestBuildError(t *testing.T) {
	fs := newStore(t)
	keys := realisticKeys(t)[:50]
	writeObjects(t, fs, keys)
	boom := errors.New("connection reset")
	s := &faultyStore{Store: fs, errs: map[string]error{keys[9]: boom}}
	ix, err := Build(context.Background(), s, BuildOptions{Concurrency: 2})
	if !errors.Is(err, boom) || ix != nil {
		t.Fatalf("Build = %v, want the store's error", err)
	}
	if !strings.Contains(err.Error(), keys[9]) || !strings.Contains(err.Error(), fs.Location()) {
		t.Errorf("error %q does not name the key and store", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Build(ctx, fs, BuildOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Build with a cancelled context = %v", err)
	}
}

func TestIsTempName(t *testing.T) {
	pkg := "ab/cd/sstate:zlib:core2-64-poky-linux:1.3:r0:core2-64:14:abcd_populate_sysroot.tar.zst"
	for key, want := range map[string]bool{
		pkg:                                     false,
		pkg + ".siginfo":                        false,
		pkg + ".sig":                            false,
		"ab/cd/sstate:x::1:r0::10:ab_fetch.tgz": false,
		pkg + "k2j3_h4g":                        true,
		pkg + "k2j3_h4":                         false, // 7 characters
		pkg + "k2j3_h4g5":                       false, // 9 characters
		"ab/cd/sigtask.abc123":                  true,
		pkg + ".tmp":                            true,
		pkg + ".lock":                           true,
		"ab/cd/.x.tar.zst.123.sstatefs-tmp":     true,
		"README":                                false,
	} {
		if got := isTempName(key); got != want {
			t.Errorf("isTempName(%q) = %v, want %v", key, got, want)
		}
	}
}

// publishDuringScan publishes an object and records it in the journal
// right after Build's listing of the store, as a mount would meanwhile.
type publishDuringScan struct {
	*file.Store
	t       *testing.T
	j       *Journal
	obj     Object
	content []byte
	once    sync.Once
}

func (p *publishDuringScan) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	err := p.Store.List(ctx, prefix, fn)
	if prefix == "" {
		p.once.Do(func() {
			writeFile(p.t, p.Store, p.obj.Key, p.content)
			if err := p.j.Added(ctx, p.obj); err != nil {
				p.t.Error(err)
			}
		})
	}
	return err
}

func TestBuildJournal(t *testing.T) {
	ctx := context.Background()
	fs := newStore(t)
	keys := realisticKeys(t)[:30]
	content := writeObjects(t, fs, keys[:20])
	a, b, gone, late := keys[0], keys[1], keys[25], keys[26]
	t0 := time.Unix(1_750_000_000, 0)

	// The previous snapshot knows an object deleted since, and an access.
	prev, err := Build(ctx, fs, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var objs []Object
	for o := range prev.Objects {
		if o.Key == a {
			o.Accessed = t0
		}
		objs = append(objs, o)
	}
	objs = append(objs, Object{Key: gone, Size: 1})
	if err := Save(ctx, fs, New(objs, t0)); err != nil {
		t.Fatal(err)
	}
	// A mount published b (already in the store) and used a.
	content[b] = []byte("republished b")
	writeFile(t, fs, b, content[b])
	seg1 := putSegment(t, fs, 1, "m", []Object{{Key: b, Size: int64(len(content[b])), SHA256: sha256.Sum256(content[b])}},
		Access{a, t0.Add(time.Hour)})
	// And publishes another one while the build lists the store; its
	// record has no digest, so the build reads it.
	content[late] = []byte("late object")
	s := &publishDuringScan{Store: fs, t: t, j: NewJournal(fs, JournalOptions{Writer: "m"}),
		obj: Object{Key: late, Size: int64(len(content[late]))}, content: content[late]}
	ix, err := Build(ctx, s, BuildOptions{Previous: prev})
	if err != nil {
		t.Fatal(err)
	}
	checkBuilt(t, fs, ix, content)
	if _, ok := ix.Lookup(gone); ok {
		t.Error("an object deleted from the store is still indexed")
	}
	if o, _ := ix.Lookup(a); !o.Accessed.Equal(t0.Add(time.Hour)) {
		t.Errorf("access time %v, want the journal's", o.Accessed)
	}
	segs := journalKeys(t, fs)
	if len(segs) != 2 || !slices.Equal(ix.Covered(), segs) || !ix.Sources().Complete {
		t.Errorf("covered %v, journal %v (first %s), sources %+v", ix.Covered(), segs, seg1, ix.Sources())
	}
	if err := Save(ctx, fs, ix); err != nil {
		t.Fatal(err)
	}
	all, err := LoadAll(ctx, fs)
	if err != nil {
		t.Fatal(err)
	}
	if all.Sources().Applied != 0 || !equalObjects(all, ix) {
		t.Errorf("after saving the build: %+v", all.Sources())
	}

	// A damaged snapshot does not stop a build: it is what a build repairs.
	putRaw(t, fs, SnapshotKey, []byte("SSTFSIDX damaged"))
	rec := &logRecorder{}
	ix, err = Build(ctx, fs, BuildOptions{Logger: slog.New(rec)})
	if err != nil {
		t.Fatal(err)
	}
	checkBuilt(t, fs, ix, content)
	if rec.count("WARN the index snapshot is damaged") != 1 {
		t.Errorf("logs %q", rec.msgs)
	}
}
