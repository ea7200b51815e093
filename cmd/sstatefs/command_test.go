package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

// TestCommandFlags: a subcommand offers only the flags of the settings it
// uses; flags may follow positional arguments; the single-dash long flags
// of before still work; run's COMMAND keeps its own flags.
func TestCommandFlags(t *testing.T) {
	t.Setenv("SSTATEFS_CONFIG", "/dev/null")
	var help bytes.Buffer
	c := newCommand("index show", "Usage: sstatefs index show [flags]", "store")
	c.flags.SetOutput(&help)
	if c.parse([]string{"-h"}, 0, -1, nil) {
		t.Fatal("-h parsed as a run")
	}
	if !strings.Contains(help.String(), "--store-timeout duration") || strings.Contains(help.String(), "--prefetch-mode") || strings.Contains(help.String(), "--cache-size") {
		t.Errorf("index show -h:\n%s", help.String())
	}

	c = newCommand("push", "Usage: sstatefs push [flags] DIR", "store", "log", "publish.writer_id")
	jobs := c.flags.Int("jobs", 8, "")
	quiet := c.flags.Bool("quiet", false, "")
	if !c.parse([]string{"-store", "file:///tmp/x", "-quiet", "DIR", "--jobs", "3", "-log-level=debug", "--publish-writer-id", "-w-"}, 1, 1, nil) {
		t.Fatal("parse failed")
	}
	if c.arg(0) != "DIR" || *jobs != 3 || !*quiet || c.cfg.Stores[0].URL != "file:///tmp/x" || c.cfg.Log.Level != "debug" || c.cfg.Publish.WriterID != "-w-" {
		t.Errorf("args %v jobs %d quiet %v cfg %+v", c.flags.Args(), *jobs, *quiet, c.cfg)
	}

	c = newCommand("run", "Usage: sstatefs run")
	c.flagsEndAtFirstArg()
	if !c.parse([]string{"-store", "file:///tmp/x", "bitbake", "-k", "--store", "core-image"}, 1, -1, nil) {
		t.Fatal("parse failed")
	}
	if want := []string{"bitbake", "-k", "--store", "core-image"}; !slices.Equal(c.flags.Args(), want) || c.cfg.Stores[0].URL != "file:///tmp/x" {
		t.Errorf("run args %q, want %q; store %q", c.flags.Args(), want, c.cfg.Stores[0].URL)
	}
}
