package mount

import (
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/sstatefs/sstatefs/internal/testutil"
)

// TestWarnExposedMetrics: a metrics endpoint that is not on a loopback
// address is warned about (the "non-loopback warning" part of
// cmd/sstatefs's TestMetricsListenerNoActions before the mount moved here).
func TestWarnExposedMetrics(t *testing.T) {
	// judged on the address the listener got, without opening one to
	// the network in a test
	for _, tc := range []struct {
		addr string
		ip   net.IP
		warn bool
	}{
		{"0.0.0.0:9477", net.IPv4zero, true},
		{":9477", net.IPv6unspecified, true},
		{"10.1.2.3:9477", net.IPv4(10, 1, 2, 3), true},
		{"127.0.0.1:9477", net.IPv4(127, 0, 0, 1), false},
		{"[::1]:9477", net.IPv6loopback, false},
	} {
		var log testutil.SyncBuffer
		warnExposedMetrics(slog.New(slog.NewTextHandler(&log, nil)), tc.addr, &net.TCPAddr{IP: tc.ip, Port: 9477})
		got := log.String()
		if !tc.warn {
			if got != "" {
				t.Errorf("%s: warned about a loopback listener: %s", tc.addr, got)
			}
			continue
		}
		for _, want := range []string{"level=WARN", "not on a loopback address", "addr=" + tc.addr, "/status"} {
			if !strings.Contains(got, want) {
				t.Errorf("%s: no %q in the warning:\n%s", tc.addr, want, got)
			}
		}
	}
}
