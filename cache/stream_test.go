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
	c, _ := Open(Options{Dir: t.TempDir(), ChunkSize: smallChunks})
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
	c, _ := Open(Options{Dir: t.TempDir(), ChunkSize: smallChunks})
	data := rnd(t, 512<<10)
	src := &rangedSource{data: data, gate: make(chan struct{})}
	obj := Object{ID: "first-bytes", Size: int64(len(data)), SHA256: sha256.Sum256(data), Name: "x", Fetch: src.fetch}
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
	c, _ := Open(Options{Dir: t.TempDir(), ChunkSize: chunk})
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
	c, _ := Open(Options{Dir: t.TempDir(), ChunkSize: smallChunks})
	data := rnd(t, 256<<10)
	src := &rangedSource{data: data, gate: make(chan struct{})}
	obj := Object{ID: "stuck", Size: int64(len(data)), SHA256: sha256.Sum256(data), Name: "x", Fetch: src.fetch}
	h, _ := c.OpenStream(context.Background(), obj)
	defer func() {
		// let the download finish before its directory goes
		close(src.gate)
		h.Wait()
		h.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	buf := make([]byte, 4096)
	if _, err := h.ReadAt(ctx, buf, 200<<10); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read of a stuck range = %v, want the context's error", err)
	}
}
