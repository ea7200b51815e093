package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestDeriveName(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"s3://company-sstate/poky", "company-sstate"},
		{"s3://my.bucket", "my.bucket"},
		{"https://sstate.yoctoproject.org/all/", "sstate.yoctoproject.org"},
		{"http://127.0.0.1:8080/mirror", "127.0.0.1-8080"}, // two local mirrors differ by port
		{"http://[::1]:8080/x", "1-8080"},
		{"https://user:secret@host.example/x", "host.example"}, // never the credentials
		{"file:///srv/sstate-cache", "sstate-cache"},
		{"file:///srv/sstate-cache/", "sstate-cache"},
		{"file:///home/me/my%20cache", "my-cache"},
		{"file:///data/.hidden", "hidden"},
		{"file:///data/caché=1", "cach-1"},
		{"file:///", "store"},
		{"file:///x/___", "store"},
		{"%zz", "store"},
		{"s3://" + strings.Repeat("b", 63) + "/p", strings.Repeat("b", 63)},
		{"file:///" + strings.Repeat("d", 100), strings.Repeat("d", 63)},
	} {
		t.Run(tc.url, func(t *testing.T) {
			got := StoreName(StoreConfig{URL: tc.url})
			if got != tc.want {
				t.Errorf("StoreName(%q) = %q, want %q", tc.url, got, tc.want)
			}
			if !ValidName(got) {
				t.Errorf("derived name %q is not a valid name", got)
			}
		})
	}
	if got := StoreName(StoreConfig{URL: "s3://b", Name: "project"}); got != "project" {
		t.Errorf("configured name: %q", got)
	}
}

func TestParseStoreArg(t *testing.T) {
	for _, tc := range []struct{ arg, name, url string }{
		{"a=file:///x", "a", "file:///x"},
		{"company.eu_1-b=s3://b/p?x=y", "company.eu_1-b", "s3://b/p?x=y"},
		{"https://h/p?a=b", "", "https://h/p?a=b"}, // "=" in the query: no name
		{"file:///dir=1/x", "", "file:///dir=1/x"},
		{"-x=file:///x", "", "-x=file:///x"},   // not a name: the whole is the URL (and invalid)
		{"a/b=file:///x", "", "a/b=file:///x"}, // a "/" is never in a name
		{"file:///x", "", "file:///x"},
		{"company", "", "company"},
	} {
		if n, u := ParseStoreArg(tc.arg); n != tc.name || u != tc.url {
			t.Errorf("ParseStoreArg(%q) = %q, %q; want %q, %q", tc.arg, n, u, tc.name, tc.url)
		}
	}
}

