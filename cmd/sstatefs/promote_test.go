package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/index/indextest"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/file"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/config"
	"github.com/sstatefs/sstatefs/internal/stores"
	"github.com/sstatefs/sstatefs/internal/testutil"
	"github.com/sstatefs/sstatefs/sstate"
)

// projectStore makes a file:// store holding objects (each with a
// .siginfo), its index, an equivalence record naming each object's
// unihash and an access record for each key in accessed.
func projectStore(t *testing.T, keys []string, accessed map[string]time.Time) (string, map[string][]byte, []index.Equivalence) {
	t.Helper()
	dir := t.TempDir()
	s, err := file.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	data := map[string][]byte{}
	var eqs []index.Equivalence
	for i, k := range keys {
		for _, key := range []string{k, k + ".siginfo"} {
			d := make([]byte, 2000+i)
			rand.Read(d)
			data[key] = d
			p := filepath.Join(dir, key)
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, d, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		n, err := sstate.Parse(k)
		if err != nil {
			t.Fatal(err)
		}
		eqs = append(eqs, index.Equivalence{Method: "oe.sstatesig.OEOuthashBasic", Taskhash: hexOf("task " + k),
			Outhash: hexOf("out " + k), Unihash: n.Hash})
	}
	indextest.Write(t, s, "project", eqs, accessed)
	return "file://" + dir, data, eqs
}

// writeConfig writes a configuration file of the given TOML text.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	t.Setenv("SSTATEFS_CONFIG", "")
	p := filepath.Join(t.TempDir(), "sstatefs.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// openStore opens the store of a configuration by name, with its index
// (nil: none).
func openStore(t *testing.T, cfgFile, name string) (backend.Store, *index.Index) {
	t.Helper()
	cfg := config.Defaults()
	if err := config.LoadFile(&cfg, cfgFile); err != nil {
		t.Fatal(err)
	}
	for i := range cfg.Stores {
		config.StoreDefaults(&cfg.Stores[i])
	}
	i, err := cfg.StoreNamed(name)
	if err != nil {
		t.Fatal(err)
	}
	s, err := stores.Open(context.Background(), cfg.Stores[i])
	if err != nil {
		t.Fatal(err)
	}
	ix, err := index.LoadAll(context.Background(), s)
	if err != nil && !errors.Is(err, index.ErrNoIndex) {
		t.Fatal(err)
	}
	return s, ix
}

// TestPromoteCommandToS3 promotes a project's file:// store into the
// company's S3 store (versitygw) through the command: objects with their
// .siginfo and their equivalence records arrive, verified and indexed; an
// object the company built itself under the same name is kept and
// reported, and neither the project's .siginfo nor its equivalence record
// goes beside it; a second run copies nothing; a dry run lists without
// writing.
func TestPromoteCommandToS3(t *testing.T) {
	env := testutil.S3Server(t)
	bucket := env.NewBucket(t)
	t.Setenv("AWS_ACCESS_KEY_ID", env.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", env.SecretKey)
	keys := []string{testKey(1, "populate_sysroot"), testKey(2, "package"), testKey(3, "populate_lic")}
	projectURL, data, eqs := projectStore(t, keys, nil)
	cfgFile := writeConfig(t, `
[[store]]
name = "company"
url = "s3://`+bucket+`/sstate"
endpoint = "`+env.Endpoint+`"
path_style = true

[[store]]
name = "project"
url = "`+projectURL+`"
`)
	company, _ := openStore(t, cfgFile, "company")
	theirs := []byte("the company's own build")
	if err := company.Create(context.Background(), keys[2], bytes.NewReader(theirs), int64(len(theirs))); err != nil {
		t.Fatal(err)
	}

	var out, errb bytes.Buffer
	if rc := promote([]string{"--config", cfgFile, "--from", "project", "--to", "company", "--dry-run"}, &out, &errb); rc != 0 {
		t.Fatalf("dry run exit %d: %s", rc, errb.String())
	}
	if n := strings.Count(out.String(), "\n"); n != len(data)+1 || !strings.Contains(out.String(), "would promote 6 objects") {
		t.Fatalf("dry run output:\n%s", out.String())
	}
	if _, ix := openStore(t, cfgFile, "company"); ix.Len() != 0 {
		t.Fatalf("the dry run recorded %d objects", ix.Len())
	}

	if rc := run([]string{"promote", "--config", cfgFile, "--from", "project", "--to", "company", "--quiet"}); rc != 0 {
		t.Fatalf("promote exit %d", rc)
	}
	_, ix := openStore(t, cfgFile, "company")
	for k, d := range data {
		got, err := testutil.ReadAll(t, company, k, 0, -1)
		switch k {
		case keys[2]:
			if !bytes.Equal(got, theirs) {
				t.Errorf("the company's own %s was replaced: %q, %v", k, got, err)
			}
			continue
		case keys[2] + ".siginfo":
			if !errors.Is(err, backend.ErrNotExist) {
				t.Errorf("the project's %s went beside the company's own object: %v", k, err)
			}
			continue
		}
		if err != nil || !bytes.Equal(got, d) {
			t.Errorf("%s in the company store: %v", k, err)
		}
		if o, ok := ix.Lookup(k); !ok || o.Size != int64(len(d)) {
			t.Errorf("%s not in the company's index: %+v", k, o)
		}
	}
	for i, e := range eqs {
		_, ok := ix.Equivalence(e.Method, e.Taskhash)
		if want := i != 2; ok != want {
			t.Errorf("equivalence of %s in the company's index: %v, want %v", keys[i], ok, want)
		}
	}

	out.Reset()
	errb.Reset()
	if rc := promote([]string{"--config", cfgFile, "--from", "project", "--to", "company", "--quiet"}, &out, &errb); rc != 0 {
		t.Fatalf("second promote exit %d: %s", rc, errb.String())
	}
	if !strings.Contains(out.String(), "promoted 0 objects (0 B) and 0 equivalence records from project") ||
		!strings.Contains(out.String(), "4 already there, 1 conflicts") ||
		!strings.Contains(errb.String(), "conflict (kept the destination's other bytes; the .siginfo and .sig stay behind too): "+keys[2]) {
		t.Errorf("second promote:\n%s%s", out.String(), errb.String())
	}
}

// TestPromoteCommandSelects: --list (a bare file name) and
// --accessed-since pick objects of a file:// store into another; promoting
// into a less trusted store warns.
func TestPromoteCommandSelects(t *testing.T) {
	keys := []string{testKey(1, "package"), testKey(2, "package"), testKey(3, "package")}
	now := time.Now()
	projectURL, _, _ := projectStore(t, keys, map[string]time.Time{keys[0]: now.Add(-time.Hour), keys[1]: now.Add(-100 * time.Hour)})
	cfgFile := writeConfig(t, `
[[store]]
name = "mirror"
url = "file://`+t.TempDir()+`"

[[store]]
name = "project"
url = "`+projectURL+`"

[[store]]
name = "company"
url = "file://`+t.TempDir()+`"
`)
	var out, errb bytes.Buffer
	if rc := promote([]string{"--config", cfgFile, "--from", "project", "--to", "company", "--accessed-since", "24h", "--quiet"}, &out, &errb); rc != 0 {
		t.Fatalf("--accessed-since exit %d: %s", rc, errb.String())
	}
	if !strings.Contains(out.String(), "promoted 2 objects") || !strings.Contains(errb.String(), "less trusted") {
		t.Errorf("--accessed-since 24h:\n%s%s", out.String(), errb.String())
	}
	_, ix := openStore(t, cfgFile, "company")
	if _, ok := ix.Lookup(keys[0] + ".siginfo"); !ok || ix.Len() != 2 {
		t.Errorf("the company store after --accessed-since holds %d objects", ix.Len())
	}

	list := filepath.Join(t.TempDir(), "list")
	os.WriteFile(list, []byte("# wanted\n"+filepath.Base(keys[2])+"\n\nab/cd/sstate:gone::1:r0::14:abcd_x.tar.zst\n"), 0o644)
	out.Reset()
	errb.Reset()
	if rc := promote([]string{"--config", cfgFile, "--from", "project", "--to", "mirror", "--list", list, "--quiet"}, &out, &errb); rc != 1 {
		t.Fatalf("--list with a missing name exit %d, want 1: %s", rc, errb.String())
	}
	if !strings.Contains(out.String(), "promoted 2 objects") || !strings.Contains(errb.String(), "not in the source: ab/cd/sstate:gone") ||
		strings.Contains(errb.String(), "less trusted") {
		t.Errorf("--list:\n%s%s", out.String(), errb.String())
	}
}

// TestPromoteCommandRefuses: targets that take no writes, the source
// itself, unknown names and contradictory selections are refused (exit 2)
// with a message naming them, before anything is copied.
func TestPromoteCommandRefuses(t *testing.T) {
	srv := httptest.NewServer(http.FileServer(http.Dir(t.TempDir())))
	defer srv.Close()
	projectURL, _, _ := projectStore(t, []string{testKey(1, "package")}, nil)
	frozen := t.TempDir()
	cfgFile := writeConfig(t, `
[[store]]
name = "frozen"
url = "file://`+frozen+`"
read_only = true

[[store]]
name = "project"
url = "`+projectURL+`"

[[store]]
name = "public"
url = "`+srv.URL+`/"
`)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--from", "project", "--to", "public"}, "--to public (" + srv.URL + ") is read-only"},
		{[]string{"--from", "project", "--to", "frozen"}, "--to frozen (file://" + frozen + ") is read-only"},
		{[]string{"--from", "project", "--to", "project"}, "the same store, project"},
		{[]string{"--from", "project", "--to", "nosuch"}, `--to: no store named "nosuch"`},
		{[]string{"--from", "project"}, "--from and --to name the stores"},
		{[]string{"--from", "project", "--to", "frozen", "--list", "x", "--accessed-since", "1h"}, "give one"},
		{[]string{"--from", "project", "--to", "frozen", "--accessed-since", "last week"}, `--accessed-since "last week": want a date`},
	} {
		var out, errb bytes.Buffer
		rc := promote(append([]string{"--config", cfgFile, "--quiet"}, tc.args...), &out, &errb)
		if rc != 2 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("promote %q: exit %d, %q; want 2, %q", tc.args, rc, errb.String(), tc.want)
		}
	}
	if ents, _ := os.ReadDir(frozen); len(ents) != 0 {
		t.Errorf("the read-only store got %d entries", len(ents))
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Time
		bad  bool
	}{
		{in: "2026-11-01", want: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)},
		{in: "2026-11-01T08:30:00+02:00", want: time.Date(2026, 11, 1, 6, 30, 0, 0, time.UTC)},
		{in: "720h", want: now.Add(-720 * time.Hour)},
		{in: "-1h", bad: true},
		{in: "yesterday", bad: true},
		{in: "2026-13-01", bad: true},
	} {
		got, err := parseSince(tc.in, now)
		if tc.bad != (err != nil) || !tc.bad && !got.Equal(tc.want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v (error: %v)", tc.in, got, err, tc.want, tc.bad)
		}
	}
}

