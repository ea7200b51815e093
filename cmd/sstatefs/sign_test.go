package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend/file"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/config"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

// signKeys are two independent signers made with real gpg: a has a
// passphrase (in passFile), b has none; keyring is a directory with both
// public keys.
type signKeys struct {
	gpg      *testutil.GPG
	a, b     testutil.GPGKey
	passFile string
	keyring  string
}

func makeSignKeys(t *testing.T) signKeys {
	t.Helper()
	g := testutil.NewGPG(t)
	k := signKeys{gpg: g,
		a: g.GenKey(t, "Alice <a@example.com>", "ed25519", "alice's secret passphrase"),
		b: g.GenKey(t, "Bob <b@example.com>", "ed25519", ""),
	}
	dir := t.TempDir()
	k.passFile = filepath.Join(dir, "pass")
	if err := os.WriteFile(k.passFile, []byte(k.a.Pass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	k.keyring = filepath.Join(dir, "keyring")
	os.Mkdir(k.keyring, 0o755)
	for _, key := range []testutil.GPGKey{k.a, k.b} {
		b, err := os.ReadFile(key.Public)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(k.keyring, key.Fingerprint+".gpg"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return k
}

// runCmd runs a command function and returns its exit status and output.
func runCmd(f func([]string, *bytes.Buffer, *bytes.Buffer) int, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	rc := f(args, &out, &errb)
	return rc, out.String(), errb.String()
}

func signCmd(args []string, out, errb *bytes.Buffer) int   { return sign(args, out, errb) }
func verifyCmd(args []string, out, errb *bytes.Buffer) int { return verify(args, out, errb) }

// signoffsBy returns, per archive of the store, the fingerprints of its
// sign-offs.
func signoffsBy(t *testing.T, cfgFile, name string, keys []string) map[string][]string {
	t.Helper()
	_, ix := openStore(t, cfgFile, name)
	out := map[string][]string{}
	for _, k := range keys {
		for _, s := range ix.Signoffs(k) {
			out[k] = append(out[k], s.Fingerprint)
		}
	}
	return out
}

// TestSignAndVerifyS3 signs the archives of an S3 store (versitygw) with
// one key, then a second: verify under require_signoffs = 2 reports every
// archive hidden as unsigned (0, then 1 of 2), then shown with both
// signers; signing again signs nothing; index show counts the sign-offs
// per key. The sign-offs are real OpenPGP signatures over the bytes: gpg
// accepts them.
func TestSignAndVerifyS3(t *testing.T) {
	k := makeSignKeys(t)
	env := testutil.S3Server(t)
	bucket := env.NewBucket(t)
	t.Setenv("AWS_ACCESS_KEY_ID", env.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", env.SecretKey)
	keys := []string{testKey(1, "populate_sysroot"), testKey(2, "package"), testKey(3, "populate_lic")}
	projectURL, data, _ := projectStore(t, keys, nil)
	cfgFile := writeConfig(t, `
[[store]]
name = "company"
url = "s3://`+bucket+`/sstate"
endpoint = "`+env.Endpoint+`"
path_style = true
keyring = "`+k.keyring+`"
require_signoffs = 2

[[store]]
name = "project"
url = "`+projectURL+`"
`)
	if rc := run([]string{"promote", "--config", cfgFile, "--from", "project", "--to", "company", "--quiet"}); rc != 0 {
		t.Fatalf("promote exit %d", rc)
	}
	verifyAll := func(wantRC int, want ...string) string {
		t.Helper()
		rc, out, errs := runCmd(verifyCmd, "--config", cfgFile, "--store", "company", "--quiet")
		if rc != wantRC {
			t.Fatalf("verify exit %d, want %d:\n%s%s", rc, wantRC, out, errs)
		}
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Fatalf("verify output lacks %q:\n%s", w, out)
			}
		}
		return out
	}
	verifyAll(1, "hidden: unsigned\t"+keys[0]+"\t0 of the 2 required keyring keys signed it", "3 hidden unsigned")

	rc, out, errs := runCmd(signCmd, "--config", cfgFile, "--store", "company", "--key", k.a.Secret, "--passphrase-file", k.passFile, "--all", "--quiet")
	if rc != 0 || !strings.Contains(out, "signed 3 archives") || !strings.Contains(out, k.a.Fingerprint) || strings.Contains(errs, "warning") {
		t.Fatalf("sign with a: exit %d:\n%s%s", rc, out, errs)
	}
	if strings.Contains(out+errs, k.a.Pass) {
		t.Fatalf("the passphrase is in the output:\n%s%s", out, errs)
	}
	verifyAll(1, "1 of the 2 required keyring keys signed it", "3 hidden unsigned")

	// Resumable: a second run signs nothing, a dry run lists nothing.
	rc, out, errs = runCmd(signCmd, "--config", cfgFile, "--store", "company", "--key", k.a.Secret, "--passphrase-file", k.passFile, "--all", "--quiet")
	if rc != 0 || !strings.Contains(out, "signed 0 archives (0 B)") || !strings.Contains(out, "3 signed by it already") {
		t.Fatalf("second sign with a: exit %d:\n%s%s", rc, out, errs)
	}

	rc, out, errs = runCmd(signCmd, "--config", cfgFile, "--store", "company", "--key", k.b.Secret, "--all", "--dry-run")
	if rc != 0 || strings.Count(out, "\n") != 4 || !strings.Contains(out, "would sign 3 archives") {
		t.Fatalf("dry run with b: exit %d:\n%s%s", rc, out, errs)
	}
	if got := signoffsBy(t, cfgFile, "company", keys); len(got[keys[0]]) != 1 {
		t.Fatalf("the dry run signed: %v", got)
	}
	rc, out, errs = runCmd(signCmd, "--config", cfgFile, "--store", "company", "--key", k.b.Secret, "--all", "--quiet", "--jobs", "2")
	if rc != 0 || !strings.Contains(out, "signed 3 archives") {
		t.Fatalf("sign with b: exit %d:\n%s%s", rc, out, errs)
	}
	out = verifyAll(0, "3 shown, 0 hidden unsigned, 0 hidden for a bad signature, 0 digest mismatches, 0 failed")
	if rc := run([]string{"verify", "--config", cfgFile, "--store", "company", "--quiet"}); rc != 0 {
		t.Fatalf("sstatefs verify: exit %d", rc)
	}
	// Without --quiet each shown archive is listed with its signers.
	rc, out, _ = runCmd(verifyCmd, "--config", cfgFile, "--store", "company", "--quiet=false", "--list", writeList(t, keys[1]))
	if rc != 0 || !strings.Contains(out, "shown\t"+keys[1]+"\tsigned by ") || !strings.Contains(out, k.a.Fingerprint) || !strings.Contains(out, k.b.Fingerprint) {
		t.Fatalf("verify --list: exit %d:\n%s", rc, out)
	}
	// --require 1 --keyring with b alone: b's sign-offs suffice; a's are
	// not presented (not in that keyring) and do not count against.
	bRing := filepath.Join(t.TempDir(), "b.gpg")
	bPub, _ := os.ReadFile(k.b.Public)
	os.WriteFile(bRing, bPub, 0o644)
	rc, out, _ = runCmd(verifyCmd, "--config", cfgFile, "--store", "company", "--quiet", "--keyring", bRing, "--require", "1")
	if rc != 0 || !strings.Contains(out, "3 shown") {
		t.Fatalf("verify --keyring b --require 1: exit %d:\n%s", rc, out)
	}

	// gpg accepts a sign-off over the object's bytes.
	_, ix := openStore(t, cfgFile, "company")
	objFile := filepath.Join(t.TempDir(), "obj")
	os.WriteFile(objFile, data[keys[0]], 0o644)
	for _, s := range ix.Signoffs(keys[0]) {
		sigFile := filepath.Join(t.TempDir(), "obj.sig")
		os.WriteFile(sigFile, s.Signature, 0o644)
		if out, err := testutil.RunGPG(k.gpg.Home, nil, "--verify", "--status-fd", "1", sigFile, objFile); err != nil || !bytes.Contains(out, []byte("VALIDSIG")) {
			t.Fatalf("gpg --verify of the sign-off by %s: %v\n%s", s.Fingerprint, err, out)
		}
	}

	var show bytes.Buffer
	if err := indexShow(context.Background(), storeConfigNamed(t, cfgFile, "company"), &show); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{
		"signed:   0 packages with a .sig, 3 with sign-offs (0 with both), 0 unsigned",
		"sign-offs: 6 by 2 keys",
		k.a.Fingerprint + " ",
		k.b.Fingerprint + " ",
	} {
		if !strings.Contains(show.String(), w) {
			t.Errorf("index show lacks %q:\n%s", w, show.String())
		}
	}
}

func sortedStrings(s ...string) []string { sort.Strings(s); return s }

// writeList writes a --list file naming keys.
func writeList(t *testing.T, keys ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "list")
	if err := os.WriteFile(p, []byte(strings.Join(keys, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// fileSignStore makes a file:// store of keys (with .siginfo) and its
// index, and a configuration naming it "store" with the keyring of k.
func fileSignStore(t *testing.T, k signKeys, keys []string, accessed map[string]time.Time, require int) (dir, cfgFile string, data map[string][]byte) {
	t.Helper()
	url, data, _ := projectStore(t, keys, accessed)
	dir = strings.TrimPrefix(url, "file://")
	cfgFile = writeConfig(t, `
[[store]]
name = "store"
url = "`+url+`"
keyring = "`+k.keyring+`"
require_signoffs = `+string(rune('0'+require))+`
`)
	return dir, cfgFile, data
}

// TestSignTamperedObject: an archive whose bytes in the store no longer
// match the index is reported and never signed (the others are), and
// verify reports its digest mismatch.
func TestSignTamperedObject(t *testing.T) {
	k := makeSignKeys(t)
	keys := []string{testKey(1, "package"), testKey(2, "package")}
	dir, cfgFile, _ := fileSignStore(t, k, keys, nil, 1)
	if err := os.WriteFile(filepath.Join(dir, keys[1]), []byte("someone else's bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	rc, out, errs := runCmd(signCmd, "--config", cfgFile, "--store", "store", "--key", k.b.Secret, "--all", "--quiet")
	if rc != 1 || !strings.Contains(out, "signed 1 archives") || !strings.Contains(out, "1 digest mismatches") ||
		!strings.Contains(errs, "not signed: the bytes do not match the index digest: "+keys[1]) {
		t.Fatalf("sign: exit %d:\n%s%s", rc, out, errs)
	}
	got := signoffsBy(t, cfgFile, "store", keys)
	if len(got[keys[0]]) != 1 || len(got[keys[1]]) != 0 {
		t.Fatalf("sign-offs: %v", got)
	}
	rc, out, errs = runCmd(verifyCmd, "--config", cfgFile, "--store", "store", "--quiet")
	if rc != 1 || !strings.Contains(out, "digest mismatch\t"+keys[1]+"\tbytes do not match") ||
		strings.Contains(out, keys[0]) || !strings.Contains(out, "1 shown, 0 hidden unsigned, 0 hidden for a bad signature, 1 digest mismatches") {
		t.Fatalf("verify: exit %d:\n%s%s", rc, out, errs)
	}
}

// TestVerifyStoredSig: a gpg-made .sig beside an archive (bitbake's
// SSTATE_SIG_KEY) counts as a signer with the sign-offs; a .sig by a
// keyring key over other bytes hides the archive as a bad signature,
// naming the key; under require_signoffs = 0 it is shown but still
// reported (the mount would present it to bitbake).
func TestVerifyStoredSig(t *testing.T) {
	k := makeSignKeys(t)
	keys := []string{testKey(1, "package"), testKey(2, "package")}
	dir, cfgFile, data := fileSignStore(t, k, keys, nil, 2)
	obj := filepath.Join(dir, keys[0])
	os.WriteFile(filepath.Join(dir, keys[0]+".sig"), k.gpg.DetachSign(t, k.a, obj), 0o644)
	other := filepath.Join(t.TempDir(), "other")
	os.WriteFile(other, append([]byte("x"), data[keys[1]]...), 0o644)
	os.WriteFile(filepath.Join(dir, keys[1]+".sig"), k.gpg.DetachSign(t, k.a, other), 0o644)
	reindex(t, dir)
	rc, out, errs := runCmd(signCmd, "--config", cfgFile, "--store", "store", "--key", k.b.Secret, "--all", "--quiet")
	if rc != 0 || !strings.Contains(out, "signed 2 archives") {
		t.Fatalf("sign: exit %d:\n%s%s", rc, out, errs)
	}
	rc, out, errs = runCmd(verifyCmd, "--config", cfgFile, "--store", "store", "--quiet")
	if rc != 1 || strings.Contains(out, keys[0]) ||
		!strings.Contains(out, "hidden: bad signature\t"+keys[1]+"\tsignature 0 by "+k.a.Fingerprint) ||
		!strings.Contains(out, "1 shown, 0 hidden unsigned, 1 hidden for a bad signature") {
		t.Fatalf("verify: exit %d:\n%s%s", rc, out, errs)
	}
	rc, out, errs = runCmd(verifyCmd, "--config", cfgFile, "--store", "store", "--quiet", "--require", "0")
	if rc != 1 || !strings.Contains(out, "shown, but bad signature\t"+keys[1]) || !strings.Contains(out, "2 shown") {
		t.Fatalf("verify --require 0: exit %d:\n%s%s", rc, out, errs)
	}

	var show bytes.Buffer
	if err := indexShow(context.Background(), storeConfigNamed(t, cfgFile, "store"), &show); err != nil {
		t.Fatal(err)
	}
	if w := "signed:   2 packages with a .sig, 2 with sign-offs (2 with both), 0 unsigned"; !strings.Contains(show.String(), w) {
		t.Errorf("index show lacks %q:\n%s", w, show.String())
	}
}

// reindex builds the index of the file store at dir again (objects added).
func reindex(t *testing.T, dir string) {
	t.Helper()
	s, err := file.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	ix, err := index.Build(context.Background(), s, index.BuildOptions{})
	if err == nil {
		err = index.Save(context.Background(), s, ix)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// storeConfigNamed is the configuration of the store name in cfgFile.
func storeConfigNamed(t *testing.T, cfgFile, name string) config.StoreConfig {
	t.Helper()
	cfg := config.Defaults()
	if err := config.LoadFile(&cfg, cfgFile); err != nil {
		t.Fatal(err)
	}
	i, err := cfg.StoreNamed(name)
	if err != nil {
		t.Fatal(err)
	}
	config.StoreDefaults(&cfg.Stores[i])
	return cfg.Stores[i]
}

// TestSignSelects: --list (a bare file name and a store key) and
// --accessed-since sign only the archives they select; a listed name the
// index does not hold fails the run.
func TestSignSelects(t *testing.T) {
	k := makeSignKeys(t)
	keys := []string{testKey(1, "package"), testKey(2, "package"), testKey(3, "package"), testKey(4, "package")}
	now := time.Now()
	_, cfgFile, _ := fileSignStore(t, k, keys, map[string]time.Time{keys[2]: now.Add(-time.Hour), keys[3]: now.Add(-100 * time.Hour)}, 0)
	list := writeList(t, "# picked", filepath.Base(keys[0]), keys[1]+".siginfo", keys[1])
	rc, out, errs := runCmd(signCmd, "--config", cfgFile, "--store", "store", "--key", k.b.Secret, "--list", list, "--quiet")
	if rc != 1 || !strings.Contains(out, "signed 2 archives") || !strings.Contains(errs, "not an archive of the index: "+keys[1]+".siginfo") {
		t.Fatalf("sign --list: exit %d:\n%s%s", rc, out, errs)
	}
	// A key outside the store's keyring signs, with a warning.
	c := k.gpg.GenKey(t, "Carol <c@example.com>", "ed25519", "")
	rc, out, errs = runCmd(signCmd, "--config", cfgFile, "--store", "store", "--key", c.Secret, "--list", writeList(t, keys[0]), "--quiet")
	if rc != 0 || !strings.Contains(errs, "warning: "+c.Fingerprint+" is not in the keyring of store") {
		t.Fatalf("sign with a key outside the keyring: exit %d:\n%s%s", rc, out, errs)
	}
	rc, out, errs = runCmd(signCmd, "--config", cfgFile, "--store", "store", "--key", k.a.Secret, "--passphrase-file", k.passFile, "--accessed-since", "24h", "--quiet")
	if rc != 0 || !strings.Contains(out, "signed 1 archives") {
		t.Fatalf("sign --accessed-since: exit %d:\n%s%s", rc, out, errs)
	}
	got := signoffsBy(t, cfgFile, "store", keys)
	want := map[string][]string{keys[0]: sortedStrings(k.b.Fingerprint, c.Fingerprint), keys[1]: {k.b.Fingerprint}, keys[2]: {k.a.Fingerprint}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("sign-offs %v, want %v", got, want)
	}
	// verify --list checks only the listed archive.
	rc, out, _ = runCmd(verifyCmd, "--config", cfgFile, "--store", "store", "--list", writeList(t, keys[3]), "--require", "1")
	if rc != 1 || !strings.Contains(out, "verified 1 archives") || !strings.Contains(out, "hidden: unsigned\t"+keys[3]) {
		t.Fatalf("verify --list: exit %d:\n%s", rc, out)
	}
}

// TestSignRefuses: a read-only store, an http mirror, no selection, two
// selections, a wrong passphrase (named as such, never printed).
func TestSignRefuses(t *testing.T) {
	k := makeSignKeys(t)
	keys := []string{testKey(1, "package")}
	url, _, _ := projectStore(t, keys, nil)
	cfgFile := writeConfig(t, `
[[store]]
name = "ro"
url = "`+url+`"
read_only = true

[[store]]
name = "mirror"
url = "https://sstate.example.com/sstate"

[[store]]
name = "rw"
url = "`+url+`"
`)
	wrongPass := filepath.Join(t.TempDir(), "wrong")
	os.WriteFile(wrongPass, []byte("not alice's passphrase\n"), 0o600)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--store", "ro", "--key", k.b.Secret, "--all"}, "store ro (" + url + "): store is read-only (read_only = true)"},
		{[]string{"--store", "mirror", "--key", k.b.Secret, "--all"}, "store mirror (https://sstate.example.com/sstate): store is read-only (an http(s) mirror)"},
		{[]string{"--store", "rw", "--key", k.b.Secret}, "choose the objects"},
		{[]string{"--store", "rw", "--key", k.b.Secret, "--all", "--accessed-since", "1h"}, "select differently"},
		{[]string{"--store", "rw", "--all"}, "--key names the secret key"},
		{[]string{"--store", "rw", "--key", k.a.Secret, "--all"}, "passphrase"},
		{[]string{"--store", "rw", "--key", k.a.Secret, "--passphrase-file", wrongPass, "--all"}, "wrong passphrase"},
	} {
		rc, out, errs := runCmd(signCmd, append([]string{"--config", cfgFile}, c.args...)...)
		if rc != 2 || !strings.Contains(errs, c.want) {
			t.Errorf("sign %q: exit %d, want 2 and %q:\n%s%s", c.args, rc, c.want, out, errs)
		}
		for _, secret := range []string{"not alice's passphrase", k.a.Pass} {
			if strings.Contains(out+errs, secret) {
				t.Errorf("sign %q: a passphrase is in the output:\n%s%s", c.args, out, errs)
			}
		}
	}
	if got := signoffsBy(t, cfgFile, "rw", keys); len(got) != 0 {
		t.Fatalf("a refused run signed: %v", got)
	}
}