// load parses args (with the file holding toml, when not "") and loads.
func load(t *testing.T, toml string, args ...string) (Config, error) {
	t.Helper()
	t.Setenv("SSTATEFS_CONFIG", "/dev/null")
	if toml != "" {
		f := filepath.Join(t.TempDir(), "sstatefs.toml")
		if err := os.WriteFile(f, []byte(toml), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append([]string{"--config", f}, args...)
	}
	fset := pflag.NewFlagSet("t", pflag.ContinueOnError)
	cf := NewFlags(fset)
	if err := fset.Parse(args); err != nil {
		t.Fatal(err)
	}
	return cf.Load()
}

func urls(stores []StoreConfig) []string {
	var out []string
	for _, s := range stores {
		out = append(out, StoreName(s)+"="+s.URL)
	}
	return out
}

// TestStoreFlags: --store is repeatable and replaces the file's list in
// the order given; NAME=URL names a store, a bare NAME takes the file's
// store of that name; the other --store-* flags apply to every store of
// the list they fit, and to no other.
func TestStoreFlags(t *testing.T) {
	token := filepath.Join(t.TempDir(), "token")
	os.WriteFile(token, []byte("t"), 0o600)
	const file = `
[[store]]
url = "s3://company-sstate/poky"
name = "company"
endpoint = "http://127.0.0.1:9"
read_only = true

[[store]]
url = "file:///srv/project"
publish = true
`
	cfg, err := load(t, file, "--store", "a=file:///x", "--store", "https://h/p?a=b", "--store", "company",
		"--store-path-style", "--store-bearer-token-file", token, "--store-timeout", "3s")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(urls(cfg.Stores), " "), "a=file:///x h=https://h/p?a=b company=s3://company-sstate/poky"; got != want {
		t.Fatalf("stores = %s, want %s", got, want)
	}
	a, h, company := cfg.Stores[0], cfg.Stores[1], cfg.Stores[2]
	if a.PathStyle || a.BearerTokenFile != "" || h.PathStyle || h.BearerTokenFile != token || !company.PathStyle || company.BearerTokenFile != "" {
		t.Errorf("flags set keys of stores they do not fit:\n%+v\n%+v\n%+v", a, h, company)
	}
	if company.Endpoint != "http://127.0.0.1:9" || !company.ReadOnly {
		t.Errorf("the store taken by name lost its settings: %+v", company)
	}
	for _, s := range cfg.Stores {
		if s.Timeout.Duration.Seconds() != 3 {
			t.Errorf("--store-timeout did not reach %s: %v", StoreName(s), s.Timeout)
		}
	}
	if i := cfg.PublishStore(); i != 0 {
		t.Errorf("publish store = %d, want the first writable (0)", i)
	}

	// without --store, the flags apply to the file's stores
	cfg, err = load(t, file, "--store-read-only", "--store-equivalences-from", "any", "--store-region", "eu-west-1")
	if err != nil {
		t.Fatalf("--store-read-only on a list with publish = true: %v", err)
	}
	for _, s := range cfg.Stores {
		if !s.ReadOnly || s.Publish || s.EquivalencesFrom != EquivalencesAny || (s.Region == "eu-west-1") != strings.HasPrefix(s.URL, "s3:") {
			t.Errorf("flags over the file's list: %+v", s)
		}
	}
	if i := cfg.PublishStore(); i != -1 {
		t.Errorf("--store-read-only: publish store %d, want none", i)
	}

	cfg, err = load(t, "", "--store", "a=file:///a", "--store", "b=file:///b", "--publish-store", "b", "--require-publish-store")
	if err != nil {
		t.Fatal(err)
	}
	if i := cfg.PublishStore(); i != 1 || !cfg.Publish.RequireStore {
		t.Errorf("--publish-store b: publish store %d, require %v", i, cfg.Publish.RequireStore)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--store", "https://h/p", "--store-endpoint", "http://127.0.0.1:9"}, "--store-endpoint: applies to s3 stores only, and no store of the list is one"},
		{[]string{"--store", "nosuch"}, `--store: "nosuch" is neither a URL (file:///dir, s3://bucket/prefix, https://host/path) nor a configured store: no store named "nosuch" (the stores are: company, project)`},
		{[]string{"--publish-store", "nosuch"}, `--publish-store: no store named "nosuch" (the stores are: company, project)`},
		{[]string{"--store", "m=https://h/p", "--publish-store", "m"}, `store 1 "m" (https://h/p): publish = true on a read-only store (an http(s) store is read-only)`},
		{[]string{"--store-read-only", "--publish-store", "project"}, `store 2 "project" (file:///srv/project): publish = true on a read-only store (read_only = true)`},
		{[]string{"--store-read-only", "--require-publish-store"}, "publish.require_store (--require-publish-store) is set, but no store is writable"},
		{[]string{"--store", "x/y=file:///x"}, `unsupported scheme ""`},
		{[]string{"--store-equivalences-from", "some"}, `store 1 "company" (s3://company-sstate/poky): equivalences_from "some": want trusted or any`},
	} {
		_, err := load(t, file, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v\nwant one mentioning %s", tc.args, err, tc.want)
		}
	}
}

// TestStoreListValidation: every problem of a store list is reported at
// once, each naming its store.
func TestStoreListValidation(t *testing.T) {
	_, err := load(t, `
[[store]]
url = "file:///srv/project"
name = "project"
publish = true

[[store]]
url = "s3://company/poky"
name = "project"
publish = true
equivalences_from = "everyone"

[[store]]
url = "https://sstate.example.org/all"
name = "-public"
publish = true
endpoint = "http://127.0.0.1:9"
path_style = true

[[store]]
url = "file:///mnt/a/cache"
read_only = true
publish = true
ca_bundle = "/nonexistent.pem"
nmae = "typo"

[[store]]
url = "file:///mnt/b/cache"
`)
	if err == nil {
		t.Fatal("accepted")
	}
	msg := err.Error()
	for _, want := range []string{
		`unknown key "store.nmae" (store 4)`,
		`store 2 "project" (s3://company/poky): equivalences_from "everyone": want trusted or any`,
		`store 3 (https://sstate.example.org/all): name "-public": want [A-Za-z0-9][A-Za-z0-9_.-]*`,
		`store 3 "-public" (https://sstate.example.org/all): endpoint applies to s3 stores only`,
		`store 3 "-public" (https://sstate.example.org/all): path_style applies to s3 stores only`,
		`store 3 "-public" (https://sstate.example.org/all): publish = true on a read-only store (an http(s) store is read-only)`,
		`store 4 "cache" (file:///mnt/a/cache): ca_bundle applies to s3, http or https stores only`,
		`store 4 "cache" (file:///mnt/a/cache): publish = true on a read-only store (read_only = true)`,
		`store 1 "project" (file:///srv/project) and store 2 "project" (s3://company/poky) have the same name` + "\n",
		`store 4 "cache" (file:///mnt/a/cache) and store 5 "cache" (file:///mnt/b/cache) have the same name (derived from the url: give each a name`,
		`publish = true on 4 stores (store 1 "project" (file:///srv/project), store 2 "project" (s3://company/poky), store 3 "-public" (https://sstate.example.org/all), store 4 "cache" (file:///mnt/a/cache)): exactly one store receives`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not mention %q", want)
		}
	}
	if t.Failed() {
		t.Logf("reported:\n%s", msg)
	}

	// a list without a writable store is valid: publishes stay local
	cfg, err := load(t, `
[[store]]
url = "file:///srv/project"
read_only = true
[[store]]
url = "https://sstate.example.org/all"
`)
	if err != nil || cfg.PublishStore() != -1 {
		t.Errorf("read-only list: %v, publish store %d", err, cfg.PublishStore())
	}
	if i, err := cfg.StoreNamed("sstate.example.org"); i != 1 || err != nil {
		t.Errorf("StoreNamed(derived) = %d, %v", i, err)
	}
}

// TestREADMEStoreExample: the README's example configuration loads, and
// means what its comments say.
func TestREADMEStoreExample(t *testing.T) {
	data, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(data), "\n## Configuration\n")
	if !ok {
		t.Fatal("README has no Configuration section")
	}
	_, rest, ok = strings.Cut(rest, "```toml\n")
	example, _, ok2 := strings.Cut(rest, "```\n")
	if !ok || !ok2 {
		t.Fatal("the Configuration section has no toml example")
	}
	cfg, err := load(t, example)
	if err != nil {
		t.Fatalf("the README's example: %v", err)
	}
	if got := strings.Join(urls(cfg.Stores), " "); got != "project=file:///srv/sstate/project company=s3://company-sstate/poky yocto=https://sstate.yoctoproject.org/all" {
		t.Errorf("stores: %s", got)
	}
	if cfg.PublishStore() != 0 || cfg.Stores[1].Writable() || cfg.Stores[2].Writable() || deriveName(cfg.Stores[0].URL) != "project" {
		t.Errorf("publish store %d, writable company %v, yocto %v", cfg.PublishStore(), cfg.Stores[1].Writable(), cfg.Stores[2].Writable())
	}
}
