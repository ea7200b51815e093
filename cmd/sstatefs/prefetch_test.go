package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestObjectPaths(t *testing.T) {
	k1 := "debian-12/c3/69/sstate:sstate-probe-native:x86_64-linux:1.0:r0:x86_64:14:" + hashA + "_populate_sysroot.tar.zst"
	k2 := keyLic
	in := strings.Join([]string{
		"DEBUG: SState: Found valid sstate file /home/b/build/sstate-cache/" + k1,
		"DEBUG: SState: Looked for but didn't find file /srv/sstate-cache/" + k2 + ".siginfo",
		k2,        // a plain list line (duplicate of the key above without .siginfo)
		"./" + k1, // find output, again
		"nothing here",
		"sstate:not/a/path", // no directory levels
	}, "\n")
	got, err := objectPaths(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{k1, k2 + ".siginfo", k2}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("objectPaths =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestPrefetch: bitbake's touch of a package starts its download; the
// prefetch command fetches a list through the running mount; neither ever
// caches unverified bytes.
func TestPrefetch(t *testing.T) {
	dir := t.TempDir()
	objs := map[string][]byte{}
	for i := range 4 {
		k := testKey(700+i, "populate_sysroot")
		b := make([]byte, 200_000+i)
		rand.Read(b)
		objs[k] = b
		objs[k+".siginfo"] = []byte("siginfo")
	}
	for k, d := range objs {
		p := filepath.Join(dir, k)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, d, 0o644)
	}
	cfg := testConfig(t, "file://"+dir)
	ctx := context.Background()
	if err := indexBuild(ctx, cfg.Stores[0], 2, false, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	m := startTestMount(t, cfg)
	k0 := testKey(700, "populate_sysroot")
	// touch the siginfo: nothing is fetched; touch the package: it is
	unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(m.Mountpoint(), k0+".siginfo"), nil, 0)
	unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(m.Mountpoint(), k0), nil, 0)
	deadline := time.Now().Add(10 * time.Second)
	for m.Cache().Stats().Entries < 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if s := m.Cache().Stats(); s.Entries != 1 || s.Bytes != int64(len(objs[k0])) {
		t.Fatalf("after touching a package and a siginfo the cache holds %+v, want just the package", s)
	}
	misses := m.Cache().Stats().Misses
	if got, err := os.ReadFile(filepath.Join(m.Mountpoint(), k0)); err != nil || !bytes.Equal(got, objs[k0]) {
		t.Fatal(err)
	}
	if m.Cache().Stats().Misses != misses {
		t.Error("reading a prefetched object downloaded it again")
	}

	// the prefetch command, through the control socket; one object is
	// corrupt in the store and one is absent
	k3 := testKey(703, "populate_sysroot")
	bad := append([]byte(nil), objs[k3]...)
	bad[7] ^= 1
	p3 := filepath.Join(dir, k3)
	fi, _ := os.Stat(p3)
	os.WriteFile(p3, bad, 0o644)
	os.Chtimes(p3, fi.ModTime(), fi.ModTime())
	keys := []string{testKey(701, "populate_sysroot"), testKey(702, "populate_sysroot"), k3, testKey(799, "package"), k0}
	res, err := prefetchViaMount(ctx, cfg.Cache.Dir, keys, 4, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.Fetched != 2 || res.Cached != 1 || len(res.Missing) != 1 || len(res.Failed) != 1 || !strings.Contains(res.Failed[0], k3) {
		t.Fatalf("prefetch result %+v", res)
	}
	if _, err := os.ReadFile(filepath.Join(m.Mountpoint(), k3)); !errors.Is(err, syscall.EIO) {
		t.Fatalf("corrupt object after a failed prefetch: %v", err)
	}
	// no mount: a clear error
	if _, err := prefetchViaMount(ctx, t.TempDir(), keys, 1, io.Discard); err == nil || !strings.Contains(err.Error(), "no sstatefs mount answers") {
		t.Fatalf("prefetch without a mount: %v", err)
	}
}
