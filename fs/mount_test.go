package fs_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/file"
	"github.com/sstatefs/sstatefs/cache"
	sfs "github.com/sstatefs/sstatefs/fs"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/access"
	"github.com/sstatefs/sstatefs/internal/testutil"
	"github.com/sstatefs/sstatefs/view"
)

// faultStore wraps a real store: it counts calls and, while down is set,
// hangs every call until its context ends (a store that stopped answering).
type faultStore struct {
	backend.Store
	stats, opens, lists atomic.Int64
	down                atomic.Bool
}

func (s *faultStore) hang(ctx context.Context) error {
	if !s.down.Load() {
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}

func (s *faultStore) Stat(ctx context.Context, key string) (backend.ObjectInfo, error) {
	s.stats.Add(1)
	if err := s.hang(ctx); err != nil {
		return backend.ObjectInfo{}, err
	}
	return s.Store.Stat(ctx, key)
}

func (s *faultStore) Open(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	s.opens.Add(1)
	if err := s.hang(ctx); err != nil {
		return nil, err
	}
	return s.Store.Open(ctx, key, off, n)
}

func (s *faultStore) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	s.lists.Add(1)
	if err := s.hang(ctx); err != nil {
		return err
	}
	return s.Store.List(ctx, prefix, fn)
}

type testMount struct {
	dir      string // mountpoint
	storeDir string
	cacheDir string
	fault    *faultStore
	live     *index.Live
	cache    *cache.Cache
	server   interface{ Unmount() error }
	fuseLog  *testutil.SyncBuffer // what go-fuse logged
	fsLog    *testutil.SyncBuffer // what the FS logged
	fs       *sfs.FS
	// clock is the cache's and the view's clock: moving it ends the
	// back-off of objects whose download failed, and of a store that did
	// not answer, without sleeping.
	clock *testutil.Clock
}

type mountOpts struct {
	noIndex    bool
	cacheBytes int64
	timeout    time.Duration
	storeDir   string
	cacheDir   string
	// daemonOpens answers opens in the FS (passthrough) instead of
	// letting the kernel open files itself
	daemonOpens bool
	// readAheadKB is the mount's read-ahead (0: sfs.ReadAheadKB)
	readAheadKB int
	// debugLog has go-fuse log every request into fuseLog
	debugLog bool
	// allowOther lets other users in; owner (default: this process's
	// uid:gid) owns the store's objects and the root; publishers may
	// publish; publish is called for each publication
	allowOther bool
	owner      *[2]uint32
	publishers access.Rule
	publish    func(ctx context.Context, key, path string) error
	// onFetch is told of every download once it has ended (filed in the
	// cache or failed)
	onFetch func(bytes int64, d time.Duration, err error)
}

