package testutil

import (
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/internal/netem"
)

// StartProxy proxies to target ("127.0.0.1:port") until the test ends,
// delaying each direction by delay and limiting it to rate bytes per second
// (0: no limit).
func StartProxy(t testing.TB, target string, delay time.Duration, rate int64) *netem.Proxy {
	t.Helper()
	p, err := netem.Start(target, 2*delay, rate)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}
