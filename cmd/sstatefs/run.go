package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/sstatefs/sstatefs/internal/mount"
)

func cmdRun(args []string) int {
	c := newCommand("run", `Usage: sstatefs run [mount flags] [--mountpoint DIR] -- COMMAND [ARG...]

Mounts the store, waits until the mount is ready, runs COMMAND with SSTATE_DIR set to the
mountpoint, then uploads what the command published (up to the drain timeout), unmounts and
exits with the command's exit status. SIGINT/SIGTERM are passed on to the command; the wrapper
still drains and unmounts after it exits. For CI job scripts and container entrypoints.`)
	mountpoint := c.flags.String("mountpoint", "", "where to mount (default $SSTATE_DIR if set, else a new directory under $TMPDIR)")
	// the flags after COMMAND are the command's
	c.flagsEndAtFirstArg()
	if !c.parse(args, 1, -1, nil) {
		return 2
	}
	argv := c.flags.Args()
	if argv[0] == "--" {
		argv = argv[1:]
	}
	if len(argv) == 0 {
		c.flags.Usage()
		return 2
	}
	log := c.logger()
	var err error

	mp := *mountpoint
	if mp == "" {
		mp = os.Getenv("SSTATE_DIR")
	}
	if mp == "" {
		if mp, err = os.MkdirTemp("", "sstatefs-run-"); err != nil {
			return c.fail(err)
		}
		defer os.Remove(mp)
	}
	// Signals go to the command once it runs; before that they abort.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	m, err := mount.Start(context.Background(), c.cfg, mp, log)
	if err != nil {
		return c.fail(err)
	}
	rc := runCommand(argv, m.Mountpoint(), sigs, log)
	if err := m.Close(); err != nil {
		log.Error("unmount", "error", err)
		if rc == 0 {
			rc = 1
		}
	}
	return rc
}

// runCommand runs argv with SSTATE_DIR set, passing signals on, and
// returns its exit status (128+signal when a signal ended it).
func runCommand(argv []string, sstateDir string, sigs <-chan os.Signal, log interface {
	Info(string, ...any)
}) int {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "SSTATE_DIR="+sstateDir)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "sstatefs run: %v\n", err)
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return 127
		}
		return 126
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case sig := <-sigs:
			log.Info("passing signal to the command", "signal", sig.String())
			cmd.Process.Signal(sig)
		case err := <-done:
			return exitStatus(err)
		}
	}
}

func exitStatus(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return 1
}
