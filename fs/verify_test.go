package fs_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/sstatefs/sstatefs/backend/file"
	"github.com/sstatefs/sstatefs/index"
)

// corruptStore changes bytes of key in the store behind the index's back:
// same size and mtime, so only a digest can tell.
func corruptStore(t *testing.T, storeDir, key string, offs ...int) {
	t.Helper()
	p := filepath.Join(storeDir, key)
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range offs {
		b[off] ^= 0xff
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(p, fi.ModTime(), fi.ModTime())
}

// partialReaders are the readers of the start of a file that bitbake's
// tools and users run: each must fail on a corrupt object and print none of
// its bytes.
var partialReaders = []struct {
	name string
	args func(path string) []string
}{
	{"head -c 4096", func(p string) []string { return []string{"head", "-c", "4096", p} }},
	{"dd bs=4096 count=1", func(p string) []string { return []string{"dd", "if=" + p, "bs=4096", "count=1", "status=none"} }},
	{"cat", func(p string) []string { return []string{"cat", p} }},
}

func runReader(t *testing.T, args []string) (stdout []byte, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	if err != nil {
		t.Logf("%v: %v: %s", args, err, bytes.TrimSpace(errb.Bytes()))
	}
	return out.Bytes(), err
}

// TestPartialReadOfCorruptObject: a reader of the first bytes of a corrupt
// object (a small one, verified whole before its first byte is served)
// gets an error and none of its bytes.
func TestPartialReadOfCorruptObject(t *testing.T) {
	for _, size := range []int{32 << 10, 100_000} {
		storeDir := t.TempDir()
		data := rnd(size)
		writeStore(t, storeDir, pkgKey, data)
		m := mount(t, mountOpts{storeDir: storeDir})
		corruptStore(t, storeDir, pkgKey, 101)
		for _, r := range partialReaders {
			out, err := runReader(t, r.args(filepath.Join(m.dir, pkgKey)))
			if err == nil || len(out) != 0 {
				t.Errorf("%s of a corrupt %d-byte object: %d bytes delivered, error %v; want an error and no byte", r.name, size, len(out), err)
			}
		}
	}
}

// TestLargeObjectChunkCorrupt: a 20 MiB object (20 chunks of 1 MiB, whose
// digests index build records; fetched in ranged reads of 8 MiB) with a
// corrupt byte in chunk 2: what
// is delivered of chunks 0 and 1 is exact; a read into chunk 2 errors
// without delivering any of its bytes.
func TestLargeObjectChunkCorrupt(t *testing.T) {
	storeDir := t.TempDir()
	data := rnd(20 << 20)
	writeStore(t, storeDir, pkgKey, data)
	m := mount(t, mountOpts{storeDir: storeDir})
	if o, ok := m.live.Current().Lookup(pkgKey); !ok || len(o.Chunks) != index.NumChunks(int64(len(data))) || len(o.Chunks) < 3 {
		t.Fatalf("the index holds %d chunk digests of the object, want %d", len(o.Chunks), index.NumChunks(int64(len(data))))
	}
	bad := 2*index.ChunkSize + 1000
	corruptStore(t, storeDir, pkgKey, bad)

	f, err := os.Open(filepath.Join(m.dir, pkgKey))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Chunks 0 and 1 verify, but the download stops at chunk 2's mismatch
	// and the object is then backed off: a reader may get all, part or none
	// of them before the error, never a wrong byte.
	head := make([]byte, 2*index.ChunkSize)
	if n, err := f.ReadAt(head, 0); !bytes.Equal(head[:n], data[:n]) || (err != nil && !errors.Is(err, syscall.EIO)) {
		t.Fatalf("read of chunks 0 and 1: %d bytes, %v; want their exact bytes, then possibly EIO", n, err)
	}
	// Across the boundary: at most the bytes before it, which verified.
	buf := make([]byte, 8192)
	n, err := f.ReadAt(buf, 2*index.ChunkSize-100)
	if n > 100 || !bytes.Equal(buf[:n], data[2*index.ChunkSize-100:2*index.ChunkSize-100+n]) {
		t.Fatalf("read across into the corrupt chunk delivered %d bytes (%v): bytes of chunk 2", n, err)
	}
	if n, err := f.ReadAt(buf, 2*index.ChunkSize); n != 0 || !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of the corrupt chunk: %d bytes, %v; want EIO and no byte", n, err)
	}
	out, err := runReader(t, []string{"dd", "if=" + filepath.Join(m.dir, pkgKey), "bs=1M", fmt.Sprint("skip=", 2*index.ChunkSize>>20), "count=1", "status=none"})
	if err == nil || len(out) != 0 {
		t.Fatalf("dd of the corrupt chunk: %d bytes, %v; want an error and no byte", len(out), err)
	}
}

// TestLargeObjectWithoutChunkDigests: an object larger than a chunk that
// the index has no chunk digests for (written by an older sstatefs) is
// verified whole before its first byte is served.
func TestLargeObjectWithoutChunkDigests(t *testing.T) {
	storeDir := t.TempDir()
	data := rnd(index.ChunkSize + 5000)
	writeStore(t, storeDir, pkgKey, data)
	m := mount(t, mountOpts{storeDir: storeDir})
	// The index as an older sstatefs built it.
	ctx := context.Background()
	fstore, err := file.New(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	var objs []index.Object
	for o := range m.live.Current().Objects {
		o.Chunks = nil
		objs = append(objs, o)
	}
	if err := index.Save(ctx, fstore, index.New(objs, m.live.Current().Created())); err != nil {
		t.Fatal(err)
	}
	if err := m.live.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if o, ok := m.live.Current().Lookup(pkgKey); !ok || o.Chunks != nil {
		t.Fatal("the index still has chunk digests")
	}
	corruptStore(t, storeDir, pkgKey, len(data)-10) // in the last chunk
	for _, r := range partialReaders[:2] {
		out, err := runReader(t, r.args(filepath.Join(m.dir, pkgKey)))
		if err == nil || len(out) != 0 {
			t.Errorf("%s of a corrupt object without chunk digests: %d bytes delivered, error %v; want an error and no byte", r.name, len(out), err)
		}
	}
}
