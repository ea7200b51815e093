package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/index/indextest"

	"github.com/sstatefs/sstatefs/internal/config"
	"github.com/sstatefs/sstatefs/internal/mount"
	"github.com/sstatefs/sstatefs/internal/stores"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

// reportLine is bitbake's report of task i: a new output, the taskhash
// proposed as unihash.
func reportLine(i int) (line, taskhash string) {
	taskhash = hexOf(fmt.Sprint("report task ", i))
	return fmt.Sprintf(`{"report": {"taskhash": %q, "method": %q, "outhash": %q, "unihash": %q, "PN": "r-native", "PV": "1", "PR": "r0", "task": "populate_sysroot"}}`,
		taskhash, eqMethod, hexOf(fmt.Sprint("report output ", i)), taskhash), taskhash
}

// reportsOf reads the store's journal: how many segments, and per
// taskhash how many equivalence records (over all segments).
func reportsOf(t *testing.T, cfg config.Config) (segments int, records map[string]int) {
	t.Helper()
	store, err := stores.Open(context.Background(), cfg.Stores[0])
	if err != nil {
		t.Fatal(err)
	}
	records = map[string]int{}
	segs := indextest.Journal(t, store)
	for _, seg := range segs {
		for _, e := range seg.Reported {
			records[e.Taskhash]++
		}
	}
	return len(segs), records
}

// checkReportedOnce fails unless each taskhash has exactly one record in
// the journal, and the merged index gives it its own unihash.
func checkReportedOnce(t *testing.T, cfg config.Config, records map[string]int, taskhashes []string) {
	t.Helper()
	ix := loadIndex(t, cfg)
	for _, th := range taskhashes {
		if records[th] != 1 {
			t.Errorf("%s: %d journal records, want 1", th, records[th])
		}
		if e, ok := ix.Equivalence(eqMethod, th); !ok || e.Unihash != th {
			t.Errorf("%s: index has %+v, %v", th, e, ok)
		}
	}
	if n := ix.NumEquivalences(); n != len(taskhashes) {
		t.Errorf("index holds %d equivalences, want %d", n, len(taskhashes))
	}
}

// reportsFileSize is the size of the mount's reports file, -1 if absent.
func reportsFileSize(t *testing.T, cacheDir string) int64 {
	t.Helper()
	fi, err := os.Stat(filepath.Join(cacheDir, "state", mount.ReportsFile))
	if os.IsNotExist(err) {
		return -1
	}
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestMountReportsShareSegments: 60 hash equivalence reports through a
// real mount's socket on versitygw, among 10 published objects, write no
// segment of their own: the window is longer than the test, nothing is in
// the journal before Close, and after it the reports and the objects'
// records share one or two segments. Each report is answered by get at
// once, on the same connection and on another (bitbake's own client too,
// when SSTATEFS_BITBAKE_DIR names a tree).
func TestMountReportsShareSegments(t *testing.T) {
	testutil.RequireFUSE(t)
	env := testutil.S3Server(t)
	cfg := s3Config(t, env, env.NewBucket(t))
	cfg.Publish.RecordInterval = config.Duration{Duration: time.Hour}
	sock := filepath.Join(t.TempDir(), "hs.sock")
	cfg.Hashserv.Listen = "unix://" + sock
	m, err := mount.Start(context.Background(), cfg, t.TempDir(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			m.Close()
		}
	})
	objects := map[string][]byte{}
	for i := range 10 {
		k := testKey(5000+i, "populate_sysroot")
		objects[k] = publishLikeBitbake(t, m.Mountpoint(), k, []byte(fmt.Sprint("payload ", i)))
		objects[k+".siginfo"], _ = os.ReadFile(filepath.Join(m.Mountpoint(), k+".siginfo"))
	}
	c, other := dialHashserv(t, sock), dialHashserv(t, sock)
	get := func(c *hsClient, th string) string {
		return c.call(t, fmt.Sprintf(`{"get": {"taskhash": %q, "method": %q, "all": false}}`, th, eqMethod))
	}
	var taskhashes []string
	for i := range 60 {
		line, th := reportLine(i)
		taskhashes = append(taskhashes, th)
		if got := c.call(t, line); !strings.Contains(got, `"unihash": "`+th+`"`) {
			t.Fatalf("report %d: %s", i, got)
		}
		if got := get(c, th); !strings.Contains(got, `"unihash": "`+th+`"`) {
			t.Fatalf("get on the reporting connection right after report %d: %s", i, got)
		}
		if got := get(other, th); !strings.Contains(got, `"unihash": "`+th+`"`) {
			t.Fatalf("get on another connection right after report %d: %s", i, got)
		}
	}
	if got := bitbakeGet(t, sock, taskhashes[:5]...); got != nil {
		for _, th := range taskhashes[:5] {
			if got[th] != th {
				t.Errorf("bitbake's client: get_unihash(%s) = %q, want %s", th, got[th], th)
			}
		}
	}
	if segs, _ := reportsOf(t, cfg); segs != 0 {
		t.Errorf("%d journal segments before Close: the reports did not wait for the batch", segs)
	}
	if n := reportsFileSize(t, cfg.Cache.Dir); n <= 0 {
		t.Errorf("reports file holds %d bytes while 60 reports wait for their batch", n)
	}
	c.conn.Close()
	other.conn.Close()
	closed = true
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	segs, records := reportsOf(t, cfg)
	t.Logf("%d reports and %d published files: %d journal segments", len(taskhashes), len(objects), segs)
	if segs > 2 {
		t.Errorf("%d journal segments for %d reports and %d files, want at most 2", segs, len(taskhashes), len(objects))
	}
	checkReportedOnce(t, cfg, records, taskhashes)
	if n := reportsFileSize(t, cfg.Cache.Dir); n != 0 {
		t.Errorf("reports file holds %d bytes after Close, want 0", n)
	}
}

