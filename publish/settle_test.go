package publish

import (
	"context"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/cache"
	"github.com/sstatefs/sstatefs/index"
)

func TestSettleMovesUploadedObjectsIntoTheCache(t *testing.T) {
	e := newEnv(t)
	q := e.open(t)
	overlay := t.TempDir()
	c, err := cache.Open(cache.Options{Dir: filepath.Join(overlay, "..", "c")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	put := func(k string, data []byte) string {
		p := filepath.Join(overlay, k)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, data, 0o644)
		return p
	}
	uploaded := []byte("uploaded and indexed")
	other := []byte("our build, the store kept another")
	k1 := key
	k2 := strings.Replace(key, "populate_sysroot", "package", 1)
	k3 := strings.Replace(key, "populate_sysroot", "deploy", 1)
	p1 := put(k1, uploaded)
	p2 := put(k2, other)
	p3 := put(k3, []byte("still queued"))
	p4 := put("ab/cd/"+k1[6:]+"Xtmp1234", []byte("a temp file"))
	if err := q.Enqueue(k3, p3); err != nil {
		t.Fatal(err)
	}
	mtime := time.Unix(1700000000, 0)
	ix := index.New([]index.Object{
		{Key: k1, Size: int64(len(uploaded)), ModTime: mtime, SHA256: sha256.Sum256(uploaded)},
		{Key: k2, Size: int64(len(other)), ModTime: mtime, SHA256: sha256.Sum256([]byte("the store's own bytes, same length!"[:len(other)]))},
		{Key: k3, Size: 12, ModTime: mtime, SHA256: sha256.Sum256([]byte("still queued"))},
	}, mtime)
	res, err := Settle(overlay, q, ix, c, "file:///store")
	if err != nil {
		t.Fatal(err)
	}
	if res.Moved != 1 || res.Bytes != int64(len(uploaded)) {
		t.Fatalf("settle: %+v", res)
	}
	if _, err := os.Stat(p1); !os.IsNotExist(err) {
		t.Error("uploaded object still in the overlay")
	}
	for _, p := range []string{p2, p3, p4} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s was moved: %v", p, err)
		}
	}
	o, _ := ix.Lookup(k1)
	f, err := c.Open(context.Background(), cache.Object{ID: cache.IDFor(o.SHA256, "", o.Size, o.ModTime), Size: o.Size, SHA256: o.SHA256, Name: k1,
		Fetch: func(context.Context, int64, int64) (io.ReadCloser, error) { t.Fatal("fetched"); return nil, nil }})
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
}
