package main

import (
	"time"

	"github.com/sstatefs/sstatefs/internal/netem"
)

// Proxy is the latency-injecting TCP proxy every system is measured through.
type Proxy = netem.Proxy

// StartProxy proxies to target with a round-trip time of rtt.
func StartProxy(target string, rtt time.Duration) (*Proxy, error) {
	return netem.Start(target, rtt, 0)
}
