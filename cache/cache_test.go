package cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type source struct {
	data    map[string][]byte
	fetches atomic.Int64
	gate    chan struct{} // if set, fetches wait on it
}

func (s *source) object(name string, known bool) Object {
	d := s.data[name]
	o := Object{Name: name, Size: int64(len(d))}
	if known {
		o.SHA256 = sha256.Sum256(d)
	}
	o.ID = IDFor(o.SHA256, "test", o.Size, time.Unix(1, 0))
	if !known {
		o.ID = IDFor([32]byte{}, "test:"+name, o.Size, time.Unix(1, 0))
	}
	o.Fetch = func(ctx context.Context, off, n int64) (io.ReadCloser, error) {
		if off == 0 {
			s.fetches.Add(1) // count whole downloads, not their chunks
		}
		if s.gate != nil {
			select {
			case <-s.gate:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		d := s.data[name]
		if off > int64(len(d)) {
			off = int64(len(d))
		}
		d = d[off:]
		if n >= 0 && n < int64(len(d)) {
			d = d[:n]
		}
		return io.NopCloser(bytes.NewReader(d)), nil
	}
	return o
}

func rnd(t *testing.T, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func readFile(t *testing.T, f *os.File) []byte {
	t.Helper()
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFetchOnceConcurrent(t *testing.T) {
	c, err := Open(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	src := &source{data: map[string][]byte{"a": rnd(t, 1<<20)}, gate: make(chan struct{})}
	obj := src.object("a", true)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := c.Open(context.Background(), obj)
			if err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(readFile(t, f), src.data["a"]) {
				errs <- errors.New("wrong content")
			}
		}()
	}
	time.Sleep(50 * time.Millisecond) // let the readers pile up behind one download
	close(src.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := src.fetches.Load(); n != 1 {
		t.Errorf("16 concurrent opens fetched %d times, want 1", n)
	}
}

func TestCorruptDownloadIsAnError(t *testing.T) {
	c, err := Open(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	src := &source{data: map[string][]byte{"a": rnd(t, 5000)}}
	obj := src.object("a", true)
	src.data["a"] = append([]byte(nil), src.data["a"]...)
	src.data["a"][100] ^= 1 // the store now serves other bytes than the index says
	if _, err := c.Open(context.Background(), obj); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open of a corrupt object = %v, want ErrCorrupt", err)
	}
	if c.Has(obj.ID) {
		t.Fatal("corrupt bytes were kept in the cache")
	}
	// a truncated object is corrupt too
	src.data["a"] = src.data["a"][:10]
	if _, err := c.Open(context.Background(), obj); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open of a short object = %v, want ErrCorrupt", err)
	}
	entries, _ := os.ReadDir(filepath.Join(c.Dir(), "tmp"))
	if len(entries) != 0 {
		t.Errorf("temp files left behind: %v", entries)
	}
}

func TestWarmRestartAndCorruptEntry(t *testing.T) {
	dir := t.TempDir()
	src := &source{data: map[string][]byte{"a": rnd(t, 7000), "b": rnd(t, 3000)}}
	c, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	for _, n := range []string{"a", "b"} {
		f, err := c.Open(context.Background(), src.object(n, true))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	// restart: nothing is fetched again
	c2, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c2.Close() })
	if s := c2.Stats(); s.Entries != 2 || s.Bytes != 10000 {
		t.Fatalf("after restart: %+v", s)
	}
	before := src.fetches.Load()
	f, err := c2.Open(context.Background(), src.object("a", true))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readFile(t, f), src.data["a"]) || src.fetches.Load() != before {
		t.Fatal("warm open after restart refetched or returned wrong bytes")
	}
	// damage b on disk: the next process drops it and fetches again
	ob := src.object("b", true)
	if err := os.WriteFile(c2.path(ob.ID), bytes.Repeat([]byte{'x'}, 3000), 0o600); err != nil {
		t.Fatal(err)
	}
	c3, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c3.Close() })
	f, err = c3.Open(context.Background(), ob)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readFile(t, f), src.data["b"]) {
		t.Fatal("served a corrupt cache entry")
	}
	if src.fetches.Load() != before+1 || c3.Stats().Corrupted != 1 {
		t.Fatalf("corrupt entry: fetches %d (want %d), stats %+v", src.fetches.Load(), before+1, c3.Stats())
	}
}

