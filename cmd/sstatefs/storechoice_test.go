package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/internal/config"
	"github.com/sstatefs/sstatefs/internal/stores"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

// useConfig writes a configuration file and makes it the one commands read.
func useConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sstatefs.toml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SSTATEFS_CONFIG", p)
	return p
}

// putObject writes an object into a directory store (or a mirror's tree).
func putObject(t *testing.T, dir, key string, data []byte) {
	t.Helper()
	p := filepath.Join(dir, key)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// mirror serves dir as a plain HTTP sstate mirror without an index.
func mirror(t *testing.T, dir string) string {
	srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	t.Cleanup(srv.Close)
	return srv.URL
}

// files lists the regular files below dir (relative paths).
func files(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

// TestStoreChoice: how each kind of command chooses its store among
// several: --store NAME, else the publish store (marked publish = true,
// though not first), else for reading the first; writing refuses a
// read-only store naming it, and an unknown name lists the names. --store
// URL still replaces the configured stores, and a flag's value that looks
// like a name is not taken for --store's.
func TestStoreChoice(t *testing.T) {
	dir := t.TempDir()
	useConfig(t, `
[[store]]
url = "file://`+dir+`/proj"
name = "proj"
read_only = true
[[store]]
url = "http://127.0.0.1:1/mirror"
name = "public"
[[store]]
url = "file://`+dir+`/company"
[[store]]
url = "file://`+dir+`/team"
publish = true
`)
	for _, tc := range []struct {
		use  storeUse
		args []string
		want string // store name, or the error's text
		err  error
	}{
		{readsStore, nil, "team", nil},
		{readsStore, []string{"--store", "public"}, "public", nil},
		{readsStore, []string{"-store=proj"}, "proj", nil},
		// 5s has the syntax of a name, and is --store-timeout's
		{readsStore, []string{"--store-timeout", "5s", "--store", "company"}, "company", nil},
		{readsStore, []string{"--store", "nope"}, `--store nope: no store named "nope" (the stores are: proj, public, company, team)`, nil},
		{readsStore, []string{"--store", "proj", "--store", "team"}, "", nil},
		{readsStore, []string{"--store", "file://" + dir + "/other"}, "other", nil},
		{writesStore, nil, "team", nil},
		{writesStore, []string{"--store", "company"}, "company", nil},
		{writesStore, []string{"--store", "public"}, "store public (http://127.0.0.1:1/mirror): store is read-only (an http(s) mirror)", backend.ErrReadOnly},
		{writesStore, []string{"--store", "proj"}, "store proj (file://" + dir + "/proj): store is read-only (read_only = true)", backend.ErrReadOnly},
		{publishStore, nil, "team", nil},
		{allStores, nil, "", nil},
		{allStores, []string{"--store", "company"}, "company", nil},
	} {
		c := newCommand("test", "Usage: test", "store")
		c.flags.SetOutput(&bytes.Buffer{})
		c.choosesStore(tc.use)
		ok := c.parse(tc.args, 0, 0, nil)
		got := ""
		if ok {
			if c.sc.URL != "" {
				got = config.StoreName(c.sc)
			}
		} else if len(c.cfg.Stores) > 0 {
			_, err := c.chooseStore()
			if tc.err != nil && !errors.Is(err, tc.err) {
				t.Errorf("use %d %q: %v, want %v", tc.use, tc.args, err, tc.err)
			}
			got = err.Error()
		}
		if !strings.HasPrefix(got, tc.want) || (tc.want == "") != (got == "") {
			t.Errorf("use %d %q: got %q, want %q", tc.use, tc.args, got, tc.want)
		}
	}

	// no writable store: reading takes the first, writing refuses
	useConfig(t, `
[[store]]
url = "http://127.0.0.1:1/mirror"
name = "public"
[[store]]
url = "file://`+dir+`/proj"
name = "proj"
read_only = true
`)
	c := newCommand("index show", "Usage: test", "store")
	c.choosesStore(readsStore)
	if !c.parse(nil, 0, 0, nil) || config.StoreName(c.sc) != "public" {
		t.Errorf("index show with no writable store works on %q, want the first store", config.StoreName(c.sc))
	}
	for _, use := range []storeUse{writesStore, publishStore} {
		c = newCommand("index build", "Usage: test", "store")
		c.choosesStore(use)
		if c.parse(nil, 0, 0, nil) {
			t.Fatalf("use %d with no writable store chose %s", use, c.sc.URL)
		}
		_, err := c.chooseStore()
		if !errors.Is(err, errNoWritableStore) || !strings.Contains(err.Error(), "public (http://127.0.0.1:1/mirror): an http(s) mirror; proj (file://"+dir+"/proj): read_only = true") {
			t.Errorf("use %d with no writable store: %v", use, err)
		}
	}
}

// TestIndexCommandsPickStore: index build writes the index of the store
// --store names and of no other; without --store, of the publish store;
// it refuses a read-only store (read_only, or an HTTP mirror) without
// writing anything, as do compact and hashserv import.
func TestIndexCommandsPickStore(t *testing.T) {
	dir := t.TempDir()
	proj, company, team, pub := filepath.Join(dir, "proj"), filepath.Join(dir, "company"), filepath.Join(dir, "team"), t.TempDir()
	for i, d := range []string{proj, company, team, pub} {
		putObject(t, d, testKey(i, "package"), []byte("object"))
	}
	useConfig(t, `
[[store]]
url = "file://`+proj+`"
name = "proj"
read_only = true
[[store]]
url = "`+mirror(t, pub)+`"
name = "public"
[[store]]
url = "file://`+company+`"
[[store]]
url = "file://`+team+`"
publish = true
`)
	indexed := func(d string) bool {
		_, err := os.Stat(filepath.Join(d, ".sstatefs"))
		return err == nil
	}
	if rc := run([]string{"index", "build", "--quiet", "--store", "company"}); rc != 0 || !indexed(company) || indexed(team) {
		t.Fatalf("index build --store company: exit %d; company indexed %v, team %v", rc, indexed(company), indexed(team))
	}
	if rc := run([]string{"index", "build", "--quiet"}); rc != 0 || !indexed(team) {
		t.Fatalf("index build: exit %d; the publish store indexed: %v", rc, indexed(team))
	}
	for _, args := range [][]string{
		{"index", "build", "--quiet", "--store", "proj"},
		{"index", "build", "--quiet", "--store", "public"},
		{"index", "compact", "--store", "proj"},
		{"index", "compact", "--store", "public"},
		{"index", "show", "--store", "nope"},
		{"hashserv", "import", "--store", "proj", "--sqlite", "/nonexistent.db"},
		{"hashserv", "import", "--store", "public", "--sqlite", "/nonexistent.db"},
		{"hashserv", "serve", "--store", "nope"},
	} {
		if rc := run(args); rc != 2 {
			t.Errorf("%q: exit %d, want 2", args, rc)
		}
	}
	if indexed(proj) || indexed(pub) {
		t.Errorf("a read-only store got an index: proj %v, public %v", indexed(proj), indexed(pub))
	}
	if rc := run([]string{"index", "show", "--store", "company"}); rc != 0 {
		t.Errorf("index show --store company: exit %d", rc)
	}
}

// TestPushGoesToPublishStore: push uploads into the store marked publish =
// true, the third of the list, and nothing into the others; with no
// writable store it refuses.
func TestPushGoesToPublishStore(t *testing.T) {
	dir := t.TempDir()
	first, team, pub := filepath.Join(dir, "first"), filepath.Join(dir, "team"), t.TempDir()
	local := t.TempDir()
	keys := []string{testKey(1, "package"), testKey(2, "populate_sysroot")}
	for _, k := range keys {
		putObject(t, local, k, []byte("local "+k))
	}
	os.MkdirAll(first, 0o755)
	useConfig(t, `
[[store]]
url = "file://`+first+`"
[[store]]
url = "`+mirror(t, pub)+`"
[[store]]
url = "file://`+team+`"
publish = true
`)
	if rc := run([]string{"push", "--quiet", local}); rc != 0 {
		t.Fatalf("push: exit %d", rc)
	}
	for _, k := range keys {
		if b, err := os.ReadFile(filepath.Join(team, k)); err != nil || string(b) != "local "+k {
			t.Errorf("%s in the publish store: %q, %v", k, b, err)
		}
	}
	if f := files(t, first); len(f) != 0 {
		t.Errorf("push wrote into a store that is not the publish store: %q", f)
	}
	if f := files(t, pub); len(f) != 0 {
		t.Errorf("push wrote into the mirror's tree: %q", f)
	}

	ro := filepath.Join(dir, "ro")
	os.MkdirAll(ro, 0o755)
	useConfig(t, `
[[store]]
url = "`+mirror(t, pub)+`"
[[store]]
url = "file://`+ro+`"
read_only = true
`)
	if rc := run([]string{"push", "--quiet", local}); rc != 2 {
		t.Errorf("push with no writable store: exit %d, want 2", rc)
	}
	if f := files(t, ro); len(f) != 0 {
		t.Errorf("push wrote into a read_only store: %q", f)
	}
}

// TestExportMergedS3 exports a file store, an S3 store on versitygw and an
// HTTP mirror without an index, in that trust order, with the real binary:
// a name both the file store and the S3 store hold has the file store's
// bytes, the S3 store's other objects come along, the mirror is left out
// with a warning naming it, and the summary counts per store. --store
// company exports the S3 store alone, with its own bytes; an unknown name
// lists the names.
func TestExportMergedS3(t *testing.T) {
	env := testutil.S3Server(t)
	bucket := env.NewBucket(t)
	cfgS3 := s3Config(t, env, bucket)
	ctx := context.Background()
	s3store, err := stores.Open(ctx, cfgS3.Stores[0])
	if err != nil {
		t.Fatal(err)
	}
	proj, pub := t.TempDir(), t.TempDir()
	shared, companyOnly, pubOnly := testKey(1, "package"), testKey(2, "package"), testKey(3, "package")
	putObject(t, proj, shared, []byte("project's bytes"))
	for k, d := range map[string]string{shared: "company's bytes, longer", companyOnly: "company only"} {
		if err := s3store.Create(ctx, k, strings.NewReader(d), int64(len(d))); err != nil {
			t.Fatal(err)
		}
	}
	putObject(t, pub, pubOnly, []byte("public only"))
	useConfig(t, `
[[store]]
url = "file://`+proj+`"
name = "proj"
[[store]]
url = "`+cfgS3.Stores[0].URL+`"
name = "company"
endpoint = "`+env.Endpoint+`"
path_style = true
[[store]]
url = "`+mirror(t, pub)+`"
name = "public"
`)
	for _, s := range []string{"proj", "company"} {
		if rc := run([]string{"index", "build", "--quiet", "--store", s}); rc != 0 {
			t.Fatalf("index build --store %s: exit %d", s, rc)
		}
	}
	bin := buildBinary(t)
	export := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		cmd := exec.Command(bin, append([]string{"export", "--quiet"}, args...)...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
	}

	dst := t.TempDir()
	rc, out, errOut := export(dst)
	if rc != 0 {
		t.Fatalf("merged export: exit %d\n%s%s", rc, out, errOut)
	}
	for k, want := range map[string]string{shared: "project's bytes", companyOnly: "company only"} {
		if b, err := os.ReadFile(filepath.Join(dst, k)); err != nil || string(b) != want {
			t.Errorf("merged export %s: %q, %v; want %q", k, b, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(dst, pubOnly)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the unlisted mirror's object was exported: %v", err)
	}
	for _, want := range []string{
		"exported 2 objects",
		"  proj (file://" + proj + "): 1 objects (15 B), 0 already there\n",
		"  company (" + cfgS3.Stores[0].URL + "): 1 objects (12 B), 0 already there\n",
		"  public (",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("merged export's summary lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, "not exported: public: no index") {
		t.Errorf("merged export does not warn about the unlisted mirror:\n%s", errOut)
	}

	dst2 := t.TempDir()
	if rc, out, errOut := export("--store", "company", dst2); rc != 0 || !strings.Contains(errOut, "store company (") {
		t.Fatalf("export --store company: exit %d\n%s%s", rc, out, errOut)
	}
	for k, want := range map[string]string{shared: "company's bytes, longer", companyOnly: "company only"} {
		if b, err := os.ReadFile(filepath.Join(dst2, k)); err != nil || string(b) != want {
			t.Errorf("export --store company %s: %q, %v; want %q", k, b, err, want)
		}
	}
	if rc, _, errOut := export("--store", "nope", t.TempDir()); rc != 2 || !strings.Contains(errOut, "the stores are: proj, company, public") {
		t.Errorf("export --store nope: exit %d\n%s", rc, errOut)
	}
}