// mount builds the real stack (file store, index, cache, view, fs) over the
// objects already in storeDir and mounts it.
func mount(t testing.TB, o mountOpts) *testMount {
	t.Helper()
	testutil.RequireFUSE(t)
	if o.storeDir == "" {
		o.storeDir = t.TempDir()
	}
	if o.cacheDir == "" {
		o.cacheDir = t.TempDir()
	}
	if o.timeout == 0 {
		o.timeout = 5 * time.Second
	}
	fstore, err := file.New(o.storeDir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if !o.noIndex {
		ix, err := index.Build(ctx, fstore, index.BuildOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := index.Save(ctx, fstore, ix); err != nil {
			t.Fatal(err)
		}
	}
	fault := &faultStore{Store: fstore}
	store := &backend.Timeout{Store: fault, D: o.timeout}
	live := index.NewLive(store, index.LiveOptions{Interval: time.Hour})
	if err := live.LoadOnce(ctx); err != nil && !errors.Is(err, index.ErrNoIndex) {
		t.Fatal(err)
	}
	// count only what the mount does from here on, not the index load
	fault.stats.Store(0)
	fault.opens.Store(0)
	fault.lists.Store(0)
	clock := testutil.NewClock(time.Now())
	// what the cache logs (why a download failed) is shown with a failure
	cacheLog := &testutil.SyncBuffer{}
	c, err := cache.Open(cache.Options{Dir: filepath.Join(o.cacheDir, "cache"), MaxBytes: o.cacheBytes, Now: clock.Now,
		Logger: slog.New(slog.NewTextHandler(cacheLog, nil)), OnFetch: o.onFetch})
	if err != nil {
		t.Fatal(err)
	}
	v := view.New(view.Options{Store: store, Index: live, Cache: c, Probes: cache.NewStatCache(1000, time.Minute, time.Minute), Now: clock.Now})
	fsLog := &testutil.SyncBuffer{}
	if o.owner == nil {
		o.owner = &[2]uint32{uint32(os.Getuid()), uint32(os.Getgid())}
	}
	f, root, err := sfs.New(sfs.Options{
		View: v, Overlay: filepath.Join(o.cacheDir, "overlay"), StateDir: filepath.Join(o.cacheDir, "state"),
		UID: o.owner[0], GID: o.owner[1], CacheDir: o.cacheDir,
		DaemonOpens: o.daemonOpens, Publishers: o.publishers, Publish: o.publish,
		Logger: slog.New(slog.NewTextHandler(fsLog, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	mp := t.TempDir()
	opts := sfs.MountOptions(sfs.MountConfig{Debug: testing.Verbose() && os.Getenv("SSTATEFS_FUSE_DEBUG") != "", AllowOther: o.allowOther})
	fuseLog := &testutil.SyncBuffer{}
	if !opts.Debug {
		opts.Logger = log.New(fuseLog, "", 0)
		opts.MountOptions.Logger = opts.Logger
		opts.Debug = o.debugLog
	}
	server, err := gofs.Mount(mp, root, opts)
	if err != nil {
		t.Fatal(err)
	}
	if o.readAheadKB == 0 {
		o.readAheadKB = sfs.ReadAheadKB
	}
	if err := sfs.SetReadAhead(mp, o.readAheadKB); err != nil {
		t.Errorf("read-ahead: %v", err)
	}
	m := &testMount{dir: mp, storeDir: o.storeDir, cacheDir: o.cacheDir, fault: fault, live: live, cache: c, server: server, fuseLog: fuseLog, fsLog: fsLog, fs: f, clock: clock}
	t.Cleanup(func() {
		fault.down.Store(false)
		if err := server.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
		f.Close()
		// the downloads stop before the test's directories go
		c.Close()
		if t.Failed() {
			t.Logf("cache log:\n%s\nfs log:\n%s", cacheLog.String(), fsLog.String())
			if o.debugLog {
				t.Logf("go-fuse log:\n%s", fuseLog.String())
			}
		}
	})
	return m
}

func (m *testMount) unmount(t *testing.T) {
	t.Helper()
	if err := m.server.Unmount(); err != nil {
		t.Fatal(err)
	}
}

func rnd(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

const (
	h1     = "c369644453e7186778f2fc3e6bd1f8573c07d05e836615ed00790293797515bf"
	h2     = "7934f5033b9e8e2ab30a0af81640942d3e239c9ba8d0350b520fef20a5478762"
	pkgKey = "debian-12/c3/69/sstate:sstate-probe-native:x86_64-linux:1.0:r0:x86_64:14:" + h1 + "_populate_sysroot.tar.zst"
	licKey = "79/34/sstate:sstate-probe-native::1.0:r0::14:" + h2 + "_populate_lic.tar.zst"
)

var missKey = "debian-12/aa/bb/sstate:sstate-probe-native:x86_64-linux:1.0:r0:x86_64:14:aabb" + h1[4:] + "_populate_sysroot.tar.zst"

func writeStore(t testing.TB, dir, key string, data []byte) {
	t.Helper()
	p := filepath.Join(dir, key)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: %v", tool, err)
		}
	}
}

func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// makePackage builds a real sstate archive the way bitbake does
// (tar -I "pzstd -8 -p2" -cS) from a small tree, and returns it.
func makePackage(t *testing.T) ([]byte, map[string][]byte) {
	t.Helper()
	needTools(t, "tar", "zstd", "pzstd")
	src := t.TempDir()
	files := map[string][]byte{
		"sysroot-providers/sstate-probe-native": []byte("sstate-probe-native\n"),
		"recipe-sysroot-native/usr/bin/hello":   rnd(200_000),
		"fixmepath":                             []byte("recipe-sysroot-native/usr/bin/hello\n"),
	}
	for p, d := range files {
		writeStore(t, src, p, d)
	}
	out := filepath.Join(t.TempDir(), "pkg.tar.zst")
	run(t, src, "tar", "-I", "pzstd -8 -p2", "-cS", "-f", out, ".")
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return data, files
}

// TestRestoreSequence replays what bitbake does on a restore build
// (compat/bitbake-sstate-syscalls.md, read/restore path) through the mount,
// extracting a real archive with tar and pzstd.
func TestRestoreSequence(t *testing.T) {
	pkg, files := makePackage(t)
	storeDir := t.TempDir()
	siginfo := rnd(15013)
	writeStore(t, storeDir, pkgKey, pkg)
	writeStore(t, storeDir, pkgKey+".siginfo", siginfo)
	old := time.Now().Add(-48 * time.Hour)
	os.Chtimes(filepath.Join(storeDir, pkgKey), old, old)
	m := mount(t, mountOpts{storeDir: storeDir})
	p := filepath.Join(m.dir, pkgKey)

	// sstate_checkhashes: stat, utime, stat .sig (ENOENT), stat .siginfo, utime
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != int64(len(pkg)) || fi.Mode().Perm() != 0o664 || !fi.Mode().IsRegular() {
		t.Fatalf("stat: size %d mode %v", fi.Size(), fi.Mode())
	}
	if err := os.Chtimes(p, time.Time{}, time.Time{}); err != nil { // utime(path, None) equivalent below
		t.Fatal(err)
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, nil, 0); err != nil {
		t.Fatalf("utimensat(pkg, NULL): %v", err)
	}
	if _, err := os.Stat(p + ".sig"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat .sig = %v, want ENOENT", err)
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p+".siginfo", nil, 0); err != nil {
		t.Fatalf("utimensat(siginfo, NULL): %v", err)
	}
	fi, _ = os.Stat(p)
	if time.Since(fi.ModTime()) > time.Minute {
		t.Errorf("utimensat did not refresh the mtime: %v", fi.ModTime())
	}

	// sstate_unpack_package: tar -I "pzstd -p 2" -xvpf pkg
	dest := t.TempDir()
	run(t, dest, "tar", "-I", "pzstd -p 2", "-xvpf", p)
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(dest, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("extracted %s differs (%v)", name, err)
		}
	}
	// [ -e f ] and touch, touch --no-dereference on pkg, .sig, .siginfo
	for _, f := range []string{p, p + ".sig", p + ".siginfo"} {
		run(t, dest, "sh", "-c", `f="$1"; if [ -e "$f" ]; then touch "$f" && touch --no-dereference "$f"; fi`, "sh", f)
	}
	if _, err := os.Stat(p + ".sig"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("touch guarded by [ -e ] created .sig: %v", err)
	}
	// the store object is untouched: same bytes, same mtime
	got, _ := os.ReadFile(filepath.Join(storeDir, pkgKey))
	sfi, _ := os.Stat(filepath.Join(storeDir, pkgKey))
	if !bytes.Equal(got, pkg) || !sfi.ModTime().Equal(old) {
		t.Error("the restore changed the store's object")
	}
	// and the object reads back exactly through the mount
	got, err = os.ReadFile(p)
	if err != nil || !bytes.Equal(got, pkg) {
		t.Fatalf("read through the mount: %v", err)
	}
	// writes to a store object are refused, truncation too
	if f, err := os.OpenFile(p, os.O_WRONLY, 0); err != nil {
		t.Fatalf("open O_WRONLY (touch does this): %v", err)
	} else {
		if _, err := f.Write([]byte("x")); !errors.Is(err, syscall.EROFS) {
			t.Errorf("write to a store object = %v, want EROFS", err)
		}
		f.Close()
	}
	if _, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("O_TRUNC open of a store object = %v, want EROFS", err)
	}
}

// TestPopulateSequence replays bitbake's write path (sanity check, mkdir,
// temp file, tar via creat, chmod, link, touch, unlink; siginfo by rename)
// into the local overlay.
func TestPopulateSequence(t *testing.T) {
	needTools(t, "tar", "pzstd", "zstd")
	m := mount(t, mountOpts{})
	// sanity.bbclass check_create_long_filename
	long := filepath.Join(m.dir, strings.Repeat("a", 200))
	f, err := os.OpenFile(long, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o666)
	if err != nil {
		t.Fatalf("sanity check create: %v", err)
	}
	f.Close()
	if err := os.Remove(long); err != nil {
		t.Fatalf("sanity check unlink: %v", err)
	}
	final := filepath.Join(m.dir, pkgKey)
	dir := filepath.Dir(final)
	if _, err := os.Stat(final); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat final = %v", err)
	}
	// mkdir each level; concurrent mkdir of the same level: EEXIST
	for _, d := range []string{filepath.Join(m.dir, "debian-12"), filepath.Join(m.dir, "debian-12/c3"), dir} {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range 2 {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = syscall.Mkdir(d, 0o777) }()
		}
		wg.Wait()
		ok := 0
		for _, err := range errs {
			switch {
			case err == nil:
				ok++
			case !errors.Is(err, syscall.EEXIST):
				t.Fatalf("mkdir %s: %v, want nil or EEXIST", d, err)
			}
		}
		if ok > 1 {
			t.Fatalf("mkdir %s succeeded twice", d)
		}
		if err := syscall.Mkdir(d, 0o777); !errors.Is(err, syscall.EEXIST) {
			t.Fatalf("mkdir of an existing dir = %v, want EEXIST", err)
		}
	}
	// NamedTemporaryFile in the same dir
	tmp := final + "Xy7_k2Qa"
	tf, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		t.Fatalf("temp file: %v", err)
	}
	src := t.TempDir()
	payload := rnd(300_000)
	writeStore(t, src, "recipe-sysroot-native/usr/bin/hello", payload)
	// tar's child does creat(tmp) on the existing temp file
	run(t, src, "tar", "-I", "pzstd -8 -p2", "-cS", "-f", tmp, ".")
	if err := os.Chmod(tmp, 0o664); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(final); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("lstat final = %v", err)
	}
	if err := os.Link(tmp, final); err != nil {
		t.Fatalf("link(tmp, final): %v", err)
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, tmp, nil, 0); err != nil {
		t.Fatal(err)
	}
	tf.Close()
	if err := os.Remove(tmp); err != nil {
		t.Fatal(err)
	}
	// link onto an existing name: EEXIST
	if err := os.Link(final, final); !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("link onto an existing name = %v, want EEXIST", err)
	}
	// siginfo: mkstemp, zstd writes, chmod, rename
	testutil.DumpSiginfo(t, final, `{"task": "populate_sysroot"}`)
	// what was published reads back and extracts
	fi, err := os.Stat(final)
	if err != nil || fi.Mode().Perm() != 0o664 {
		t.Fatalf("published package: %v %v", fi, err)
	}
	dest := t.TempDir()
	run(t, dest, "tar", "-I", "pzstd -p 2", "-xpf", final)
	if got, _ := os.ReadFile(filepath.Join(dest, "recipe-sysroot-native/usr/bin/hello")); !bytes.Equal(got, payload) {
		t.Fatal("published package does not extract to what was packed")
	}
	out := run(t, "", "sh", "-c", `zstd -dc "$1"`, "sh", final+".siginfo")
	if !strings.Contains(out, "populate_sysroot") {
		t.Fatalf("siginfo reads %q", out)
	}
	names, _ := os.ReadDir(dir)
	var got []string
	for _, n := range names {
		got = append(got, n.Name())
	}
	if len(got) != 2 {
		t.Errorf("directory holds %v, want the package and its siginfo", got)
	}
}

