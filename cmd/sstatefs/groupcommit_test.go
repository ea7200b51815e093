package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/index/indextest"

	"golang.org/x/sys/unix"

	"github.com/sstatefs/sstatefs/internal/config"
	"github.com/sstatefs/sstatefs/internal/mount"
	"github.com/sstatefs/sstatefs/internal/stores"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

// journalOf reads the store's journal: how many segments, and per object
// key how many records (over all segments).
func journalOf(t *testing.T, cfg config.Config) (segments int, records map[string]int) {
	t.Helper()
	store, err := stores.Open(context.Background(), cfg.Stores[0])
	if err != nil {
		t.Fatal(err)
	}
	records = map[string]int{}
	segs := indextest.Journal(t, store)
	for _, seg := range segs {
		for _, o := range seg.Added {
			records[o.Key]++
		}
	}
	return len(segs), records
}

// checkRecordedOnce fails unless every key of want has exactly one record
// in the journal and an entry in the merged index.
func checkRecordedOnce(t *testing.T, cfg config.Config, records map[string]int, want map[string][]byte) {
	t.Helper()
	ix := loadIndex(t, cfg)
	for k, d := range want {
		if records[k] != 1 {
			t.Errorf("%s: %d journal records, want 1", k, records[k])
		}
		if o, ok := ix.Lookup(k); !ok || o.Size != int64(len(d)) {
			t.Errorf("%s: index entry %+v, %v", k, o, ok)
		}
	}
	if ix.Len() != len(want) {
		t.Errorf("index lists %d objects, want %d", ix.Len(), len(want))
	}
}

// TestMountGroupCommit: 100 packages and their siginfo (200 files)
// published through a mount on versitygw, each touched as bitbake does,
// leave a handful of journal segments after Close, not one per file. The
// window is longer than the test: what writes the segments is the count
// bound, the drain and Close, so the count is deterministic.
func TestMountGroupCommit(t *testing.T) {
	testutil.RequireFUSE(t)
	env := testutil.S3Server(t)
	cfg := s3Config(t, env, env.NewBucket(t))
	cfg.Publish.RecordInterval = config.Duration{Duration: time.Hour}
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
	want := map[string][]byte{}
	for i := range 100 {
		k := testKey(1000+i, "populate_sysroot")
		want[k] = publishLikeBitbake(t, m.Mountpoint(), k, []byte(fmt.Sprint("payload ", i)))
		want[k+".siginfo"], _ = os.ReadFile(filepath.Join(m.Mountpoint(), k+".siginfo"))
		for range 3 { // many accesses of one object: one record
			unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(m.Mountpoint(), k), nil, 0)
		}
	}
	closed = true
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if got := storeObjects(t, cfg); len(got) != len(want) {
		t.Fatalf("bucket holds %d objects, want %d", len(got), len(want))
	}
	segs, records := journalOf(t, cfg)
	t.Logf("%d files published through the mount: %d journal segments", len(want), segs)
	if segs > 3 {
		t.Errorf("%d journal segments for %d published files, want at most 3", segs, len(want))
	}
	checkRecordedOnce(t, cfg, records, want)
}

// TestPushGroupCommit: push of 1,000 objects to versitygw writes its
// records in one or two segments, not one per object (or per round of
// uploads).
func TestPushGroupCommit(t *testing.T) {
	env := testutil.S3Server(t)
	cfg := s3Config(t, env, env.NewBucket(t))
	t.Setenv("SSTATEFS_CONFIG", "")
	local := t.TempDir()
	want := map[string][]byte{}
	for i := range 1000 {
		k := testKey(2000+i, "populate_sysroot")
		want[k] = []byte(fmt.Sprint("object ", i))
		p := filepath.Join(local, k)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, want[k], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if rc := run([]string{"push", "--store", cfg.Stores[0].URL, "--store-endpoint", env.Endpoint, "--store-path-style", "--quiet", local}); rc != 0 {
		t.Fatalf("push exit %d", rc)
	}
	segs, records := journalOf(t, cfg)
	t.Logf("push of %d objects: %d journal segments", len(want), segs)
	if segs > 2 {
		t.Errorf("%d journal segments for a push of %d objects, want at most 2", segs, len(want))
	}
	checkRecordedOnce(t, cfg, records, want)
}

// TestKillBeforeBatchWritten: a mount (a real process) is killed with
// SIGKILL once its uploads are in the bucket and before the batch of their
// records is written (the window is an hour). The queue entries survive in
// state uploaded; the restarted mount records each object exactly once
// without uploading it again.
func TestKillBeforeBatchWritten(t *testing.T) {
	testutil.RequireFUSE(t)
	env := testutil.S3Server(t)
	cfg := s3Config(t, env, env.NewBucket(t))
	bin := buildBinary(t)
	cacheDir := t.TempDir()
	mp := filepath.Join(t.TempDir(), "mnt")
	args := []string{"mount", "--store", cfg.Stores[0].URL, "--store-endpoint", env.Endpoint, "--store-path-style",
		"--cache-dir", cacheDir, "--publish-record-interval", "1h", "--publish-drain-timeout", "30s", "--log-level", "debug", "--config", "/dev/null", mp}
	cmd := startBinary(t, bin, mp, args...)
	want := map[string][]byte{}
	for i := range 4 {
		k := testKey(3000+i, "populate_sysroot")
		want[k] = publishLikeBitbake(t, mp, k, []byte(fmt.Sprint("payload ", i)))
		want[k+".siginfo"], _ = os.ReadFile(filepath.Join(mp, k+".siginfo"))
	}
	// wait until every object is in the bucket and its entry says so
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, _ := readStatus(cacheDir)
		uploaded := 0
		for _, e := range st.Entries {
			if e.State == "uploaded" {
				uploaded++
			}
		}
		if uploaded == len(want) && len(storeObjects(t, cfg)) == len(want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d entries uploaded, %d objects in the bucket", uploaded, len(want), len(storeObjects(t, cfg)))
		}
		time.Sleep(20 * time.Millisecond) // polling the queue on disk and the bucket
	}
	if segs, _ := journalOf(t, cfg); segs != 0 {
		t.Fatalf("%d journal segments before the kill: the batch did not wait", segs)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	exec.Command("fusermount3", "-u", mp).Run()
	syscall.Unmount(mp, syscall.MNT_DETACH)
	st, _ := readStatus(cacheDir)
	if len(st.Entries) != len(want) {
		t.Fatalf("%d queue entries survived the kill, want %d", len(st.Entries), len(want))
	}
	before := storeObjects(t, cfg)
	// restart on the same cache: the entries are recorded, at SIGTERM at
	// the latest (the drain flushes the batch)
	cmd2 := startBinary(t, bin, mp, args...)
	cmd2.Process.Signal(syscall.SIGTERM)
	if err := cmd2.Wait(); err != nil {
		t.Fatalf("restarted mount: %v", err)
	}
	after := storeObjects(t, cfg)
	for k, d := range want {
		if !bytes.Equal(after[k], d) || !bytes.Equal(before[k], d) {
			t.Fatalf("%s differs in the bucket", k)
		}
	}
	segs, records := journalOf(t, cfg)
	t.Logf("after the restart: %d journal segments", segs)
	checkRecordedOnce(t, cfg, records, want)
	if st, _ := readStatus(cacheDir); len(st.Entries) != 0 {
		t.Errorf("queue not empty after the drain: %+v", st.Entries)
	}
}
