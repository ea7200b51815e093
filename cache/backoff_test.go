package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/file"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

// faultStore wraps a real store: it counts downloads (opens at offset 0)
// and, while hang is set, answers opens only when their context ends (a
// stopped store).
type faultStore struct {
	backend.Store
	downloads atomic.Int64
	hang      atomic.Bool
}

func (s *faultStore) Open(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	if off == 0 {
		s.downloads.Add(1)
	}
	if s.hang.Load() {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return s.Store.Open(ctx, key, off, n)
}

func storeObject(s backend.Store, key string, data []byte) Object {
	sum := sha256.Sum256(data)
	return Object{
		ID: IDFor(sum, "", 0, time.Time{}), Size: int64(len(data)), SHA256: sum, Name: key,
		Fetch: func(ctx context.Context, off, n int64) (io.ReadCloser, error) { return s.Open(ctx, key, off, n) },
	}
}

// readAll reads the object through a streaming handle, as the kernel's
// reads do: each read takes the object anew.
func readAll(c *Cache, obj Object) ([]byte, error) {
	h, err := c.OpenStream(context.Background(), obj)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	return readAllStream(context.Background(), h)
}

// A corrupt object in the store is downloaded once per back-off, not once
// per read; the back-off grows, is listed with its reason, and a repaired
// store is read again once it has passed.
func TestCorruptObjectBackedOff(t *testing.T) {
	for _, chunk := range []int64{0, 256 << 10} {
		t.Run(map[int64]string{0: "one-chunk", 256 << 10: "chunked"}[chunk], func(t *testing.T) {
			dir := t.TempDir()
			fstore, err := file.New(filepath.Join(dir, "store"))
			if err != nil {
				t.Fatal(err)
			}
			store := &faultStore{Store: fstore}
			clock := testutil.NewClock(time.Unix(1_000_000, 0))
			c, err := Open(Options{Dir: filepath.Join(dir, "cache"), ChunkSize: chunk, Now: clock.Now})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			const key = "ab/cd/sstate:x:::::1:abcd_populate_sysroot.tar.zst"
			data := rnd(t, 3<<20)
			obj := storeObject(store, key, data)
			bad := bytes.Clone(data)
			bad[len(bad)/2] ^= 1
			if err := fstore.Put(context.Background(), key, bytes.NewReader(bad), int64(len(bad))); err != nil {
				t.Fatal(err)
			}

			// the kernel retries a failed read: 10 reads, 1 download
			for i := range 10 {
				_, err := readAll(c, obj)
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("read %d of a corrupt object = %v, want ErrCorrupt", i, err)
				}
				if i > 0 && !errors.Is(err, ErrBackedOff) {
					t.Fatalf("read %d = %v, want ErrBackedOff", i, err)
				}
			}
			if n := store.downloads.Load(); n != 1 {
				t.Fatalf("10 reads of a corrupt object downloaded it %d times, want 1", n)
			}
			s := c.Stats()
			if s.BackedOff != 1 || s.Refused != 9 || s.Corrupted != 1 {
				t.Fatalf("stats %+v, want 1 backed off, 9 refused, 1 corrupt", s)
			}
			list := c.BackedOff()
			if len(list) != 1 || list[0].Name != key || !list[0].Corrupt || list[0].Failures != 1 ||
				!list[0].Until.Equal(clock.Now().Add(corruptBackoffMin)) || !strings.Contains(list[0].Reason, "sha256") {
				t.Fatalf("backed off: %+v", list)
			}

			// after the back-off: one more download, then a longer back-off
			clock.Add(corruptBackoffMin)
			for range 3 {
				if _, err := readAll(c, obj); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("read after the back-off = %v, want ErrCorrupt", err)
				}
			}
			if n := store.downloads.Load(); n != 2 {
				t.Fatalf("after the back-off: %d downloads, want 2", n)
			}
			clock.Add(corruptBackoffMin)
			if _, err := readAll(c, obj); !errors.Is(err, ErrBackedOff) {
				t.Fatalf("second back-off did not double: %v", err)
			}

			// the store is repaired: read again once the back-off has passed
			if err := fstore.Put(context.Background(), key, bytes.NewReader(data), int64(len(data))); err != nil {
				t.Fatal(err)
			}
			clock.Add(corruptBackoffMin)
			got, err := readAll(c, obj)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read of the repaired object: %v", err)
			}
			if n := store.downloads.Load(); n != 3 {
				t.Fatalf("%d downloads, want 3", n)
			}
			if l := c.BackedOff(); len(l) != 0 || c.Stats().BackedOff != 0 {
				t.Fatalf("still backed off after a success: %+v", l)
			}
		})
	}
}

