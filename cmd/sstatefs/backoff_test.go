package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/cache"
	"github.com/sstatefs/sstatefs/internal/mount"
	"github.com/sstatefs/sstatefs/internal/stores"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

// TestCorruptObjectBackedOffThroughMount reads an object whose bytes in the
// store (real versitygw) no longer match the index, with sha256sum through
// a real mount, again and again: it is downloaded once, every read fails
// with EIO, and status and metrics show the object held back with why.
// (The reads all fall within the first back-off of 30 s: they take
// milliseconds.)
func TestCorruptObjectBackedOffThroughMount(t *testing.T) {
	if _, err := exec.LookPath("sha256sum"); err != nil {
		t.Skip("sha256sum not installed")
	}
	env := testutil.S3Server(t)
	bucket := env.NewBucket(t)
	cfg := s3Config(t, env, bucket)
	cfg.Metrics.Addr = "127.0.0.1:0"
	ctx := context.Background()
	store, err := stores.Open(ctx, cfg.Stores[0])
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 3<<20)
	rand.Read(data)
	if err := store.Create(ctx, keyLic, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if err := indexBuild(ctx, cfg.Stores[0], 2, false, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(data)
	bad[len(bad)/2] ^= 1
	if err := store.Put(ctx, keyLic, bytes.NewReader(bad), int64(len(bad))); err != nil {
		t.Fatal(err)
	}
	m := startTestMount(t, cfg)
	base := scrape(t, m.MetricsAddr())
	p := filepath.Join(m.Mountpoint(), keyLic)
	for i := range 5 {
		out, err := exec.Command("sha256sum", p).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "Input/output error") {
			t.Fatalf("sha256sum %d of a corrupt object: %v %s", i, err, out)
		}
	}
	after := scrape(t, m.MetricsAddr())
	delta := func(name string) float64 { return after[name] - base[name] }
	if got := delta(`sstatefs_cache_misses_total`); got != 1 {
		t.Errorf("5 sha256sum of a corrupt object started %v downloads, want 1", got)
	}
	if got := delta(`sstatefs_fetch_duration_seconds_count{result="error"}`); got != 1 {
		t.Errorf("%v failed downloads, want 1", got)
	}
	if delta(`sstatefs_cache_backoff_refused_total`) < 4 || after[`sstatefs_cache_backed_off_objects`] != 1 {
		t.Errorf("back-off metrics: refused +%v, backed off %v", delta(`sstatefs_cache_backoff_refused_total`), after[`sstatefs_cache_backed_off_objects`])
	}
	st, err := askStatus(cfg.Cache.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if b := st.Cache.BackedOff; len(b) != 1 || b[0].Name != keyLic || !b[0].Corrupt || !strings.Contains(b[0].Reason, "sha256") || !b[0].Until.After(time.Now()) {
		j, _ := json.MarshalIndent(st.Cache, "", " ")
		t.Fatalf("status lists backed off objects: %s", j)
	}
	if st.Cache.DiskSize <= 0 || st.Cache.DiskFree <= 0 {
		t.Errorf("status does not tell the cache's disk: %+v", st.Cache)
	}
	var out strings.Builder
	printLiveStatus(&out, st, time.Now())
	if !strings.Contains(out.String(), "held back: 1 objects") || !strings.Contains(out.String(), keyLic) {
		t.Errorf("status output does not show the object held back:\n%s", out.String())
	}
	if _, err := os.Stat(p); err != nil {
		t.Errorf("the object is still listed, only its reads fail: %v", err)
	}
}

// The status output shows the objects held back and a cache size larger
// than the cache's disk.
func TestPrintLiveStatusCache(t *testing.T) {
	now := time.Date(2026, 12, 2, 15, 0, 0, 0, time.UTC)
	st := mount.LiveStatus{Cache: mount.CacheStatus{
		Limit: 20 << 30, DiskSize: 24 << 20, DiskFree: 3 << 20, Refused: 7,
		BackedOff: []cache.Backoff{{Name: keyLic, Reason: "sha256 mismatch", Corrupt: true, Failures: 2, Until: now.Add(time.Minute)}},
	}}
	var out strings.Builder
	printLiveStatus(&out, st, now)
	for _, want := range []string{
		"held back: 1 objects whose last download failed, not retried until their back-off ends; 7 opens refused meanwhile",
		keyLic + "\n           2 failed, next attempt in 1m0s (2026-12-02T15:01:00Z): sha256 mismatch",
		"file system of 24.0 MiB, 3.0 MiB free (smaller than the cache size: the free space bounds the cache)",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status output lacks %q:\n%s", want, out.String())
		}
	}
}

// fakeCacheClock gives the mounts the test starts a clock it moves.
func fakeCacheClock(t *testing.T) *testutil.Clock {
	c := testutil.NewClock(time.Now())
	mount.CacheClock = c.Now
	t.Cleanup(func() { mount.CacheClock = time.Now })
	return c
}
