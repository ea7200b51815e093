package fs_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// fetched returns an onFetch hook and a wait that blocks until n more
// downloads have ended (filed in the cache or failed): a read through the
// mount may end once the last byte has verified, before the download is
// filed, and what the cache holds is only settled after that.
func fetched() (func(int64, time.Duration, error), func(t *testing.T, n int)) {
	ch := make(chan error, 64)
	hook := func(_ int64, _ time.Duration, err error) { ch <- err }
	wait := func(t *testing.T, n int) {
		t.Helper()
		for range n {
			if err := <-ch; err != nil {
				t.Fatalf("download failed: %v", err)
			}
		}
	}
	return hook, wait
}

// TestObjectOpenModes: with the mount answering opens (FUSE passthrough of
// cached objects), opens of one object in different modes at once all work
// and none writes into the cache. The kernel refuses (EIO) a passthrough
// open of an inode open in cached mode and the reverse, and go-fuse gives
// every open of a node the backing file a passthrough open still holds, an
// open for writing included, whose writes would then reach the cache file.
// Files are held open so that what the test sees does not depend on when
// the kernel lets go of a closed one.
func TestObjectOpenModes(t *testing.T) {
	storeDir := t.TempDir()
	data := rnd(1 << 20)
	writeStore(t, storeDir, pkgKey, data)
	onFetch, wait := fetched()
	first := mount(t, mountOpts{storeDir: storeDir, daemonOpens: true, onFetch: onFetch})
	if got, err := os.ReadFile(filepath.Join(first.dir, pkgKey)); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("first read: %d bytes, %v", len(got), err)
	}
	wait(t, 1)
	// a second mount on the cache: its opens find the object verified
	// (none during a download), so they may use passthrough
	m := mount(t, mountOpts{storeDir: storeDir, cacheDir: first.cacheDir, daemonOpens: true})
	p := filepath.Join(m.dir, pkgKey)
	sum := sha256.Sum256(data)
	id := hex.EncodeToString(sum[:])
	cached := filepath.Join(m.cacheDir, "cache", "objects", id[:2], id)
	readBack := func(what string, f *os.File) {
		t.Helper()
		got := make([]byte, len(data))
		if n, err := f.ReadAt(got, 0); n != len(data) || !bytes.Equal(got, data) {
			t.Errorf("%s: read %d bytes, %v; want the object", what, n, err)
		}
	}

	// a reader holds the object (passthrough); writers come meanwhile
	r, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close() // before the unmount, also when the test stops early
	for _, flags := range []int{os.O_WRONLY, os.O_RDWR} {
		w, err := os.OpenFile(p, flags, 0)
		if err == nil {
			_, err = w.Write([]byte("x"))
			w.Close()
		}
		if !errors.Is(err, syscall.EROFS) {
			t.Errorf("write to an object (flags %#x) while it is open for reading = %v, want EROFS", flags, err)
		}
	}
	// touch opens for writing too; on EROFS it sets the times by name
	if out, err := exec.Command("touch", p).CombinedOutput(); err != nil {
		t.Errorf("touch of an object while it is open for reading: %v\n%s", err, out)
	}
	readBack("reader open while writers came", r)
	r.Close()
	if got, err := os.ReadFile(cached); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("cache file after write attempts: %d bytes, %v; want the object unchanged", len(got), err)
	}

	// a write-only open (touch) holds the object; readers come meanwhile.
	// On a mount of its own: the RELEASE of a file may come after the
	// close has returned, and the kernel may count the file for a moment
	// after that (see objectNode.wasCached): the opens above must not be
	// in the way.
	m2 := mount(t, mountOpts{storeDir: storeDir, cacheDir: first.cacheDir, daemonOpens: true})
	p2 := filepath.Join(m2.dir, pkgKey)
	w, err := os.OpenFile(p2, os.O_WRONLY, 0)
	if err != nil {
		t.Fatalf("open of an object for writing with no reader: %v", err)
	}
	defer w.Close()
	var readers []*os.File
	defer func() {
		for _, r := range readers {
			r.Close()
		}
	}()
	for i := range 2 {
		r, err := os.Open(p2)
		if err != nil {
			t.Fatalf("read open %d while the object is open for writing: %v", i, err)
		}
		readers = append(readers, r)
		readBack("reader opened while a writer holds the object", r)
	}
	if _, err := w.Write([]byte("x")); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write to an object while readers hold it = %v, want EROFS", err)
	}
	w.Close()
	if got, err := os.ReadFile(p2); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("object after it all: %d bytes, %v", len(got), err)
	}
	if got, err := os.ReadFile(cached); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("cache file after it all: %d bytes, %v; want the object unchanged", len(got), err)
	}
}
