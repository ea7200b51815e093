package config

import (
	"bytes"
	"flag"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

var update = flag.Bool("update", false, "rewrite README.md's configuration table from the table")

const readme = "../../README.md"

// TestREADMETable: the README's configuration table is the table's
// (go test ./internal/config -run README -update rewrites it).
func TestREADMETable(t *testing.T) {
	data, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	const head = "| key | flag |"
	start := bytes.Index(data, []byte(head))
	if start < 0 {
		t.Fatalf("%s has no configuration table (a line starting %q)", readme, head)
	}
	end := start + bytes.Index(data[start:], []byte("\n\n")) + 1
	want := Markdown()
	if got := string(data[start:end]); got != want {
		if *update {
			out := append(append(append([]byte{}, data[:start]...), want...), data[end:]...)
			if err := os.WriteFile(readme, out, 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Errorf("%s's configuration table disagrees with the table (rerun with -update):\ngot:\n%s\nwant:\n%s", readme, got, want)
	}
}

// TestDefaultsFromTable: the defaults are the values the configuration has
// always had, and each setting's default parses and validates.
func TestDefaultsFromTable(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", "/data")
	t.Setenv("XDG_CACHE_HOME", "/cache")
	c := Defaults()
	for _, tc := range []struct {
		name      string
		got, want any
	}{
		{"store", c.Stores, []StoreConfig{{URL: "file:///data/sstatefs/store"}}},
		{"cache.dir", c.Cache.Dir, "/cache/sstatefs"},
		{"cache.size", c.Cache.Size.Bytes, int64(20 << 30)},
		{"mount.read_ahead", c.Mount.ReadAhead.Bytes, int64(512 << 10)},
		{"index.refresh_interval", c.Index.RefreshInterval.Duration, time.Minute},
		{"index.max_age", c.Index.MaxAge.Duration, time.Duration(0)},
		{"index.negative_ttl", c.Index.NegativeTTL.Duration, time.Minute},
		{"index.compact_interval", c.Index.CompactInterval.Duration, time.Hour},
		{"publish.concurrency", c.Publish.Concurrency, 8},
		{"publish.drain_timeout", c.Publish.DrainTimeout.Duration, 30 * time.Second},
		{"publish.writer_id", c.Publish.WriterID, defaultWriterID()},
		{"prefetch", c.Prefetch, PrefetchConfig{Mode: "touch", Concurrency: 4}},
		{"log", c.Log, LogConfig{Level: "info", Format: "text"}},
	} {
		if !equal(tc.got, tc.want) {
			t.Errorf("default %s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	if err := c.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
	var s StoreConfig
	StoreDefaults(&s)
	if s.Timeout.Duration != 10*time.Second || s.MaxConnections != 64 || s.URL != "" {
		t.Errorf("store defaults = %+v", s)
	}
	for _, st := range Settings() {
		if d := st.defaultValue(); d != "" {
			if err := st.set(&Config{}, d); err != nil {
				t.Errorf("%s: default %q: %v", st.Key, d, err)
			}
		}
	}
}

func equal(a, b any) bool {
	switch a := a.(type) {
	case []StoreConfig:
		b := b.([]StoreConfig)
		return len(a) == len(b) && (len(a) == 0 || a[0] == b[0])
	}
	return a == b
}

// TestFlags: a command's flag set has the flags of the settings it uses
// and no others; flags come after positional arguments; help prints each
// default from the table.
func TestFlags(t *testing.T) {
	t.Setenv("SSTATEFS_CONFIG", "/dev/null")
	fset := pflag.NewFlagSet("index show", pflag.ContinueOnError)
	cf := NewFlags(fset, "store")
	for _, name := range []string{"config", "store", "store-timeout", "store-path-style"} {
		if fset.Lookup(name) == nil {
			t.Errorf("--%s missing", name)
		}
	}
	for _, name := range []string{"prefetch-mode", "cache-size", "debug", "allow-other", "log-level"} {
		if fset.Lookup(name) != nil {
			t.Errorf("--%s offered by a command that does not use it", name)
		}
	}
	if err := fset.Parse([]string{"pos", "--store", "s3://b/p", "--store-path-style", "--store-timeout=3s"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := cf.Load()
	if err != nil {
		t.Fatal(err)
	}
	if fset.Arg(0) != "pos" || cfg.Stores[0].URL != "s3://b/p" || !cfg.Stores[0].PathStyle || cfg.Stores[0].Timeout.Duration != 3*time.Second {
		t.Errorf("args %v, store %+v", fset.Args(), cfg.Stores[0])
	}

	fset = pflag.NewFlagSet("mount", pflag.ContinueOnError)
	cf = NewFlags(fset)
	if err := fset.Parse([]string{"--allow-other", "--ready-file", "/r", "--debug", "--publish-concurrency", "3"}); err != nil {
		t.Fatal(err)
	}
	if cfg, err = cf.Load(); err != nil {
		t.Fatal(err)
	}
	if !cfg.Mount.AllowOther || cfg.Mount.ReadyFile != "/r" || !cfg.Mount.Debug || cfg.Log.Level != "debug" || cfg.Publish.Concurrency != 3 {
		t.Errorf("aliases and --debug: mount %+v log %+v publish %+v", cfg.Mount, cfg.Log, cfg.Publish)
	}
	if err := fset.Parse([]string{"--publish-concurrency", "many"}); err == nil || !strings.Contains(err.Error(), "many") {
		t.Errorf("an integer flag took %q: %v", "many", err)
	}

	var help bytes.Buffer
	fset.SetOutput(&help)
	fset.PrintDefaults()
	for _, want := range []string{"bound of the object cache (default 20GiB)", "uploads to the store at once (default 8)", "(default 10s)", "(default the host name)",
		"--store-region string ", "(default $AWS_REGION, else us-east-1)",
		"--store [NAME=]URL ", "--publish-store NAME ", "--require-publish-store ", "--store-equivalences-from string ", "(default trusted)"} {
		if !strings.Contains(help.String(), want) {
			t.Errorf("help does not show %q:\n%s", want, help.String())
		}
	}
}