// TestPromoteCommandFromMirror: an HTTP mirror without an index is
// promoted from by --list; the output says the objects could not be
// verified against a digest.
func TestPromoteCommandFromMirror(t *testing.T) {
	mirrorDir := t.TempDir()
	k := "ab/cd/sstate:zlib::1.3:r0::14:abcd" + strings.Repeat("2", 60) + "_unpack.tar.zst"
	for _, key := range []string{k, k + ".siginfo"} {
		p := filepath.Join(mirrorDir, key)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("public bytes of "+key), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(mirrorDir)))
	defer srv.Close()
	company := t.TempDir()
	cfgFile := writeConfig(t, `
[[store]]
name = "company"
url = "file://`+company+`"

[[store]]
name = "public"
url = "`+srv.URL+`/"
`)
	list := filepath.Join(t.TempDir(), "list")
	os.WriteFile(list, []byte(filepath.Base(k)+"\n"), 0o644)
	var out, errb bytes.Buffer
	if rc := promote([]string{"--config", cfgFile, "--from", "public", "--to", "company", "--list", list, "--quiet"}, &out, &errb); rc != 0 {
		t.Fatalf("promote from the mirror exit %d: %s", rc, errb.String())
	}
	if !strings.Contains(out.String(), "promoted 2 objects") || !strings.Contains(errb.String(), "has no index") ||
		!strings.Contains(errb.String(), "copied unverified (no digest in the source index): "+k+".siginfo") {
		t.Errorf("promote from the mirror:\n%s%s", out.String(), errb.String())
	}
	if b, err := os.ReadFile(filepath.Join(company, k)); err != nil || string(b) != "public bytes of "+k {
		t.Errorf("%s in the company store: %q, %v", k, b, err)
	}
}
