package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/config"
	"github.com/sstatefs/sstatefs/internal/mount"
	"github.com/sstatefs/sstatefs/internal/mountinfo"
	"github.com/sstatefs/sstatefs/internal/stores"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

// testKey returns the key of a native populate_sysroot object for seed i.
func testKey(i int, task string) string {
	h := sha256.Sum256([]byte(fmt.Sprint("seed", i)))
	x := hex.EncodeToString(h[:])
	return "debian-12/" + x[0:2] + "/" + x[2:4] + "/sstate:probe" + fmt.Sprint(i) + "-native:x86_64-linux:1.0:r0:x86_64:14:" + x + "_" + task + ".tar.zst"
}

// publishLikeBitbake replays sstate_create_and_sign_package and
// dump_sigtask (compat/bitbake-sstate-syscalls.md, write path) through the
// mount: mkdir levels, temp file with O_EXCL, tar -I pzstd into it via
// creat, chmod 0664, link(tmp, final), utimensat(tmp), unlink(tmp); then the
// siginfo: mkstemp, zstd writes, chmod, rename onto the final name.
func publishLikeBitbake(t *testing.T, mp, key string, payload []byte) []byte {
	t.Helper()
	final := filepath.Join(mp, key)
	dir := filepath.Dir(final)
	if _, err := os.Stat(final); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("exists check: %v", err)
	}
	for _, d := range []string{filepath.Dir(filepath.Dir(dir)), filepath.Dir(dir), dir} {
		if err := syscall.Mkdir(d, 0o777); err != nil && !errors.Is(err, syscall.EEXIST) {
			t.Fatalf("mkdir %s: %v", d, err)
		}
	}
	tmp := final + "q8Zx_1Ab"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		t.Fatalf("temp: %v", err)
	}
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "usr/bin"), 0o755)
	os.WriteFile(filepath.Join(src, "usr/bin/hello"), payload, 0o755)
	if b, err := exec.Command("tar", "-I", "pzstd -8 -p2", "-cS", "-f", tmp, "-C", src, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, b)
	}
	if err := os.Chmod(tmp, 0o664); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(final); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("is_symlink check: %v", err)
	}
	if err := os.Link(tmp, final); err != nil {
		t.Fatalf("link(tmp, final): %v", err)
	}
	unix.UtimesNanoAt(unix.AT_FDCWD, tmp, nil, 0)
	f.Close()
	if err := os.Remove(tmp); err != nil {
		t.Fatal(err)
	}
	testutil.DumpSiginfo(t, final, `{"task": "`+key+`"}`)
	data, err := os.ReadFile(final)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func s3Config(t *testing.T, env testutil.S3Env, bucket string) config.Config {
	t.Setenv("AWS_ACCESS_KEY_ID", env.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", env.SecretKey)
	cfg := testConfig(t, "s3://"+bucket+"/sstate")
	cfg.Stores[0].Endpoint = env.Endpoint
	cfg.Stores[0].PathStyle = true
	cfg.Publish.DrainTimeout = config.Duration{Duration: 20 * time.Second}
	return cfg
}

// storeObjects lists the store's sstate objects with their bytes.
func storeObjects(t *testing.T, cfg config.Config) map[string][]byte {
	t.Helper()
	ctx := context.Background()
	store, err := stores.Open(ctx, cfg.Stores[0])
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	err = store.List(ctx, "", func(oi backend.ObjectInfo) error {
		if backend.IsMeta(oi.Key) {
			return nil
		}
		rc, err := store.Open(ctx, oi.Key, 0, -1)
		if err != nil {
			return err
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		out[oi.Key] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func loadIndex(t *testing.T, cfg config.Config) *index.Index {
	t.Helper()
	ctx := context.Background()
	store, err := stores.Open(ctx, cfg.Stores[0])
	if err != nil {
		t.Fatal(err)
	}
	ix, err := index.Load(ctx, store)
	if err != nil {
		t.Fatal(err)
	}
	return ix
}

// TestPublishThroughMountS3: bitbake's populate sequence through a mount on
// versitygw puts whole objects in the bucket and the index; a second mount
// on a fresh cache directory restores them.
func TestPublishThroughMountS3(t *testing.T) {
	env := testutil.S3Server(t)
	bucket := env.NewBucket(t)
	cfg := s3Config(t, env, bucket)
	m := startTestMount(t, cfg)
	want := map[string][]byte{}
	payloads := map[string][]byte{}
	for i := range 3 {
		k := testKey(i, "populate_sysroot")
		payloads[k] = bytes.Repeat([]byte(fmt.Sprint(i)), 100_000+i)
		want[k] = publishLikeBitbake(t, m.Mountpoint(), k, payloads[k])
		want[k+".siginfo"], _ = os.ReadFile(filepath.Join(m.Mountpoint(), k+".siginfo"))
	}
	// touch of an object it uses (utimensat) becomes an access record
	unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(m.Mountpoint(), testKey(0, "populate_sysroot")), nil, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if left := m.Queue().Drain(ctx); len(left) != 0 {
		t.Fatalf("not uploaded: %+v", left)
	}
	got := storeObjects(t, cfg)
	if len(got) != len(want) {
		t.Fatalf("bucket holds %d objects, want %d (temp files must stay local)", len(got), len(want))
	}
	for k, d := range want {
		if !bytes.Equal(got[k], d) {
			t.Fatalf("%s differs in the bucket", k)
		}
	}
	ix := loadIndex(t, cfg)
	for k, d := range want {
		o, ok := ix.Lookup(k)
		if !ok || o.Size != int64(len(d)) || o.SHA256 != sha256.Sum256(d) {
			t.Fatalf("index entry of %s: %+v %v", k, o, ok)
		}
	}
	// a second mount on a fresh cache restores what the first published
	cfg2 := cfg
	cfg2.Cache.Dir = t.TempDir()
	m2 := startTestMount(t, cfg2)
	for k, p := range payloads {
		if got := restore(t, m2.Mountpoint(), k); !bytes.Equal(got, p) {
			t.Fatalf("second mount restores other bytes for %s", k)
		}
	}
}

// TestPublishWhileStoreDown: publishing succeeds locally while the store is
// stopped; uploads retry and complete once it is back.
func TestPublishWhileStoreDown(t *testing.T) {
	env := testutil.S3Server(t)
	bucket := env.NewBucket(t)
	cfg := s3Config(t, env, bucket)
	m := startTestMount(t, cfg)
	env.Stop()
	k := testKey(7, "package")
	start := time.Now()
	data := publishLikeBitbake(t, m.Mountpoint(), k, []byte("built while the store was down"))
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("publishing with the store down took %v", d)
	}
	// readable through the mount while queued
	if got, err := os.ReadFile(filepath.Join(m.Mountpoint(), k)); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("queued object unreadable: %v", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		ents := m.Queue().Entries()
		if len(ents) > 0 && ents[0].Attempts >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no retries while the store is down: %+v", ents)
		}
		time.Sleep(50 * time.Millisecond)
	}
	st, err := readStatus(cfg.Cache.Dir)
	if err != nil || st.Queue.Failing == 0 || !st.Running {
		t.Fatalf("status while failing: %+v %v", st, err)
	}
	var out bytes.Buffer
	printStatus(&out, st, time.Now())
	if !strings.Contains(out.String(), k) || !strings.Contains(out.String(), "failed attempts") {
		t.Errorf("status output:\n%s", out.String())
	}
	env.Start()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if left := m.Queue().Drain(ctx); len(left) != 0 {
		t.Fatalf("not uploaded after the store returned: %+v", left)
	}
	if got := storeObjects(t, cfg); !bytes.Equal(got[k], data) {
		t.Fatal("object not in the bucket after recovery")
	}
}

// TestKillDuringUploads: kill -9 of a mount while it uploads; the bucket
// never shows a partial object, and after a restart every published object
// is in the bucket exactly once and every index entry points at an object.
func TestKillDuringUploads(t *testing.T) {
	testutil.RequireFUSE(t)
	env := testutil.S3Server(t)
	bucket := env.NewBucket(t)
	cfg := s3Config(t, env, bucket)
	bin := buildBinary(t)
	cacheDir := t.TempDir()
	mp := filepath.Join(t.TempDir(), "mnt")
	// uploads go through a proxy limited to 8 MB/s, so the kill lands while
	// they are under way
	proxy := testutil.StartProxy(t, strings.TrimPrefix(env.Endpoint, "http://"), 0, 8<<20)
	args := []string{"mount", "--store", cfg.Stores[0].URL, "--store-endpoint", "http://" + proxy.Addr, "--store-path-style",
		"--cache-dir", cacheDir, "--publish-concurrency", "2", "--publish-drain-timeout", "30s", "--log-level", "debug", "--config", "/dev/null", mp}
	cmd := startBinary(t, bin, mp, args...)
	want := map[string][]byte{}
	for i := range 6 {
		k := testKey(100+i, "populate_sysroot")
		payload := make([]byte, 6<<20) // random: the archive stays 6 MiB
		rand.Read(payload)
		want[k] = publishLikeBitbake(t, mp, k, payload)
		want[k+".siginfo"], _ = os.ReadFile(filepath.Join(mp, k+".siginfo"))
	}
	// watch the bucket: whatever is visible must be whole
	checkWhole := func() {
		for k, d := range storeObjects(t, cfg) {
			if w, ok := want[k]; !ok || !bytes.Equal(d, w) {
				t.Fatalf("bucket shows %s with %d bytes that are not the published object", k, len(d))
			}
		}
	}
	for range 5 {
		checkWhole()
		time.Sleep(100 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	exec.Command("fusermount3", "-u", mp).Run()
	syscall.Unmount(mp, syscall.MNT_DETACH)
	checkWhole()
	left, _ := readStatus(cacheDir)
	inBucket := len(storeObjects(t, cfg))
	t.Logf("killed with %d objects queued, %d in the bucket", len(left.Entries), inBucket)
	if len(left.Entries) == 0 && inBucket < len(want) {
		t.Fatal("objects were lost: neither queued nor in the bucket")
	}
	// restart on the same cache: the queue resumes and drains at SIGTERM
	cmd2 := startBinary(t, bin, mp, args...)
	cmd2.Process.Signal(syscall.SIGTERM)
	if err := cmd2.Wait(); err != nil {
		t.Fatalf("restarted mount: %v", err)
	}
	got := storeObjects(t, cfg)
	if len(got) != len(want) {
		t.Fatalf("bucket holds %d objects, want %d", len(got), len(want))
	}
	for k, d := range want {
		if !bytes.Equal(got[k], d) {
			t.Fatalf("%s differs", k)
		}
	}
	ix := loadIndex(t, cfg)
	n := 0
	ix.Objects(func(o index.Object) bool {
		n++
		if _, ok := got[o.Key]; !ok {
			t.Errorf("index entry %s points at a missing object", o.Key)
		}
		return true
	})
	if n != len(want) {
		t.Errorf("index lists %d objects, want %d", n, len(want))
	}
	if st, _ := readStatus(cacheDir); len(st.Entries) != 0 {
		t.Errorf("queue not empty after the drain: %+v", st.Entries)
	}
}

// TestFourWritersAndCompaction: four mounts (separate processes, cache
// directories and writer ids) publish overlapping objects into one bucket
// at once while compaction runs; the merged index lists every object once.
func TestFourWritersAndCompaction(t *testing.T) {
	testutil.RequireFUSE(t)
	env := testutil.S3Server(t)
	bucket := env.NewBucket(t)
	cfg := s3Config(t, env, bucket)
	bin := buildBinary(t)
	type writer struct {
		mp  string
		cmd *exec.Cmd
	}
	var writers []writer
	for w := range 4 {
		mp := filepath.Join(t.TempDir(), "mnt")
		cmd := startBinary(t, bin, mp, "mount", "--store", cfg.Stores[0].URL, "--store-endpoint", env.Endpoint,
			"--store-path-style", "--cache-dir", t.TempDir(), "--publish-writer-id", fmt.Sprint("host", w), "--config", "/dev/null", mp)
		writers = append(writers, writer{mp, cmd})
	}
	stop := make(chan struct{})
	compactions := make(chan error, 1)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				compactions <- nil
				return
			default:
			}
			out, err := exec.Command(bin, "index", "compact", "--grace", "0s", "--store", cfg.Stores[0].URL,
				"--store-endpoint", env.Endpoint, "--store-path-style", "--config", "/dev/null").CombinedOutput()
			if err != nil && !strings.Contains(string(out), "compaction") {
				compactions <- fmt.Errorf("compact: %v %s", err, out)
				return
			}
			n++
			time.Sleep(100 * time.Millisecond)
		}
	}()
	// writer w publishes objects w..w+5: neighbours overlap
	var wg sync.WaitGroup
	for w, wr := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < w+6; i++ {
				k := testKey(200+i, "package")
				final := filepath.Join(wr.mp, k)
				if _, err := os.Stat(final); err == nil {
					continue // another writer's object is already visible here
				}
				publishQuiet(wr.mp, k, []byte(fmt.Sprint("object ", i)))
			}
		}()
	}
	wg.Wait()
	for _, wr := range writers {
		wr.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, wr := range writers {
		if err := wr.cmd.Wait(); err != nil {
			t.Errorf("writer exit: %v", err)
		}
	}
	close(stop)
	if err := <-compactions; err != nil {
		t.Fatal(err)
	}
	got := storeObjects(t, cfg)
	ix := loadIndex(t, cfg)
	seen := map[string]int{}
	ix.Objects(func(o index.Object) bool { seen[o.Key]++; return true })
	for i := 0; i < 9; i++ {
		k := testKey(200+i, "package")
		if _, ok := got[k]; !ok {
			t.Errorf("%s missing from the bucket", k)
		}
		if seen[k] != 1 {
			t.Errorf("%s listed %d times in the merged index", k, seen[k])
		}
		if o, _ := ix.Lookup(k); o.SHA256 != sha256.Sum256(got[k]) {
			t.Errorf("%s: index digest does not match the bucket's object", k)
		}
	}
	if len(seen) != len(got) {
		t.Errorf("index lists %d objects, bucket holds %d", len(seen), len(got))
	}
}

// publishQuiet is the link-publish part of bitbake's sequence, for many
// writers at once (no *testing.T from other goroutines).
func publishQuiet(mp, key string, data []byte) error {
	final := filepath.Join(mp, key)
	if err := os.MkdirAll(filepath.Dir(final), 0o775); err != nil {
		return err
	}
	tmp := final + "Tmp12345"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	os.Chmod(tmp, 0o664)
	err := os.Link(tmp, final)
	os.Remove(tmp)
	return err
}

func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "sstatefs")
	if b, err := exec.Command("go", "build", "-race", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v %s", err, b)
	}
	return bin
}