// A store that does not answer costs one timeout: the next open fails at
// once, without another download, until the back-off has passed.
func TestHangingStoreBackedOff(t *testing.T) {
	dir := t.TempDir()
	fstore, err := file.New(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	store := &faultStore{Store: fstore}
	store.hang.Store(true)
	clock := testutil.NewClock(time.Unix(1_000_000, 0))
	c, err := Open(Options{Dir: filepath.Join(dir, "cache"), FetchTimeout: 50 * time.Millisecond, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	const key = "ab/cd/sstate:y:::::1:abcd_package.tar.zst"
	data := rnd(t, 100_000)
	if err := fstore.Put(context.Background(), key, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	obj := storeObject(store, key, data)
	if _, err := c.Open(context.Background(), obj); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("open on a hanging store = %v, want a timeout", err)
	}
	// Were another download started, it would hang for another timeout
	// and count: neither happens.
	for range 5 {
		_, err := c.Open(context.Background(), obj)
		if !errors.Is(err, ErrBackedOff) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), key) {
			t.Fatalf("open during the back-off = %v, want ErrBackedOff naming %s", err, key)
		}
	}
	if n := store.downloads.Load(); n != 1 {
		t.Fatalf("%d downloads during the back-off, want 1", n)
	}
	if l := c.BackedOff(); len(l) != 1 || l[0].Corrupt || !l[0].Until.Equal(clock.Now().Add(failBackoffMin)) {
		t.Fatalf("backed off: %+v", l)
	}
	// the store is back: the first open after the back-off reads it
	store.hang.Store(false)
	clock.Add(failBackoffMin)
	f, err := c.Open(context.Background(), obj)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readFile(t, f), data) || store.downloads.Load() != 2 {
		t.Fatalf("after the back-off: wrong bytes or %d downloads", store.downloads.Load())
	}
}

func TestBackoffDelays(t *testing.T) {
	for _, tc := range []struct {
		corrupt bool
		n       int
		want    time.Duration
	}{
		{false, 1, 5 * time.Second}, {false, 2, 10 * time.Second}, {false, 5, 80 * time.Second},
		{false, 6, 2 * time.Minute}, {false, 100, 2 * time.Minute},
		{true, 1, 30 * time.Second}, {true, 3, 2 * time.Minute}, {true, 5, 8 * time.Minute},
		{true, 6, 10 * time.Minute}, {true, 1000, 10 * time.Minute},
	} {
		f := &failure{corrupt: tc.corrupt, n: tc.n}
		if got := f.delay(); got != tc.want {
			t.Errorf("delay after %d failures (corrupt %v) = %s, want %s", tc.n, tc.corrupt, got, tc.want)
		}
	}
}

// The memory of failures is bounded, and an object that has not failed
// for a long time starts again from the shortest back-off.
func TestBackoffBoundedAndForgotten(t *testing.T) {
	clock := testutil.NewClock(time.Unix(1_000_000, 0))
	b := newBackoffs(clock.Now)
	fail := errors.New("connection refused")
	for i := range maxBackoffs + 10 {
		b.done(Object{ID: string(rune('a'+i%26)) + strings.Repeat("x", i/26), Name: "o"}, fail)
	}
	if len(b.m) != maxBackoffs {
		t.Fatalf("%d failures remembered, bound %d", len(b.m), maxBackoffs)
	}
	obj := Object{ID: "one", Name: "one"}
	b.done(obj, fail)
	b.done(obj, fail)
	if f := b.m["one"]; f.n != 2 {
		t.Fatalf("failures %d, want 2", f.n)
	}
	clock.Add(failBackoffMax + 11*time.Second)
	if err := b.check(obj); err != nil {
		t.Fatalf("still backed off: %v", err)
	}
	b.done(obj, fail)
	if f := b.m["one"]; f.n != 1 {
		t.Fatalf("an old failure was not forgotten: %d failures", f.n)
	}
}