// TestAbsentNamesCostNothing: with a fresh index, stat of absent names never
// reaches the store.
func TestAbsentNamesCostNothing(t *testing.T) {
	storeDir := t.TempDir()
	writeStore(t, storeDir, pkgKey, []byte("x"))
	m := mount(t, mountOpts{storeDir: storeDir})
	m.fault.stats.Store(0)
	m.fault.opens.Store(0)
	for i := range 500 {
		name := strings.Replace(missKey, "_populate_sysroot", "_t"+string(rune('a'+i%26))+strings.Repeat("x", i%7), 1)
		for _, suffix := range []string{"", ".sig", ".siginfo"} {
			if _, err := os.Stat(filepath.Join(m.dir, name+suffix)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("stat absent: %v", err)
			}
		}
	}
	if n := m.fault.stats.Load() + m.fault.opens.Load(); n != 0 {
		t.Fatalf("1500 absent lookups made %d store calls, want 0", n)
	}
	// the hidden metadata prefix is neither listed nor reachable
	if _, err := os.Stat(filepath.Join(m.dir, ".sstatefs")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf(".sstatefs reachable: %v", err)
	}
	ents, _ := os.ReadDir(m.dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".sstatefs") {
			t.Errorf("root lists %s", e.Name())
		}
	}
}

