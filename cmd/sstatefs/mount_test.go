package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/internal/config"
	"github.com/sstatefs/sstatefs/internal/mount"
	"github.com/sstatefs/sstatefs/internal/mountinfo"
	"github.com/sstatefs/sstatefs/internal/stores"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

const (
	hashA   = "c369644453e7186778f2fc3e6bd1f8573c07d05e836615ed00790293797515bf"
	keyPkg  = "debian-12/c3/69/sstate:sstate-probe-native:x86_64-linux:1.0:r0:x86_64:14:" + hashA + "_populate_sysroot.tar.zst"
	keyLic  = "79/34/sstate:sstate-probe-native::1.0:r0::14:7934f5033b9e8e2ab30a0af81640942d3e239c9ba8d0350b520fef20a5478762_populate_lic.tar.zst"
	keyGone = "aa/bb/sstate:sstate-probe-native::1.0:r0::14:aabbf5033b9e8e2ab30a0af81640942d3e239c9ba8d0350b520fef20a5478762_populate_lic.tar.zst"
)

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// makeArchive packs a small tree with real tar and zstd, as bitbake does.
func makeArchive(t *testing.T) ([]byte, []byte) {
	t.Helper()
	for _, tool := range []string{"tar", "zstd", "pzstd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	src := t.TempDir()
	payload := make([]byte, 500_000)
	rand.Read(payload)
	os.MkdirAll(filepath.Join(src, "usr/bin"), 0o755)
	os.WriteFile(filepath.Join(src, "usr/bin/hello"), payload, 0o755)
	out := filepath.Join(t.TempDir(), "a.tar.zst")
	if b, err := exec.Command("tar", "-I", "pzstd -8 -p2", "-cS", "-f", out, "-C", src, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, b)
	}
	data, _ := os.ReadFile(out)
	return data, payload
}

