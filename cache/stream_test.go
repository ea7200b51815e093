package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// smallChunks makes streaming use many chunks on small test objects.
const smallChunks = 64 << 10

// rangedSource serves ranges of data; chunks after the first wait for gate.
type rangedSource struct {
	data   []byte
	gate   chan struct{}
	ranged atomic.Int64
	mu     sync.Mutex
	maxPar int
	cur    int
}

func (s *rangedSource) fetch(ctx context.Context, off, n int64) (io.ReadCloser, error) {
	s.mu.Lock()
	s.cur++
	s.maxPar = max(s.maxPar, s.cur)
	s.mu.Unlock()
	defer func() { s.mu.Lock(); s.cur--; s.mu.Unlock() }()
	if off > 0 {
		s.ranged.Add(1)
		if s.gate != nil {
			select {
			case <-s.gate:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	time.Sleep(time.Millisecond) // let parallel chunk requests overlap
	d := s.data[off:]
	if n >= 0 && n < int64(len(d)) {
		d = d[:n]
	}
	return io.NopCloser(bytes.NewReader(d)), nil
}

func readAllStream(ctx context.Context, h Handle) ([]byte, error) {
	var out []byte
	buf := make([]byte, 128<<10)
	for off := int64(0); ; {
		n, err := h.ReadAt(ctx, buf, off)
		out = append(out, buf[:n]...)
		off += int64(n)
		if err == io.EOF {
			// the end is served once verified, maybe before the download
			// has filed the object: wait, so the test ends with no work
			// left behind in its directory
			return out, h.Wait()
		}
		if err != nil {
			return out, err
		}
	}
}

func TestStreamParallelChunksExact(t *testing.T) {
	c := openCache(t, Options{Dir: t.TempDir(), ChunkSize: smallChunks})
	data := rnd(t, 1<<20+12345)
	src := &rangedSource{data: data}
	obj := Object{ID: IDFor(sha256.Sum256(data), "", 0, time.Time{}), Size: int64(len(data)), SHA256: sha256.Sum256(data), Name: "big", Fetch: src.fetch}
	h, err := c.OpenStream(context.Background(), obj)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readAllStream(context.Background(), h)
	h.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("streamed %d bytes, %v; want the exact %d", len(got), err, len(data))
	}
	if src.ranged.Load() == 0 || src.maxPar < 2 {
		t.Errorf("no parallel ranged GETs: %d ranged, max %d at once", src.ranged.Load(), src.maxPar)
	}
	// now it is a verified cache entry
	h2, err := c.OpenStream(context.Background(), obj)
	if err != nil || h2.File() == nil {
		t.Fatalf("second open is not a cached file: %v", err)
	}
	h2.Close()
}

func TestStreamFirstBytesBeforeTheRest(t *testing.T) {
	c := openCache(t, Options{Dir: t.TempDir(), ChunkSize: smallChunks})
	data := rnd(t, 512<<10)
	src := &rangedSource{data: data, gate: make(chan struct{})}
	// With chunk digests: the first chunk is served once it has verified.
	obj := Object{ID: "first-bytes", Size: int64(len(data)), SHA256: sha256.Sum256(data), Name: "x", Fetch: src.fetch,
		ChunkSize: smallChunks, Chunks: chunkSums(data, smallChunks)}
	h, err := c.OpenStream(context.Background(), obj)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	buf := make([]byte, 4096)
	done := make(chan error, 1)
	go func() { _, err := h.ReadAt(context.Background(), buf, 0); done <- err }()
	select {
	case err := <-done:
		if err != nil || !bytes.Equal(buf, data[:4096]) {
			t.Fatalf("first read: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first bytes waited for the whole object")
	}
	close(src.gate)
	got, err := readAllStream(context.Background(), h)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("rest: %v", err)
	}
}

// TestStreamCorruptNeverCleanEOF, for an object in many chunks (hashed by a
// follower reading the temp file) and in one (hashed as it arrives).
func TestStreamCorruptNeverCleanEOF(t *testing.T) {
	for _, chunk := range []int64{smallChunks, 1 << 20} {
		t.Run(fmt.Sprintf("chunk=%d", chunk), func(t *testing.T) { testStreamCorrupt(t, chunk) })
	}
}

func testStreamCorrupt(t *testing.T, chunk int64) {
	c := openCache(t, Options{Dir: t.TempDir(), ChunkSize: chunk})
	data := rnd(t, 300<<10)
	// the right object streams whole, then is cached
	good := Object{ID: "good", Size: int64(len(data)), SHA256: sha256.Sum256(data), Name: "g", Fetch: (&rangedSource{data: data}).fetch}
	hg, err := c.OpenStream(context.Background(), good)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := readAllStream(context.Background(), hg); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("good object: %d bytes, %v", len(got), err)
	}
	hg.Close()
	if !c.Has("good") {
		t.Fatal("verified download not cached")
	}
	want := sha256.Sum256(data)
	bad := append([]byte(nil), data...)
	bad[len(bad)-10] ^= 1 // corrupt near the end
	src := &rangedSource{data: bad}
	obj := Object{ID: "corrupt", Size: int64(len(data)), SHA256: want, Name: "x", Fetch: src.fetch}
	h, err := c.OpenStream(context.Background(), obj)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readAllStream(context.Background(), h)
	h.Close()
	if err == nil {
		t.Fatalf("a corrupt object read to a clean EOF (%d bytes)", len(got))
	}
	if !errors.Is(err, ErrCorrupt) {
		t.Errorf("error %v does not say corrupt", err)
	}
	if len(got) >= len(data) {
		t.Errorf("reader got all %d bytes of a corrupt object", len(got))
	}
	if c.Has("corrupt") {
		t.Error("corrupt download kept in the cache")
	}
	// shorter than the index says: also an error, not EOF
	src2 := &rangedSource{data: data[:len(data)-1]}
	obj2 := Object{ID: "short", Size: int64(len(data)), SHA256: want, Name: "y", Fetch: src2.fetch}
	h2, _ := c.OpenStream(context.Background(), obj2)
	if _, err := readAllStream(context.Background(), h2); err == nil {
		t.Error("a short object read to a clean EOF")
	}
	h2.Close()
}

func TestStreamReaderInterrupted(t *testing.T) {
	c := openCache(t, Options{Dir: t.TempDir(), ChunkSize: smallChunks})
	data := rnd(t, 256<<10)
	src := &rangedSource{data: data, gate: make(chan struct{})}
	obj := Object{ID: "stuck", Size: int64(len(data)), SHA256: sha256.Sum256(data), Name: "x", Fetch: src.fetch}
	h, _ := c.OpenStream(context.Background(), obj)
	// the download, stuck at the gate, is stopped by the cache's Close
	// (openCache) before the cache's directory goes
	t.Cleanup(func() { h.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	buf := make([]byte, 4096)
	if _, err := h.ReadAt(ctx, buf, 200<<10); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read of a stuck range = %v, want the context's error", err)
	}
}

// chunkSums returns the digests of data's pieces of size bytes.
func chunkSums(data []byte, size int) [][32]byte {
	var out [][32]byte
	for off := 0; off < len(data); off += size {
		out = append(out, sha256.Sum256(data[off:min(off+size, len(data))]))
	}
	return out
}

// TestStreamNoUnverifiedByte: a reader of part of a corrupt object gets an
// error and not one byte, whether the object streams in one request
// (hashed as it arrives) or in many (hashed by a follower), and whether the
// corruption is near the start or the end. It verifies whole before any
// byte is served (small objects, and large ones without chunk digests).
func TestStreamNoUnverifiedByte(t *testing.T) {
	data := rnd(t, 300<<10)
	for _, chunk := range []int64{smallChunks, 1 << 20} {
		for _, at := range []int{101, len(data) - 10} {
			t.Run(fmt.Sprintf("chunk=%d/at=%d", chunk, at), func(t *testing.T) {
				c := openCache(t, Options{Dir: t.TempDir(), ChunkSize: chunk})
				bad := append([]byte(nil), data...)
				bad[at] ^= 1
				obj := Object{ID: "corrupt", Size: int64(len(data)), SHA256: sha256.Sum256(data), Name: "x",
					Fetch: (&rangedSource{data: bad}).fetch}
				h, err := c.OpenStream(context.Background(), obj)
				if err != nil {
					t.Fatal(err)
				}
				defer h.Close()
				buf := make([]byte, 4096)
				n, err := h.ReadAt(context.Background(), buf, 0)
				if err == nil || n != 0 {
					t.Fatalf("read of the first 4096 bytes of a corrupt object: %d bytes, %v; want none and an error", n, err)
				}
				if !errors.Is(err, ErrCorrupt) {
					t.Errorf("error %v does not say corrupt", err)
				}
				h.Wait()
				if c.Has("corrupt") {
					t.Error("corrupt download kept in the cache")
				}
			})
		}
	}
}

// TestStreamChunkVerified: with chunk digests, the chunks before a corrupt
// one are served exactly; a read that reaches into the corrupt chunk gets
// an error and none of its bytes; nothing is filed. Chunks that all verify
// but an object digest that does not still fail at the end.
func TestStreamChunkVerified(t *testing.T) {
	const vchunk = 64 << 10
	data := rnd(t, 5*vchunk+777)
	sums := chunkSums(data, vchunk)
	for _, dl := range []int64{smallChunks / 2, 1 << 20} { // many ranged reads, or one
		t.Run(fmt.Sprintf("download=%d", dl), func(t *testing.T) {
			c := openCache(t, Options{Dir: t.TempDir(), ChunkSize: dl})
			bad := append([]byte(nil), data...)
			bad[2*vchunk+500] ^= 1 // in chunk 2
			obj := Object{ID: "corrupt", Size: int64(len(data)), SHA256: sha256.Sum256(data), Name: "x",
				Fetch: (&rangedSource{data: bad}).fetch, ChunkSize: vchunk, Chunks: sums}
			h, err := c.OpenStream(context.Background(), obj)
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			buf := make([]byte, 2*vchunk)
			if n, err := h.ReadAt(context.Background(), buf, 0); err != nil || n != len(buf) || !bytes.Equal(buf, data[:len(buf)]) {
				t.Fatalf("read of chunks 0 and 1: %d bytes, %v", n, err)
			}
			for _, off := range []int64{2*vchunk - 100, 2 * vchunk, 2*vchunk + 400} {
				n, err := h.ReadAt(context.Background(), make([]byte, 4096), off)
				if err == nil || n != 0 || !errors.Is(err, ErrCorrupt) {
					t.Fatalf("read at %d, into the corrupt chunk: %d bytes, %v; want none and a corrupt error", off, n, err)
				}
			}
			h.Wait()
			if c.Has("corrupt") {
				t.Error("corrupt download kept in the cache")
			}

			// Right chunks, wrong whole digest: fails at the end, not filed.
			odd := obj
			odd.ID, odd.Fetch = "odd", (&rangedSource{data: data}).fetch
			odd.SHA256[0] ^= 1
			h2, err := c.OpenStream(context.Background(), odd)
			if err != nil {
				t.Fatal(err)
			}
			defer h2.Close()
			if got, err := readAllStream(context.Background(), h2); !errors.Is(err, ErrCorrupt) || len(got) >= len(data) {
				t.Fatalf("object digest mismatch: %d bytes, %v", len(got), err)
			}
			if c.Has("odd") {
				t.Error("download whose object digest did not match kept in the cache")
			}

			// And the right object streams whole and is filed.
			good := obj
			good.ID, good.Fetch = "good", (&rangedSource{data: data}).fetch
			h3, err := c.OpenStream(context.Background(), good)
			if err != nil {
				t.Fatal(err)
			}
			defer h3.Close()
			if got, err := readAllStream(context.Background(), h3); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("good object: %d bytes, %v", len(got), err)
			}
			if !c.Has("good") {
				t.Error("verified download not cached")
			}
		})
	}
}

// TestOpenAfterDownloadFiled: an open that missed the cache while a
// download of the same object was finishing reads the filed entry instead
// of downloading the object a second time (seen as a rare "downloads = 2"
// in fs's TestKernelOpensKeepPages).
func TestOpenAfterDownloadFiled(t *testing.T) {
	c, err := Open(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	data := make([]byte, 100_000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	var fetches atomic.Int64
	obj := Object{ID: "filed-meanwhile", Size: int64(len(data)), SHA256: sha256.Sum256(data), Name: "x",
		Fetch: func(ctx context.Context, off, n int64) (io.ReadCloser, error) {
			fetches.Add(1)
			return io.NopCloser(bytes.NewReader(data[off:])), nil
		}}
	first, err := c.OpenStream(context.Background(), obj)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Wait(); err != nil {
		t.Fatal(err)
	}
	first.Close()
	// The second open misses (as if it had looked before the first
	// download was filed): the hook makes the cache forget, for that look
	// only, that the object is there.
	c.mu.Lock()
	c.lru.Remove(obj.ID)
	c.mu.Unlock()
	testHookMissed = func() {
		c.mu.Lock()
		c.lru.Add(obj.ID, obj.Size)
		c.mu.Unlock()
	}
	t.Cleanup(func() { testHookMissed = nil })
	h, err := c.OpenStream(context.Background(), obj)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	got := make([]byte, len(data))
	if n, err := h.ReadAt(context.Background(), got, 0); n != len(data) || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, %v", n, err)
	}
	if n := fetches.Load(); n != 1 {
		t.Fatalf("fetched %d times, want 1: an open that missed the cache while the object was filed downloaded it again", n)
	}
}