// TestNoIndexProbes: a store without an index (a plain mirror) is probed,
// and the answers (absent ones too) are cached.
func TestNoIndexProbes(t *testing.T) {
	storeDir := t.TempDir()
	data := rnd(1000)
	writeStore(t, storeDir, pkgKey, data)
	m := mount(t, mountOpts{storeDir: storeDir, noIndex: true})
	if got, err := os.ReadFile(filepath.Join(m.dir, pkgKey)); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read without index: %v", err)
	}
	before := m.fault.stats.Load()
	for range 3 {
		if _, err := os.Stat(filepath.Join(m.dir, missKey)); !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		// defeat the kernel's negative dentry cache
		time.Sleep(1100 * time.Millisecond)
	}
	if n := m.fault.stats.Load() - before; n != 1 {
		t.Errorf("3 stats of one absent name probed the store %d times, want 1", n)
	}
	// names outside the sstate grammar are never probed
	before = m.fault.stats.Load()
	os.Stat(filepath.Join(m.dir, strings.Repeat("b", 200)))
	os.Stat(filepath.Join(m.dir, "ab/cd/not-an-object"))
	if n := m.fault.stats.Load() - before; n != 0 {
		t.Errorf("non-sstate names probed the store %d times", n)
	}
}

// TestConcurrentReadersFetchOnce: eight readers of one uncached object cause
// one download.
func TestConcurrentReadersFetchOnce(t *testing.T) {
	storeDir := t.TempDir()
	data := rnd(8 << 20)
	writeStore(t, storeDir, pkgKey, data)
	m := mount(t, mountOpts{storeDir: storeDir})
	var wg sync.WaitGroup
	var bad atomic.Int64
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := os.ReadFile(filepath.Join(m.dir, pkgKey))
			if err != nil || !bytes.Equal(got, data) {
				bad.Add(1)
			}
		}()
	}
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d readers got wrong bytes or errors", bad.Load())
	}
	if n := m.fault.opens.Load(); n != 1 {
		t.Fatalf("8 concurrent readers downloaded the object %d times, want 1", n)
	}
}

// TestCorruptObjectIsAnError: bytes in the store that do not match the index
// digest give EIO, never a clean end of file.
func TestCorruptObjectIsAnError(t *testing.T) {
	storeDir := t.TempDir()
	data := rnd(100_000)
	writeStore(t, storeDir, pkgKey, data)
	m := mount(t, mountOpts{storeDir: storeDir})
	bad := append([]byte(nil), data...)
	bad[5000] ^= 0xff
	// same size and mtime, other content: only the digest can tell
	p := filepath.Join(storeDir, pkgKey)
	fi, _ := os.Stat(p)
	os.WriteFile(p, bad, 0o644)
	os.Chtimes(p, fi.ModTime(), fi.ModTime())
	got, err := os.ReadFile(filepath.Join(m.dir, pkgKey))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of a corrupt object: %d bytes, err %v; want EIO", len(got), err)
	}
	// No byte is served before it has verified: an object of one chunk
	// verifies whole first.
	if len(got) != 0 {
		t.Fatalf("the reader got %d bytes of a corrupt object", len(got))
	}
	// a second open fails again: nothing was cached (and the failed
	// download is not retried before its back-off ends)
	if _, err := os.ReadFile(filepath.Join(m.dir, pkgKey)); !errors.Is(err, syscall.EIO) {
		t.Fatalf("second read of a corrupt object: %v", err)
	}
}

// TestStoreDownBoundedAndRecovers: with the store hanging, an open of an
// uncached object fails with EIO within the deadline, lookups of unknown
// names answer ENOENT, and everything works again once the store is back.
func TestStoreDownBoundedAndRecovers(t *testing.T) {
	storeDir := t.TempDir()
	data := rnd(10_000)
	writeStore(t, storeDir, pkgKey, data)
	writeStore(t, storeDir, licKey, data[:500])
	m := mount(t, mountOpts{storeDir: storeDir, timeout: time.Second})
	m.fault.down.Store(true)
	start := time.Now()
	_, err := os.ReadFile(filepath.Join(m.dir, pkgKey))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("open with the store down = %v, want EIO", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("open with the store down took %v", d)
	}
	// stat is answered from the index, no store needed
	if _, err := os.Stat(filepath.Join(m.dir, licKey)); err != nil {
		t.Fatalf("stat from the index with the store down: %v", err)
	}
	m.fault.down.Store(false)
	m.clock.Add(time.Hour) // past any back-off of a failed download
	got, err := os.ReadFile(filepath.Join(m.dir, pkgKey))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after recovery: %v", err)
	}
}

// TestStoreDownWithoutIndex: lookups that must probe answer ENOENT in bounded
// time while the store hangs.
func TestStoreDownWithoutIndex(t *testing.T) {
	storeDir := t.TempDir()
	writeStore(t, storeDir, pkgKey, []byte("abc"))
	m := mount(t, mountOpts{storeDir: storeDir, noIndex: true, timeout: time.Second})
	m.fault.down.Store(true)
	start := time.Now()
	if _, err := os.Stat(filepath.Join(m.dir, pkgKey)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat with the store down = %v, want ENOENT", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("stat with the store down took %v", d)
	}
	m.fault.down.Store(false)
	m.clock.Add(time.Hour)              // past the back-off of the store that did not answer
	time.Sleep(1100 * time.Millisecond) // kernel negative entry timeout
	if _, err := os.Stat(filepath.Join(m.dir, pkgKey)); err != nil {
		t.Fatalf("stat after recovery: %v", err)
	}
}