func testConfig(t *testing.T, url string) config.Config {
	cfg := config.Defaults()
	cfg.Stores = []config.StoreConfig{{URL: url, Timeout: config.Duration{Duration: 2 * time.Second}}}
	config.StoreDefaults(&cfg.Stores[0])
	cfg.Cache.Dir = t.TempDir()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func startTestMount(t *testing.T, cfg config.Config) *mount.Mount {
	t.Helper()
	testutil.RequireFUSE(t)
	m, err := mount.Start(context.Background(), cfg, t.TempDir(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	return m
}

// restore extracts an object through the mount with tar and pzstd, the way
// sstate_unpack_package does, and returns the extracted payload.
func restore(t *testing.T, mp, key string) []byte {
	t.Helper()
	dest := t.TempDir()
	if b, err := exec.Command("tar", "-I", "pzstd -p 2", "-xpf", filepath.Join(mp, key), "-C", dest).CombinedOutput(); err != nil {
		t.Fatalf("tar -x through the mount: %v %s", err, b)
	}
	got, err := os.ReadFile(filepath.Join(dest, "usr/bin/hello"))
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestMountS3(t *testing.T) {
	env := testutil.S3Server(t)
	bucket := env.NewBucket(t)
	t.Setenv("AWS_ACCESS_KEY_ID", env.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", env.SecretKey)
	archive, payload := makeArchive(t)
	cfg := testConfig(t, "s3://"+bucket+"/sstate")
	cfg.Stores[0].Endpoint = env.Endpoint
	cfg.Stores[0].PathStyle = true
	ctx := context.Background()
	store, err := stores.Open(ctx, cfg.Stores[0])
	if err != nil {
		t.Fatal(err)
	}
	for k, d := range map[string][]byte{keyPkg: archive, keyPkg + ".siginfo": []byte("siginfo"), keyLic: []byte("lic")} {
		if err := store.Create(ctx, k, bytes.NewReader(d), int64(len(d))); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	if err := indexBuild(ctx, cfg.Stores[0], 4, false, io.Discard, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "indexed 3 objects") {
		t.Errorf("index build said %q", out.String())
	}
	out.Reset()
	if err := indexShow(ctx, cfg.Stores[0], &out); err != nil || !strings.Contains(out.String(), "objects:  3") {
		t.Errorf("index show: %v\n%s", err, out.String())
	}

	clock := fakeCacheClock(t)
	m := startTestMount(t, cfg)
	if got := restore(t, m.Mountpoint(), keyPkg); !bytes.Equal(got, payload) {
		t.Fatal("restored payload differs")
	}
	if _, err := os.Stat(filepath.Join(m.Mountpoint(), keyGone)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("absent object: %v", err)
	}
	ents, err := os.ReadDir(filepath.Join(m.Mountpoint(), "debian-12/c3/69"))
	if err != nil || len(ents) != 2 {
		t.Fatalf("ls: %v %v", ents, err)
	}

	// store stopped: an uncached object fails with EIO in bounded time, a
	// cached one still reads, stat still answers from the index
	env.Stop()
	start := time.Now()
	if _, err := os.ReadFile(filepath.Join(m.Mountpoint(), keyLic)); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read with the store stopped = %v, want EIO", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("failing read took %v", d)
	}
	if got := restore(t, m.Mountpoint(), keyPkg); !bytes.Equal(got, payload) {
		t.Fatal("cached object unreadable while the store is down")
	}
	if _, err := os.Stat(filepath.Join(m.Mountpoint(), keyLic)); err != nil {
		t.Fatalf("stat from the index with the store down: %v", err)
	}
	env.Start()
	clock.Add(time.Hour) // past any back-off of a failed download // the failed download is retried once its back-off ends
	if got, err := os.ReadFile(filepath.Join(m.Mountpoint(), keyLic)); err != nil || string(got) != "lic" {
		t.Fatalf("after the store came back: %q %v", got, err)
	}
}

func TestMountHTTPMirror(t *testing.T) {
	archive, payload := makeArchive(t)
	dir := t.TempDir()
	for k, d := range map[string][]byte{keyPkg: archive, keyLic: []byte("lic")} {
		p := filepath.Join(dir, k)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, d, 0o644)
	}
	var requests []string
	var mu = make(chan struct{}, 1)
	fileServer := http.FileServer(http.Dir(dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu <- struct{}{}
		requests = append(requests, r.Method+" "+r.URL.Path)
		<-mu
		fileServer.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	count := func() int { mu <- struct{}{}; defer func() { <-mu }(); return len(requests) }

	t.Run("NoIndex", func(t *testing.T) {
		cfg := testConfig(t, srv.URL)
		m := startTestMount(t, cfg)
		if got := restore(t, m.Mountpoint(), keyPkg); !bytes.Equal(got, payload) {
			t.Fatal("restored payload differs")
		}
		before := count()
		for range 3 {
			if _, err := os.Stat(filepath.Join(m.Mountpoint(), keyGone)); !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
			time.Sleep(1100 * time.Millisecond) // past the kernel's negative entry timeout
		}
		if n := count() - before; n != 1 {
			t.Errorf("3 stats of an absent name made %d requests, want 1 (negative cache)", n)
		}
		// writes are kept locally: the mirror is read-only
		tmp := filepath.Join(m.Mountpoint(), "aa/bb/new.tmp")
		if err := os.MkdirAll(filepath.Dir(tmp), 0o775); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(tmp, []byte("local"), 0o664); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(tmp, filepath.Join(m.Mountpoint(), keyGone)); err != nil {
			t.Fatalf("link on a read-only mirror: %v", err)
		}
	})
	t.Run("WithIndex", func(t *testing.T) {
		fileCfg := testConfig(t, "file://"+dir)
		if err := indexBuild(context.Background(), fileCfg.Stores[0], 2, false, io.Discard, io.Discard); err != nil {
			t.Fatal(err)
		}
		cfg := testConfig(t, srv.URL+"/")
		m := startTestMount(t, cfg)
		if m.Live().Current() == nil || m.Live().Current().Len() != 2 {
			t.Fatal("index not loaded over HTTP")
		}
		before := count()
		for i := range 100 {
			name := strings.Replace(keyGone, "populate_lic", "t"+string(rune('a'+i%26))+strings.Repeat("x", i/26), 1)
			if _, err := os.Stat(filepath.Join(m.Mountpoint(), name)); !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
		}
		if n := count() - before; n != 0 {
			t.Errorf("100 absent names made %d requests with a fresh index, want 0", n)
		}
		if got := restore(t, m.Mountpoint(), keyPkg); !bytes.Equal(got, payload) {
			t.Fatal("restored payload differs")
		}
	})
}

// TestMountCommand runs the real binary: it mounts in the foreground,
// refuses a busy mountpoint with a clear message and unmounts on SIGTERM.
func TestMountCommand(t *testing.T) {
	testutil.RequireFUSE(t)
	bin := filepath.Join(t.TempDir(), "sstatefs")
	if b, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v %s", err, b)
	}
	data := t.TempDir()
	mp := filepath.Join(t.TempDir(), "mnt")
	cmd := exec.Command(bin, "mount", "--cache-dir", t.TempDir(), mp)
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+data, "SSTATEFS_CONFIG=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, _, ok := mountinfo.At(mp); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not mounted after 20s:\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// the embedded default store lives under the data directory
	if _, err := os.Stat(filepath.Join(data, "sstatefs", "store")); err != nil {
		t.Errorf("embedded default store not created: %v", err)
	}
	if err := os.WriteFile(filepath.Join(mp, strings.Repeat("x", 200)), nil, 0o666); err != nil {
		t.Errorf("sanity check file: %v", err)
	}
	// a second mount on the same mountpoint is refused
	out, err := exec.Command(bin, "mount", "--cache-dir", t.TempDir(), mp).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "is busy") {
		t.Errorf("second mount: %v\n%s", err, out)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no exit 20s after SIGTERM:\n%s", stderr.String())
	}
	if _, _, ok := mountinfo.At(mp); ok {
		t.Fatal("still mounted after exit")
	}
	if !strings.Contains(stderr.String(), "unmounting") {
		t.Errorf("log does not say it unmounted:\n%s", stderr.String())
	}
}

func TestMountRefusesWithoutFUSE(t *testing.T) {
	old := mount.FUSEDevice
	mount.FUSEDevice = filepath.Join(t.TempDir(), "no-fuse")
	t.Cleanup(func() { mount.FUSEDevice = old })
	cfg := testConfig(t, "file://"+t.TempDir())
	_, err := mount.Start(context.Background(), cfg, t.TempDir(), testLogger(t))
	if err == nil || !strings.Contains(err.Error(), "FUSE is unavailable") || !strings.Contains(err.Error(), "no-fuse") {
		t.Fatalf("mount without FUSE: %v", err)
	}
}
