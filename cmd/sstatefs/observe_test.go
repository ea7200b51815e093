package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/internal/mountinfo"
	"github.com/sstatefs/sstatefs/internal/stores"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := map[string]float64{}
	re := regexp.MustCompile(`^(sstatefs_[a-z_]+(\{[^}]*\})?) ([0-9.e+-]+)$`)
	for _, line := range strings.Split(string(b), "\n") {
		if m := re.FindStringSubmatch(line); m != nil {
			v, _ := strconv.ParseFloat(m[3], 64)
			out[m[1]] = v
		}
	}
	return out
}

func getStatus(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestMetricsHealthStatus scrapes a mount after real traffic and checks the
// counters match what happened; health follows the store; status answers
// over the control socket.
func TestMetricsHealthStatus(t *testing.T) {
	env := testutil.S3Server(t)
	bucket := env.NewBucket(t)
	cfg := s3Config(t, env, bucket)
	cfg.Metrics.Addr = "127.0.0.1:0"
	cfg.Mount.ReadyFile = filepath.Join(t.TempDir(), "run", "ready")
	ctx := context.Background()
	store, err := stores.Open(ctx, cfg.Stores[0])
	if err != nil {
		t.Fatal(err)
	}
	data := []byte(strings.Repeat("sstate object ", 1000))
	if err := store.Create(ctx, keyLic, strings.NewReader(string(data)), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if err := indexBuild(ctx, cfg.Stores[0], 2, false, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	m := startTestMount(t, cfg)
	m.SetHealthEvery(0)
	if _, err := os.Stat(cfg.Mount.ReadyFile); err != nil {
		t.Fatalf("ready file: %v", err)
	}
	base := scrape(t, m.MetricsAddr())

	// traffic: 5 absent names, one object read twice, one publication
	for i := range 5 {
		os.Stat(filepath.Join(m.Mountpoint(), strings.Replace(keyGone, "populate_lic", fmt.Sprint("t", i), 1)))
	}
	for range 2 {
		if b, err := os.ReadFile(filepath.Join(m.Mountpoint(), keyLic)); err != nil || len(b) != len(data) {
			t.Fatal(err)
		}
	}
	publishLikeBitbake(t, m.Mountpoint(), testKey(600, "package"), []byte("x"))
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	m.Queue().Drain(dctx)

	after := scrape(t, m.MetricsAddr())
	delta := func(name string) float64 { return after[name] - base[name] }
	for name, want := range map[string]float64{
		`sstatefs_cache_misses_total`:                        1,
		`sstatefs_fetched_bytes_total`:                       float64(len(data)),
		`sstatefs_uploads_total`:                             2, // the package and its siginfo
		`sstatefs_upload_failures_total`:                     0,
		`sstatefs_cache_evictions_total`:                     0,
		`sstatefs_cache_corrupt_total`:                       0,
		`sstatefs_fetch_duration_seconds_count{result="ok"}`: 1,
	} {
		if got := delta(name); got != want {
			t.Errorf("%s went up by %v, want %v", name, got, want)
		}
	}
	if got := delta(`sstatefs_lookups_total{result="miss"}`); got < 5 {
		t.Errorf("miss lookups went up by %v, want at least 5", got)
	}
	if got := after[`sstatefs_lookups_total{result="probe"}`]; got != 0 {
		t.Errorf("%v store probes with a fresh index", got)
	}
	if after["sstatefs_upload_queue_depth"] != 0 || after["sstatefs_ready"] != 1 || after["sstatefs_index_objects"] < 1 {
		t.Errorf("gauges: queue %v ready %v index %v", after["sstatefs_upload_queue_depth"], after["sstatefs_ready"], after["sstatefs_index_objects"])
	}
	if after["sstatefs_cache_bytes"] != float64(len(data)) {
		t.Errorf("cache bytes %v, want %d", after["sstatefs_cache_bytes"], len(data))
	}

	if code, _ := getStatus(t, "http://"+m.MetricsAddr()+"/readyz"); code != 200 {
		t.Errorf("/readyz = %d", code)
	}
	code, body := getStatus(t, "http://"+m.MetricsAddr()+"/healthz")
	if code != 200 || !strings.Contains(body, `"store_reachable":true`) {
		t.Errorf("/healthz = %d %s", code, body)
	}
	env.Stop()
	code, body = getStatus(t, "http://"+m.MetricsAddr()+"/healthz")
	if code != 503 || !strings.Contains(body, `"store_reachable":false`) {
		t.Errorf("/healthz with the store down = %d %s", code, body)
	}
	env.Start()

	// status over the control socket, found from the mountpoint
	if _, source, ok := mountinfo.At(m.Mountpoint()); !ok || source != cfg.Cache.Dir {
		t.Fatalf("mount table source %q, want the cache dir %q", source, cfg.Cache.Dir)
	}
	st, err := askStatus(cfg.Cache.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mountpoint != m.Mountpoint() || !st.Ready || st.Index.Objects < 1 || st.Cache.Misses != 1 || st.Uploads.Uploaded != 2 {
		b, _ := json.MarshalIndent(st, "", " ")
		t.Errorf("status: %s", b)
	}
	var out strings.Builder
	printLiveStatus(&out, st, time.Now())
	for _, want := range []string{"mount:", "index:", "uploads:", "2 uploaded"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status output lacks %q:\n%s", want, out.String())
		}
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cfg.Mount.ReadyFile); !os.IsNotExist(err) {
		t.Error("ready file left after shutdown")
	}
}