// TestWarmRestart: a second mount on the same cache directory reads without
// fetching again.
func TestWarmRestart(t *testing.T) {
	storeDir, cacheDir := t.TempDir(), t.TempDir()
	data := rnd(1 << 20)
	writeStore(t, storeDir, pkgKey, data)
	m := mount(t, mountOpts{storeDir: storeDir, cacheDir: cacheDir})
	if _, err := os.ReadFile(filepath.Join(m.dir, pkgKey)); err != nil {
		t.Fatal(err)
	}
	if m.fault.opens.Load() != 1 {
		t.Fatalf("cold read: %d opens", m.fault.opens.Load())
	}
	m2 := mount(t, mountOpts{storeDir: storeDir, cacheDir: cacheDir})
	got, err := os.ReadFile(filepath.Join(m2.dir, pkgKey))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatal(err)
	}
	if n := m2.fault.opens.Load(); n != 0 {
		t.Fatalf("warm read after restart fetched %d times, want 0", n)
	}
}

// TestCacheBound: reading more than the cache holds keeps it within bounds.
func TestCacheBound(t *testing.T) {
	storeDir := t.TempDir()
	var keys []string
	for i := range 20 {
		h := strings.Repeat(string("0123456789abcdef"[i%16]), 2) + "11" + h1[4:]
		k := h[0:2] + "/" + h[2:4] + "/sstate:p:a:1:r0:x:14:" + h + "_t" + string(rune('a'+i)) + ".tar.zst"
		writeStore(t, storeDir, k, rnd(100_000))
		keys = append(keys, k)
	}
	onFetch, fetchedOne := fetched()
	m := mount(t, mountOpts{storeDir: storeDir, cacheBytes: 350_000, onFetch: onFetch})
	for _, k := range keys {
		if _, err := os.ReadFile(filepath.Join(m.dir, k)); err != nil {
			t.Fatal(err)
		}
		// the read may end before the object is filed (and older ones
		// evicted): a walk meanwhile could count both
		fetchedOne(t, 1)
		var total int64
		var names []string
		filepath.Walk(filepath.Join(m.cacheDir, "cache", "objects"), func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				total += fi.Size()
				names = append(names, fi.Name()[:8])
			}
			return nil
		})
		if total > 350_000 {
			t.Fatalf("cache holds %d bytes, bound 350000: %v; stats %+v", total, names, m.cache.Stats())
		}
	}
}

// TestLocksLinksAndTree covers what compat/README.md lists beyond the traced
// builds: flock with stable inodes, symlinks, rename over an existing name,
// readdir of the whole tree, unlink of a store object (hidden, store kept).
func TestLocksLinksAndTree(t *testing.T) {
	storeDir := t.TempDir()
	writeStore(t, storeDir, pkgKey, []byte("pkg"))
	writeStore(t, storeDir, pkgKey+".siginfo", []byte("sig"))
	writeStore(t, storeDir, licKey, []byte("lic"))
	m := mount(t, mountOpts{storeDir: storeDir})

	// bitbake's lock loop: flock, then fstat(fd).st_ino == stat(name).st_ino
	lock := filepath.Join(m.dir, licKey+".lock")
	lf, err := os.OpenFile(lock, os.O_RDWR|os.O_CREATE, 0o664)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatalf("flock: %v", err)
	}
	var a, b syscall.Stat_t
	syscall.Fstat(int(lf.Fd()), &a)
	syscall.Stat(lock, &b)
	if a.Ino != b.Ino {
		t.Fatalf("fstat ino %d != stat ino %d", a.Ino, b.Ino)
	}
	lf2, _ := os.OpenFile(lock, os.O_RDWR, 0)
	if err := syscall.Flock(int(lf2.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); !errors.Is(err, syscall.EWOULDBLOCK) {
		t.Errorf("second flock = %v, want EWOULDBLOCK", err)
	}
	lf2.Close()
	// store objects keep their inode number across lookups
	var s1, s2 syscall.Stat_t
	syscall.Stat(filepath.Join(m.dir, pkgKey), &s1)
	time.Sleep(1100 * time.Millisecond)
	syscall.Stat(filepath.Join(m.dir, pkgKey), &s2)
	if s1.Ino != s2.Ino || s1.Ino == 0 {
		t.Errorf("inode of a store object changed: %d then %d", s1.Ino, s2.Ino)
	}
	// mirror download: P.tmp then rename to P (and rename over an existing name)
	dl := filepath.Join(m.dir, "debian-12/aa/bb/sstate:x:y:1:r0:z:14:aabb"+h1[4:]+"_t.tar.zst")
	os.MkdirAll(filepath.Dir(dl), 0o775)
	os.WriteFile(dl+".tmp", []byte("one"), 0o664)
	if err := os.Rename(dl+".tmp", dl); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(dl+".tmp", []byte("two"), 0o664)
	if err := os.Rename(dl+".tmp", dl); err != nil {
		t.Fatalf("rename over an existing name: %v", err)
	}
	if got, _ := os.ReadFile(dl); string(got) != "two" {
		t.Fatalf("after rename over: %q", got)
	}
	// rename over a store object shadows it locally
	os.WriteFile(dl+".tmp", []byte("local"), 0o664)
	if err := os.Rename(dl+".tmp", filepath.Join(m.dir, licKey)); err != nil {
		t.Fatalf("rename over a store object: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(m.dir, licKey)); string(got) != "local" {
		t.Fatalf("shadowed object reads %q", got)
	}
	// symlinks (file:// mirrors are linked in)
	ln := filepath.Join(m.dir, "debian-12/aa/bb/link")
	if err := os.Symlink("/some/mirror/object", ln); err != nil {
		t.Fatal(err)
	}
	if tgt, err := os.Readlink(ln); err != nil || tgt != "/some/mirror/object" {
		t.Fatalf("readlink = %q, %v", tgt, err)
	}
	// unlink of a store object hides it; the store keeps it
	if err := os.Remove(filepath.Join(m.dir, pkgKey+".siginfo")); err != nil {
		t.Fatalf("unlink store object: %v", err)
	}
	if _, err := os.Stat(filepath.Join(m.dir, pkgKey+".siginfo")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("unlinked object still visible: %v", err)
	}
	if _, err := os.Stat(filepath.Join(storeDir, pkgKey+".siginfo")); err != nil {
		t.Fatalf("unlink through the mount removed the store's object: %v", err)
	}
	// readdir of the whole tree (cleanup tools glob */*)
	var found []string
	filepath.WalkDir(m.dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			t.Errorf("walk %s: %v", p, err)
			return nil
		}
		if !d.IsDir() {
			r, _ := filepath.Rel(m.dir, p)
			found = append(found, r)
		}
		return nil
	})
	sort.Strings(found)
	want := []string{licKey, licKey + ".lock", pkgKey, "debian-12/aa/bb/link", strings.TrimPrefix(dl, m.dir+"/")}
	sort.Strings(want)
	if strings.Join(found, "\n") != strings.Join(want, "\n") {
		t.Errorf("walk found\n%s\nwant\n%s", strings.Join(found, "\n"), strings.Join(want, "\n"))
	}
	// statfs reports the cache disk
	var st, cst syscall.Statfs_t
	if err := syscall.Statfs(m.dir, &st); err != nil {
		t.Fatal(err)
	}
	syscall.Statfs(m.cacheDir, &cst)
	if st.Blocks != cst.Blocks || st.Bsize != cst.Bsize {
		t.Errorf("statfs: %d blocks of %d, cache disk %d of %d", st.Blocks, st.Bsize, cst.Blocks, cst.Bsize)
	}
}