// TestKillAfterReportAnswered: a mount (a real process) is killed with
// SIGKILL after its hash equivalence server answered reports and before
// the batch holding them is written (the window is an hour). The
// restarted mount records each report from its reports file, exactly
// once, and empties the file.
func TestKillAfterReportAnswered(t *testing.T) {
	testutil.RequireFUSE(t)
	env := testutil.S3Server(t)
	cfg := s3Config(t, env, env.NewBucket(t))
	bin := buildBinary(t)
	cacheDir := t.TempDir()
	mp := filepath.Join(t.TempDir(), "mnt")
	sock := filepath.Join(t.TempDir(), "hs.sock")
	ready := filepath.Join(t.TempDir(), "ready")
	args := []string{"mount", "--store", cfg.Stores[0].URL, "--store-endpoint", env.Endpoint, "--store-path-style",
		"--cache-dir", cacheDir, "--hashserv", "unix://" + sock, "--publish-record-interval", "1h", "--publish-drain-timeout", "30s",
		"--ready-file", ready, "--log-level", "debug", "--config", "/dev/null", mp}
	cmd := startBinary(t, bin, mp, args...)
	waitReady(t, ready) // the socket listens once the mount is up
	c := dialHashserv(t, sock)
	var taskhashes []string
	for i := range 5 {
		line, th := reportLine(100 + i)
		taskhashes = append(taskhashes, th)
		if got := c.call(t, line); !strings.Contains(got, `"unihash": "`+th+`"`) {
			t.Fatalf("report %d: %s", i, got)
		}
	}
	if segs, _ := reportsOf(t, cfg); segs != 0 {
		t.Fatalf("%d journal segments before the kill: the batch did not wait", segs)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	exec.Command("fusermount3", "-u", mp).Run()
	syscall.Unmount(mp, syscall.MNT_DETACH)
	if n := reportsFileSize(t, cacheDir); n <= 0 {
		t.Fatalf("reports file holds %d bytes after the kill", n)
	}
	// restart on the same cache: the reports are recorded, at SIGTERM at
	// the latest (Close flushes the batch)
	cmd2 := startBinary(t, bin, mp, args...)
	cmd2.Process.Signal(syscall.SIGTERM)
	if err := cmd2.Wait(); err != nil {
		t.Fatalf("restarted mount: %v", err)
	}
	segs, records := reportsOf(t, cfg)
	t.Logf("after the restart: %d journal segments", segs)
	checkReportedOnce(t, cfg, records, taskhashes)
	if n := reportsFileSize(t, cacheDir); n != 0 {
		t.Errorf("reports file holds %d bytes after the restarted mount closed, want 0", n)
	}
}

// waitReady waits until the mount wrote its ready file (the end of its
// start: the hash equivalence socket listens).
func waitReady(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ready file %s after 30s", path)
		}
		time.Sleep(20 * time.Millisecond) // polling the file the process writes
	}
}
