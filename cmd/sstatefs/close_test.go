package main

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/internal/mount"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

// TestCloseStopsBackgroundWork: when Close returns, none of the mount's
// background goroutines (index refresh and compaction, the upload queue,
// the journal, prefetch, the control and metrics listeners) is running any
// more, so nothing writes into the cache directory a test (or a restart)
// removes next.
func TestCloseStopsBackgroundWork(t *testing.T) {
	testutil.RequireFUSE(t)
	cfg := testConfig(t, "file://"+t.TempDir())
	cfg.Metrics.Addr = "127.0.0.1:0"
	cfg.Index.CompactInterval.Duration = time.Hour
	m, err := mount.Start(context.Background(), cfg, t.TempDir(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	running := func() []string {
		buf := make([]byte, 1<<22)
		stacks := string(buf[:runtime.Stack(buf, true)])
		var found []string
		for _, fn := range []string{"index.(*Live).Run", "publish.(*Queue).Run", "index.(*Journal).Run",
			"view.(*View).RunPrefetch", "index.CompactEvery", "mount.serveHTTP"} {
			if strings.Contains(stacks, fn) {
				found = append(found, fn)
			}
		}
		return found
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			m.Close()
		}
	})
	// the goroutines have started once their functions show in the stacks
	for deadline := time.Now().Add(10 * time.Second); len(running()) != 6; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("background work of a running mount: %v, want all 6 pieces (the test looks for the wrong frames)", running())
		}
	}
	closed = true
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if got := running(); len(got) != 0 {
		buf := make([]byte, 1<<22)
		t.Fatalf("still running after Close: %v\n%s", got, buf[:runtime.Stack(buf, true)])
	}
}
