package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/internal/testutil"
)

// smallDisk mounts a tmpfs of size bytes (a real small file system) and
// unmounts it when the test ends. It needs root: it skips elsewhere, and
// fails where SSTATEFS_REQUIRE_FUSE=1 says privileged tests must run.
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "disk")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput()
	if err != nil {
		msg := fmt.Sprintf("cannot mount a tmpfs (needs root): %v: %s", err, out)
		if os.Getenv("SSTATEFS_REQUIRE_FUSE") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	// detach: a file the cache still holds open must not fail the unmount
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// With the default 20 GiB bound on a 24 MiB file system, reads go on once
// the disk is full: the oldest entries make room, and the start warns.
func TestCacheBoundedByDisk(t *testing.T) {
	disk := smallDisk(t, "24m")
	var logs testutil.SyncBuffer
	c, err := Open(Options{Dir: disk, MaxBytes: 20 << 30, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if l := logs.String(); !strings.Contains(l, "cache size exceeds its file system") ||
		!strings.Contains(l, `cache_size="20.0 GiB"`) || !strings.Contains(l, `filesystem_size="24.0 MiB"`) {
		t.Fatalf("no warning naming both sizes at start; log:\n%s", l)
	}
	src := &source{data: map[string][]byte{}}
	for i := range 10 {
		name := fmt.Sprint("o", i)
		src.data[name] = rnd(t, 4<<20)
		f, err := c.Open(context.Background(), src.object(name, true))
		if err != nil {
			t.Fatalf("object %d: %v", i, err)
		}
		if !bytes.Equal(readFile(t, f), src.data[name]) {
			t.Fatalf("object %d: wrong bytes", i)
		}
	}
	s := c.Stats()
	if s.Evictions == 0 || s.Entries >= 10 || s.Bytes > 24<<20 {
		t.Fatalf("stats %+v: want evictions, fewer than 10 entries", s)
	}
	if s.DiskSize != 24<<20 || s.DiskFree <= 0 {
		t.Errorf("stats tell a disk of %d bytes, %d free; want 24 MiB", s.DiskSize, s.DiskFree)
	}
	if c.Has(src.object("o0", true).ID) || !c.Has(src.object("o9", true).ID) {
		t.Fatal("not evicted oldest first")
	}

	// Downloads that start together all see the same free space, so
	// their writes fill the disk: each write that hits ENOSPC evicts and
	// is retried.
	started, gate := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := range 4 {
		data := rnd(t, 4<<20)
		sum := sha256.Sum256(data)
		obj := Object{ID: IDFor(sum, "", 0, time.Time{}), Size: int64(len(data)), SHA256: sum, Name: fmt.Sprint("p", i),
			Fetch: func(ctx context.Context, off, n int64) (io.ReadCloser, error) {
				if off == 0 {
					started <- struct{}{}
					<-gate
				}
				return io.NopCloser(bytes.NewReader(data[off:])), nil
			}}
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := c.Open(context.Background(), obj)
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			if got, err := io.ReadAll(f); err != nil || !bytes.Equal(got, data) {
				errs <- fmt.Errorf("%s: wrong bytes (%v)", obj.Name, err)
			}
		}()
	}
	for range 4 {
		<-started
	}
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