// startBinary runs the binary and waits until mp is mounted.
func startBinary(t *testing.T, bin, mp string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		syscall.Unmount(mp, syscall.MNT_DETACH)
		if t.Failed() {
			t.Logf("%s log:\n%s", bin, stderr.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, _, ok := mountinfo.At(mp); ok {
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("not mounted after 30s:\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRestartSettlesOverlay: after a restart, objects that were published
// and are in the store leave the overlay for the bounded cache.
func TestRestartSettlesOverlay(t *testing.T) {
	env := testutil.S3Server(t)
	bucket := env.NewBucket(t)
	cfg := s3Config(t, env, bucket)
	m, err := mount.Start(context.Background(), cfg, t.TempDir(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	k := testKey(42, "package")
	data := publishLikeBitbake(t, m.Mountpoint(), k, []byte("settle me"))
	if err := m.Close(); err != nil { // drains the queue
		t.Fatal(err)
	}
	overlayFile := filepath.Join(cfg.Cache.Dir, "overlay", k)
	if _, err := os.Stat(overlayFile); err != nil {
		t.Fatalf("published file not in the overlay before the restart: %v", err)
	}
	m2 := startTestMount(t, cfg)
	if _, err := os.Stat(overlayFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("published object still in the overlay after the restart: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(m2.Mountpoint(), k)); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("settled object reads %d bytes, %v", len(got), err)
	}
	if s := m2.Cache().Stats(); s.Misses != 0 {
		t.Errorf("reading a settled object fetched it (%+v)", s)
	}
}

// TestPushAndExportCommands runs `sstatefs push`, `index show` and
// `sstatefs export` against versitygw.
func TestPushAndExportCommands(t *testing.T) {
	env := testutil.S3Server(t)
	bucket := env.NewBucket(t)
	cfg := s3Config(t, env, bucket)
	t.Setenv("SSTATEFS_CONFIG", "")
	local := t.TempDir()
	want := map[string][]byte{}
	for i := range 5 {
		k := testKey(300+i, "populate_sysroot")
		want[k] = bytes.Repeat([]byte{byte(i)}, 1000*(i+1))
		want[k+".siginfo"] = []byte(fmt.Sprint("siginfo ", i))
	}
	for k, d := range want {
		p := filepath.Join(local, k)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, d, 0o644)
	}
	os.WriteFile(filepath.Join(local, "debian-12", "stray.lock"), nil, 0o644)
	storeArgs := []string{"--store", cfg.Stores[0].URL, "--store-endpoint", env.Endpoint, "--store-path-style", "--quiet"}
	if rc := run(append(append([]string{"push"}, storeArgs...), local)); rc != 0 {
		t.Fatalf("push exit %d", rc)
	}
	got := storeObjects(t, cfg)
	if len(got) != len(want) {
		t.Fatalf("bucket holds %d objects after push, want %d", len(got), len(want))
	}
	ix := loadIndex(t, cfg)
	if ix.Len() != len(want) {
		t.Fatalf("index lists %d objects after push, want %d", ix.Len(), len(want))
	}
	// pushing again uploads nothing
	if rc := run(append(append([]string{"push"}, storeArgs...), local)); rc != 0 {
		t.Fatalf("second push exit %d", rc)
	}
	dst := t.TempDir()
	if rc := run(append(append([]string{"export"}, storeArgs...), dst)); rc != 0 {
		t.Fatalf("export exit %d", rc)
	}
	for k, d := range want {
		if b, err := os.ReadFile(filepath.Join(dst, k)); err != nil || !bytes.Equal(b, d) {
			t.Fatalf("exported %s: %v", k, err)
		}
	}
	list := filepath.Join(t.TempDir(), "list")
	os.WriteFile(list, []byte(testKey(301, "populate_sysroot")+"\n"), 0o644)
	dst2 := t.TempDir()
	if rc := run(append(append([]string{"export", "--list", list}, storeArgs...), dst2)); rc != 0 {
		t.Fatalf("export --list exit %d", rc)
	}
	n := 0
	filepath.Walk(dst2, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n++
		}
		return nil
	})
	if n != 2 {
		t.Errorf("export --list wrote %d files, want the object and its siginfo", n)
	}
	// a read-only store refuses push with a clear error
	if rc := run([]string{"push", "--store", "http://127.0.0.1:1/mirror", "--quiet", local}); rc == 0 {
		t.Error("push to an HTTP mirror succeeded")
	}
}