// TestInterruptedReaderReturns: a process blocked on an open of an object
// the store will not deliver returns as soon as it is interrupted, long
// before the store's deadline.
func TestInterruptedReaderReturns(t *testing.T) {
	storeDir := t.TempDir()
	writeStore(t, storeDir, pkgKey, rnd(1000))
	m := mount(t, mountOpts{storeDir: storeDir, timeout: time.Minute})
	m.fault.down.Store(true)
	cmd := exec.Command("cat", filepath.Join(m.dir, pkgKey))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for m.fault.opens.Load() == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("interrupted reader took %v to return", d)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("interrupted reader still blocked after 30s (store deadline is 1m)")
	}
}

// TestStreamingLargeObjectExact: an object of several chunks, read through
// the mount while it downloads with parallel ranged reads, reads exactly.
func TestStreamingLargeObjectExact(t *testing.T) {
	storeDir := t.TempDir()
	data := rnd(21<<20 + 4321)
	writeStore(t, storeDir, pkgKey, data)
	m := mount(t, mountOpts{storeDir: storeDir})
	got, err := os.ReadFile(filepath.Join(m.dir, pkgKey))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("streamed read: %d bytes, %v", len(got), err)
	}
	if n := m.fault.opens.Load(); n < 3 {
		t.Errorf("a %d-byte object was fetched with %d reads, want parallel ranged reads", len(data), n)
	}
	// and again, from the verified cache
	got, err = os.ReadFile(filepath.Join(m.dir, pkgKey))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("cached read: %v", err)
	}
}

// TestKernelOpensKeepPages: with the kernel opening files itself (the
// default), a second read of an object is served from the kernel's pages
// without reaching sstatefs, and overlay files opened again (no handle)
// read and write correctly, including O_TRUNC and O_APPEND; with
// DaemonOpens every open reaches sstatefs and the reads are the same.
func TestKernelOpensKeepPages(t *testing.T) {
	for _, c := range []struct {
		daemon bool
		ra     int
	}{{false, 0}, {false, 1024}, {true, 0}} {
		daemon := c.daemon
		t.Run(fmt.Sprintf("daemonOpens=%v,readAhead=%d", daemon, c.ra), func(t *testing.T) {
			storeDir := t.TempDir()
			data := rnd(3 << 20)
			writeStore(t, storeDir, pkgKey, data)
			onFetch, fetchedOne := fetched()
			m := mount(t, mountOpts{storeDir: storeDir, daemonOpens: daemon, readAheadKB: c.ra, onFetch: onFetch})
			defer func() {
				// reads larger than a splice pipe are copied, not tried
				// and failed (go-fuse would log each failure)
				if l := m.fuseLog.String(); strings.Contains(l, "trySplice") {
					t.Errorf("go-fuse failed to splice replies:\n%s", l)
				}
			}()
			p := filepath.Join(m.dir, pkgKey)
			var first cache.Stats
			for i := range 3 {
				got, err := os.ReadFile(p)
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("read %d: %d bytes, %v", i, len(got), err)
				}
				if i == 0 {
					// the read may end before the download is filed: a
					// second open meanwhile joins it instead of hitting
					fetchedOne(t, 1)
					first = m.cache.Stats()
				}
			}
			st := m.cache.Stats()
			if st.Misses != 1 {
				t.Errorf("downloads = %d, want 1; stats %+v", st.Misses, st)
			}
			if !daemon && st.Hits != first.Hits {
				t.Errorf("%d reads reached the disk cache after the first read; want 0 (kernel pages); stats after the first read %+v, after three %+v", st.Hits-first.Hits, first, st)
			}
			if daemon && st.Hits < first.Hits+2 {
				t.Errorf("cache hits %d after the first read, %d after three: want an open per read", first.Hits, st.Hits)
			}

			// an overlay file, reopened: truncate, write, append, read back
			f := filepath.Join(m.dir, "scratch")
			if err := os.WriteFile(f, []byte("0123456789"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(f, []byte("abc"), 0o644); err != nil { // O_TRUNC of an existing file
				t.Fatal(err)
			}
			af, err := os.OpenFile(f, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := af.WriteString("def"); err != nil {
				t.Fatal(err)
			}
			af.Close()
			if got, err := os.ReadFile(f); err != nil || string(got) != "abcdef" {
				t.Fatalf("overlay file = %q, %v; want abcdef", got, err)
			}
			if got, err := os.ReadFile(filepath.Join(m.cacheDir, "overlay", "scratch")); err != nil || string(got) != "abcdef" {
				t.Fatalf("overlay file on disk = %q, %v; want abcdef", got, err)
			}
			// an object stays read-only when opened for writing
			wf, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err == nil {
				_, err = wf.Write([]byte("x"))
				wf.Close()
			}
			if !errors.Is(err, syscall.EROFS) {
				t.Fatalf("write to an object = %v, want EROFS", err)
			}
			if _, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0); !errors.Is(err, syscall.EROFS) {
				t.Fatalf("truncating open of an object = %v, want EROFS", err)
			}
			if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("object after write attempts: %d bytes, %v", len(got), err)
			}
		})
	}
}

