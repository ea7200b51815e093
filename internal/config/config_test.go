package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestConfigLayers(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "sstatefs.toml")
	os.WriteFile(cfgFile, []byte(`
[[store]]
url = "s3://sstate-bucket/yocto"
endpoint = "http://127.0.0.1:7070"
path_style = true
timeout = "3s"

[[store]]
url = "https://sstate.example.org/all"

[cache]
dir = "/var/cache/x"
size = "5GiB"

[index]
refresh_interval = "30s"

[mount]
allow_other = true
owner = "1000:1000"
`), 0o644)
	fset := pflag.NewFlagSet("t", pflag.ContinueOnError)
	cf := NewFlags(fset)
	if err := fset.Parse([]string{"--config", cfgFile, "--cache-size", "1GiB", "--store-timeout", "7s"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := cf.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Stores) != 2 || cfg.Stores[0].URL != "s3://sstate-bucket/yocto" || !cfg.Stores[0].PathStyle {
		t.Errorf("stores = %+v", cfg.Stores)
	}
	if cfg.Stores[0].Timeout.Duration != 7*time.Second {
		t.Errorf("flag did not override the file: timeout %v", cfg.Stores[0].Timeout)
	}
	// a --store-* flag applies to every store of the list
	if cfg.Stores[1].Timeout.Duration != 7*time.Second || cfg.Stores[1].MaxConnections != 64 || cfg.Stores[1].EquivalencesFrom != EquivalencesTrusted {
		t.Errorf("second store: flag and defaults: %+v", cfg.Stores[1])
	}
	if cfg.Cache.Size.Bytes != 1<<30 || cfg.Cache.Dir != "/var/cache/x" {
		t.Errorf("cache = %+v", cfg.Cache)
	}
	if cfg.Index.RefreshInterval.Duration != 30*time.Second || cfg.Index.NegativeTTL.Duration != time.Minute {
		t.Errorf("index = %+v (negative_ttl must keep its default)", cfg.Index)
	}
	if !cfg.Mount.AllowOther || cfg.Mount.Owner != "1000:1000" {
		t.Errorf("mount = %+v", cfg.Mount)
	}
}

func TestConfigDefaultsEmbeddedStore(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", "/data")
	t.Setenv("SSTATEFS_CONFIG", "")
	fset := pflag.NewFlagSet("t", pflag.ContinueOnError)
	cf := NewFlags(fset)
	fset.Parse(nil)
	cfg, err := cf.Load()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Stores[0].URL != "file:///data/sstatefs/store" {
		t.Errorf("default store = %q", cfg.Stores[0].URL)
	}
}

func TestConfigStrictAndAllErrors(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "bad.toml")
	os.WriteFile(cfgFile, []byte(`
[cache]
dri = "/x"
[index]
refresh = "1m"
`), 0o644)
	t.Setenv("SSTATEFS_CONFIG", cfgFile)
	fset := pflag.NewFlagSet("t", pflag.ContinueOnError)
	cf := NewFlags(fset)
	fset.Parse(nil)
	_, err := cf.Load()
	if err == nil || !strings.Contains(err.Error(), `"cache.dri"`) || !strings.Contains(err.Error(), `"index.refresh"`) || !strings.Contains(err.Error(), cfgFile) {
		t.Fatalf("unknown keys: %v", err)
	}

	os.WriteFile(cfgFile, []byte(`
[[store]]
url = "ftp://x/y"
[[store]]
url = "s3://"
bearer_token_file = "/nonexistent/token"
[cache]
size = "-1"
[index]
refresh_interval = "0s"
compact_segments = -5
[mount]
owner = "bob"
[log]
level = "loud"
`), 0o644)
	_, err = cf.Load()
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	msg := err.Error()
	for _, want := range []string{`cache.size (--cache-size): invalid size "-1"`, `unsupported scheme "ftp"`, "no bucket", "bearer_token_file applies to http or https stores only", "/nonexistent/token", "refresh_interval must be positive", "index.compact_segments must be 0 (off) or a segment count, got -5", "mount.owner", `log.level "loud"`} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not mention %q:\n%s", want, msg)
		}
	}
	os.WriteFile(cfgFile, []byte("[cache]\nsize = \"12 parsecs\"\n"), 0o644)
	if _, err := cf.Load(); err == nil || !strings.Contains(err.Error(), "12 parsecs") {
		t.Errorf("bad size: %v", err)
	}
	os.WriteFile(cfgFile, []byte("[[store]]\nurl = \"https://user:hunter2@example.org/x\"\n"), 0o644)
	if _, err := cf.Load(); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("credentials in url: %v", err)
	}
}

func TestSize(t *testing.T) {
	for in, want := range map[string]int64{"20GiB": 20 << 30, "500MB": 500e6, "1.5G": 3 << 29, "4096": 4096, "10 KiB": 10240} {
		var s Size
		if err := s.UnmarshalText([]byte(in)); err != nil || s.check("x") != nil || s.Bytes != want {
			t.Errorf("Size(%q) = %d, %v; want %d", in, s.Bytes, err, want)
		}
	}
}

// TestConfigTypeErrorsAllAtOnce: values of the wrong type, unknown keys and
// invalid values of one file are all reported by one run, each naming its
// key; the good keys of the same file still apply.
func TestConfigTypeErrorsAllAtOnce(t *testing.T) {
	cfgFile := filepath.Join(t.TempDir(), "sstatefs.toml")
	os.WriteFile(cfgFile, []byte(`
[[store]]
url = "s3://bucket/p"
timeout = 10
path_style = "yes"

[[store]]
url = "https://mirror.example/x"
max_connections = "many"
urll = "typo"

[cache]
size = [20]
dir = "/var/cache/typed"

[index]
refresh_interval = "1m"
negative_ttl = true

[mount]
allow_other = 1

[log]
level = "loud"

[bogus]
x = 1
`), 0o644)
	t.Setenv("SSTATEFS_CONFIG", cfgFile)
	fset := pflag.NewFlagSet("t", pflag.ContinueOnError)
	cf := NewFlags(fset)
	fset.Parse(nil)
	cfg, err := cf.Load()
	if err == nil {
		t.Fatal("a file with type errors was accepted")
	}
	msg := err.Error()
	for _, want := range []string{
		`timeout: invalid duration "10"`, // toml hands numbers to UnmarshalText as text
		`store.path_style (store 1): want true or false`,
		`store.max_connections (store 2): want an integer`,
		`unknown key "store.urll" (store 2)`,
		`cache.size: want a size string`,
		`invalid duration "true"`,
		`mount.allow_other: want true or false`,
		`unknown key "bogus"`,
		`log.level "loud"`, // Validate's, not hidden by the decoding errors
		cfgFile,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not mention %q:\n%s", want, msg)
		}
	}
	if cfg.Cache.Dir != "/var/cache/typed" || len(cfg.Stores) != 2 || cfg.Stores[1].URL != "https://mirror.example/x" {
		t.Errorf("the good keys were not applied: cache %+v, stores %+v", cfg.Cache, cfg.Stores)
	}
	t.Logf("reported:\n%s", msg)
}
