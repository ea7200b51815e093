package main

import (
	"log/slog"
	"os"

	"github.com/sstatefs/sstatefs/internal/config"
	"github.com/sstatefs/sstatefs/internal/mount"
)

func cmdMount(args []string) int {
	c := newCommand("mount", "Usage: sstatefs mount [flags] MOUNTPOINT\n\nMounts the store as an SSTATE_DIR and serves it in the foreground until SIGINT or SIGTERM.")
	if !c.parse(args, 1, 1, nil) {
		return 2
	}
	log := c.logger()
	ctx, stop := c.signalContext()
	defer stop()
	m, err := mount.Start(ctx, c.cfg, c.arg(0), log)
	if err != nil {
		return c.fail(err)
	}
	select {
	case <-ctx.Done():
		log.Info("signal received, unmounting", "mountpoint", m.Mountpoint())
	case <-m.Done():
		log.Info("unmounted from outside", "mountpoint", m.Mountpoint())
	}
	if err := m.Close(); err != nil {
		log.Error("unmount", "error", err)
		return 1
	}
	return 0
}

// newLogger logs to stderr as text or JSON; it remembers the last warnings
// and errors for `sstatefs status`.
func newLogger(lc config.LogConfig) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(lc.Level))
	opts := &slog.HandlerOptions{Level: l}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if lc.Format == "json" {
		h = slog.NewJSONHandler(os.Stderr, opts)
	}
	return slog.New(mount.RememberErrors(h))
}