// TestCorruptDownloadLeavesNoPages: a reader of the start of a corrupt
// download gets none of its bytes, and nothing of it stays in the kernel's
// page cache (the kernel keeps pages across its own opens): once the store
// holds the right object again, a reader gets exactly it.
func TestCorruptDownloadLeavesNoPages(t *testing.T) {
	storeDir := t.TempDir()
	data := rnd(4 << 20)
	writeStore(t, storeDir, pkgKey, data)
	m := mount(t, mountOpts{storeDir: storeDir})
	sp := filepath.Join(storeDir, pkgKey)
	fi, _ := os.Stat(sp)
	bad := append([]byte(nil), data...)
	for i := range 1 << 20 {
		bad[i] ^= 0x5a
	}
	os.WriteFile(sp, bad, 0o644)
	os.Chtimes(sp, fi.ModTime(), fi.ModTime())

	// read only the start: nothing is served before it has verified
	f, err := os.Open(filepath.Join(m.dir, pkgKey))
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 64<<10)
	n, err := io.ReadFull(f, head)
	f.Close()
	if n != 0 || !errors.Is(err, syscall.EIO) {
		t.Fatalf("first read of a corrupt object: %d bytes, %v; want EIO and no byte", n, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for m.cache.Stats().Corrupted == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the corrupt download was never detected")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // the invalidation follows the failure
	os.WriteFile(sp, data, 0o644)
	os.Chtimes(sp, fi.ModTime(), fi.ModTime())
	m.clock.Add(time.Hour) // past any back-off of a failed download
	got, err := os.ReadFile(filepath.Join(m.dir, pkgKey))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		i := 0
		for i < len(got) && i < len(data) && got[i] == data[i] {
			i++
		}
		t.Fatalf("read after the store was repaired differs from the object at byte %d (of %d): pages of the corrupt download were kept", i, len(got))
	}
}

// TestOverlayNamesFollowChanges: the in-memory list of overlay names that
// spares store lookups a syscall follows every change made through the
// mount (after the kernel's entry cache expired, lookups reach the FS
// again), and is rebuilt from the overlay directory by a new mount.
func TestOverlayNamesFollowChanges(t *testing.T) {
	storeDir := t.TempDir()
	writeStore(t, storeDir, pkgKey, []byte("pkg"))
	cacheDir := t.TempDir()
	m := mount(t, mountOpts{storeDir: storeDir, cacheDir: cacheDir})
	at := func(p string) string { return filepath.Join(m.dir, p) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(at("a/b"), 0o755))
	must(os.WriteFile(at("a/b/f"), []byte("f"), 0o644))
	must(os.WriteFile(at("a/g"), []byte("g"), 0o644))
	must(os.Rename(at("a"), at("c")))
	must(os.WriteFile(at("tmp1"), []byte("t"), 0o644))
	must(os.Link(at("tmp1"), at("hard")))
	must(os.Rename(at("tmp1"), at("moved")))
	must(os.Symlink("moved", at("sym")))
	must(os.WriteFile(at("gone"), []byte("x"), 0o644))
	must(os.Remove(at("gone")))
	// an overlay file over a store object's name, then removed again
	must(os.MkdirAll(filepath.Dir(at(pkgKey)), 0o755))
	must(os.WriteFile(at(pkgKey+".tmp"), []byte("local"), 0o644))
	must(os.Rename(at(pkgKey+".tmp"), at(pkgKey)))

	check := func(m *testMount, when string) {
		t.Helper()
		for p, want := range map[string]string{"c/b/f": "f", "c/g": "g", "hard": "t", "moved": "t", "sym": "t", pkgKey: "local"} {
			got, err := os.ReadFile(filepath.Join(m.dir, p))
			if err != nil || string(got) != want {
				t.Errorf("%s: %s = %q, %v; want %q", when, p, got, err, want)
			}
		}
		for _, p := range []string{"a", "a/b/f", "tmp1", "gone", pkgKey + ".tmp"} {
			if _, err := os.Lstat(filepath.Join(m.dir, p)); !errors.Is(err, syscall.ENOENT) {
				t.Errorf("%s: %s = %v, want ENOENT", when, p, err)
			}
		}
	}
	time.Sleep(1200 * time.Millisecond) // past the kernel's entry cache
	check(m, "same mount")
	m.unmount(t)
	m2 := mount(t, mountOpts{storeDir: storeDir, cacheDir: cacheDir})
	check(m2, "new mount")
}