func TestEvictionBound(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(Options{Dir: dir, MaxBytes: 100_000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	src := &source{data: map[string][]byte{}}
	for i := range 30 {
		name := fmt.Sprint("o", i)
		src.data[name] = rnd(t, 9_000+i)
		f, err := c.Open(context.Background(), src.object(name, true))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if s := c.Stats(); s.Bytes > 100_000 {
			t.Fatalf("after %d objects the cache holds %d bytes, bound 100000", i+1, s.Bytes)
		}
		// keep o0 hot: it must survive eviction
		f, err = c.Open(context.Background(), src.object("o0", true))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	var onDisk int64
	filepath.Walk(filepath.Join(dir, "objects"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			onDisk += fi.Size()
		}
		return nil
	})
	if onDisk > 100_000 {
		t.Errorf("%d bytes on disk, bound 100000", onDisk)
	}
	s := c.Stats()
	if s.Evictions == 0 || s.Bytes != onDisk {
		t.Errorf("stats %+v, on disk %d", s, onDisk)
	}
	if !c.Has(src.object("o0", true).ID) {
		t.Error("the most recently used entry was evicted")
	}
	// a smaller bound on restart evicts at once, in LRU order
	c.Close()
	c2, err := Open(Options{Dir: dir, MaxBytes: 30_000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c2.Close() })
	if s := c2.Stats(); s.Bytes > 30_000 || s.Entries == 0 {
		t.Errorf("after restart with a smaller bound: %+v", s)
	}
	if !c2.Has(src.object("o0", true).ID) {
		t.Error("restart lost LRU order: the most recently used entry was evicted")
	}
}

func TestUnknownDigestChecksSize(t *testing.T) {
	c, err := Open(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	src := &source{data: map[string][]byte{"a": rnd(t, 100)}}
	obj := src.object("a", false)
	f, err := c.Open(context.Background(), obj)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	obj2 := src.object("a", false)
	obj2.ID = "other"
	obj2.Size = 99
	if _, err := c.Open(context.Background(), obj2); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("size mismatch = %v, want ErrCorrupt", err)
	}
}

func TestCancelledWaiterDoesNotFailOthers(t *testing.T) {
	c, err := Open(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	src := &source{data: map[string][]byte{"a": rnd(t, 100)}, gate: make(chan struct{})}
	obj := src.object("a", true)
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { _, err := c.Open(ctx, obj); first <- err }()
	time.Sleep(20 * time.Millisecond)
	second := make(chan error, 1)
	go func() {
		f, err := c.Open(context.Background(), obj)
		if f != nil {
			f.Close()
		}
		second <- err
	}()
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted open = %v, want context.Canceled", err)
	}
	close(src.gate)
	if err := <-second; err != nil {
		t.Fatalf("the other waiter failed: %v", err)
	}
}

func TestStatCache(t *testing.T) {
	s := NewStatCache(10, time.Hour, 50*time.Millisecond)
	if _, _, known := s.Get("x"); known {
		t.Fatal("empty cache knows x")
	}
	s.Absent("x")
	if _, present, known := s.Get("x"); !known || present {
		t.Fatal("absent x not remembered")
	}
	time.Sleep(120 * time.Millisecond)
	if _, _, known := s.Get("x"); known {
		t.Fatal("negative entry outlived its TTL")
	}
	s.Present("x", Info{Size: 3})
	if info, present, known := s.Get("x"); !known || !present || info.Size != 3 {
		t.Fatal("present x not remembered")
	}
	s.Forget("x")
	if _, _, known := s.Get("x"); known {
		t.Fatal("Forget did not forget")
	}
}

func TestAdopt(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(Options{Dir: filepath.Join(dir, "cache")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	src := &source{data: map[string][]byte{"a": rnd(t, 4000)}}
	obj := src.object("a", true)
	p := filepath.Join(dir, "local")
	os.WriteFile(p, src.data["a"], 0o644)
	if err := c.Adopt(p, obj); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Error("adopted file still at its old path")
	}
	f, err := c.Open(context.Background(), obj)
	if err != nil || !bytes.Equal(readFile(t, f), src.data["a"]) || src.fetches.Load() != 0 {
		t.Fatalf("adopted entry: %v, fetches %d", err, src.fetches.Load())
	}
	// a file with other content is refused and left alone
	os.WriteFile(p, rnd(t, 4000), 0o644)
	if err := c.Adopt(p, obj); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("adopting other bytes = %v", err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Error("refused file was moved")
	}
}

// BenchmarkCacheHit measures opening a verified cache entry and reading it.
func BenchmarkCacheHit(b *testing.B) {
	c, err := Open(Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	data := make([]byte, 64<<10)
	src := &source{data: map[string][]byte{"a": data}}
	obj := src.object("a", true)
	f, err := c.Open(context.Background(), obj)
	if err != nil {
		b.Fatal(err)
	}
	f.Close()
	buf := make([]byte, len(data))
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for b.Loop() {
		h, err := c.OpenStream(context.Background(), obj)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := h.ReadAt(context.Background(), buf, 0); err != nil && err != io.EOF {
			b.Fatal(err)
		}
		h.Close()
	}
}

// openCache opens a cache for a test and closes it before the test's
// directories go (cleanups run last registered first), so no download
// writes into a directory being removed.
func openCache(t testing.TB, opt Options) *Cache {
	t.Helper()
	c, err := Open(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// stuckReader gives its bytes, then blocks until ctx ends or release is
// closed: a download that has begun writing and will not finish by itself.
type stuckReader struct {
	ctx     context.Context
	first   []byte
	release chan struct{}
}

func (r *stuckReader) Read(p []byte) (int, error) {
	if len(r.first) > 0 {
		n := copy(p, r.first)
		r.first = r.first[n:]
		return n, nil
	}
	select {
	case <-r.ctx.Done():
		return 0, r.ctx.Err()
	case <-r.release:
		return 0, errors.New("released")
	}
}

func (r *stuckReader) Close() error { return nil }

// TestCloseStopsDownloads: Close stops the downloads under way and waits
// for them, so nothing is left in (or written into) the cache directory
// once it returns; their readers get ErrClosed, and so do opens after it.
func TestCloseStopsDownloads(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(Options{Dir: dir, ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	// registered after TempDir: runs before the directory goes, whatever
	// Close did
	t.Cleanup(func() { close(release); c.Close() })
	data := rnd(t, 1<<20)
	written := make(chan struct{}, 32)
	obj := Object{ID: "stuck", Size: int64(len(data)), SHA256: sha256.Sum256(data), Name: "stuck",
		Fetch: func(ctx context.Context, off, n int64) (io.ReadCloser, error) {
			written <- struct{}{}
			return &stuckReader{ctx: ctx, first: data[off : off+1024], release: release}, nil
		}}
	h, err := c.OpenStream(context.Background(), obj)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	<-written // a fetch has begun: the download writes into dir/tmp
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(entries) != 0 {
		t.Errorf("after Close, the cache's temp directory holds %d files: a download goes on", len(entries))
	}
	// Close has returned, so the download has finished: Wait does not block
	select {
	case <-h.(*streamHandle).d.finished:
	default:
		t.Fatal("a download still runs after Close returned")
	}
	if err := h.Wait(); !errors.Is(err, ErrClosed) {
		t.Errorf("download stopped by Close: %v, want ErrClosed", err)
	}
	if _, err := c.OpenStream(context.Background(), obj); !errors.Is(err, ErrClosed) {
		t.Errorf("open after Close = %v, want ErrClosed", err)
	}
	p := filepath.Join(dir, "local")
	os.WriteFile(p, data, 0o600)
	if err := c.Adopt(p, obj); !errors.Is(err, ErrClosed) {
		t.Errorf("adopt after Close = %v, want ErrClosed", err)
	}
}