// TestWarmDirs: after WarmDirs the kernel knows every store directory, so
// a stat of an object costs one lookup (of its own name), not one per
// directory level; a store with more directories than the limit is left
// alone.
func TestWarmDirs(t *testing.T) {
	storeDir := t.TempDir()
	keys := []string{
		"aa/bb/sstate:a::1:r0::14:aabb000000000000000000000000000000000000000000000000000000000000_populate_lic.tar.zst",
		"cc/dd/sstate:c::1:r0::14:ccdd000000000000000000000000000000000000000000000000000000000000_populate_lic.tar.zst",
		pkgKey, // debian-12/c3/69/...
	}
	for _, k := range keys {
		writeStore(t, storeDir, k, []byte("x"))
	}
	m := mount(t, mountOpts{storeDir: storeDir, debugLog: true})
	if n, err := m.fs.WarmDirs(m.dir, 6); err != nil || n != 0 {
		t.Fatalf("WarmDirs over its limit = %d, %v; want 0 (left alone)", n, err)
	}
	n, err := m.fs.WarmDirs(m.dir, 100)
	if err != nil {
		t.Fatal(err)
	}
	// aa aa/bb cc cc/dd debian-12 debian-12/c3 debian-12/c3/69
	if n != 7 {
		t.Fatalf("WarmDirs showed %d directories, want 7", n)
	}
	before := strings.Count(m.fuseLog.String(), ": LOOKUP ")
	for _, k := range keys {
		if _, err := os.Stat(filepath.Join(m.dir, k)); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Count(m.fuseLog.String(), ": LOOKUP ") - before; got != len(keys) {
		t.Errorf("%d lookups for %d objects in warmed directories, want one each", got, len(keys))
	}
}

// TestAbsentLayoutDirs: with a fresh index and no equivalences, a layout
// directory the store does not have is absent, so the kernel answers the
// names bitbake checks below it without asking; it can still be created
// through the mount, and a mount without an index shows it (names there
// are probed).
func TestAbsentLayoutDirs(t *testing.T) {
	storeDir := t.TempDir()
	writeStore(t, storeDir, pkgKey, []byte("pkg"))
	absent := "ee/ff/sstate:x::1:r0::14:eeff000000000000000000000000000000000000000000000000000000000000_populate_lic.tar.zst"
	m := mount(t, mountOpts{storeDir: storeDir, debugLog: true})
	before := strings.Count(m.fuseLog.String(), ": LOOKUP ")
	for _, suffix := range []string{"", ".sig", ".siginfo"} {
		if _, err := os.Stat(filepath.Join(m.dir, absent+suffix)); !errors.Is(err, syscall.ENOENT) {
			t.Fatalf("stat %s = %v, want ENOENT", absent+suffix, err)
		}
	}
	// the store has no ee/ at all: one lookup, then the kernel knows
	if got := strings.Count(m.fuseLog.String(), ": LOOKUP ") - before; got != 1 {
		t.Errorf("%d lookups for three names in an absent directory, want 1", got)
	}
	if err := os.MkdirAll(filepath.Join(m.dir, "ee/ff"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(m.dir, absent), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(m.dir, absent)); err != nil || string(got) != "new" {
		t.Fatalf("file in a created layout directory = %q, %v", got, err)
	}

	m2 := mount(t, mountOpts{storeDir: t.TempDir(), noIndex: true})
	if fi, err := os.Stat(filepath.Join(m2.dir, "ee/ff")); err != nil || !fi.IsDir() {
		t.Fatalf("without an index, layout directory ee/ff = %v, %v; want a directory", fi, err)
	}
}

// TestNoXattrs: the mount has no extended attributes, says so with ENOTSUP
// like any file system without them, and the kernel, told once, stops
// asking: small writes through the mount cost one WRITE each, not a
// GETXATTR of security.capability too.
func TestNoXattrs(t *testing.T) {
	storeDir := t.TempDir()
	writeStore(t, storeDir, pkgKey, []byte("pkg"))
	m := mount(t, mountOpts{storeDir: storeDir, debugLog: true})
	obj := filepath.Join(m.dir, pkgKey)
	if _, err := unix.Getxattr(obj, "user.x", make([]byte, 64)); !errors.Is(err, syscall.ENOTSUP) {
		t.Errorf("getxattr of an object = %v, want ENOTSUP", err)
	}
	if _, err := unix.Listxattr(filepath.Dir(obj), make([]byte, 64)); !errors.Is(err, syscall.ENOTSUP) {
		t.Errorf("listxattr of a directory = %v, want ENOTSUP", err)
	}
	local := filepath.Join(filepath.Dir(obj), "new")
	f, err := os.Create(local)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Fsetxattr(int(f.Fd()), "user.x", []byte("v"), 0); !errors.Is(err, syscall.ENOTSUP) {
		t.Errorf("setxattr of a created file = %v, want ENOTSUP", err)
	}
	want := rnd(100 * 4096)
	for off := 0; off < len(want); off += 4096 {
		if _, err := f.Write(want[off : off+4096]); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(local); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("created file reads back %d bytes, %v; want the %d written", len(got), err, len(want))
	}
	if n := strings.Count(m.fuseLog.String(), ": GETXATTR "); n > 1 {
		t.Errorf("%d GETXATTR requests for 100 writes, the first getxattr and nothing more wanted", n)
	}
}
