package signing

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/sstatefs/sstatefs/internal/testutil"
)

// The gpg fixture: one temporary GNUPGHOME for the whole test binary (keys
// take seconds to generate), its agent killed in TestMain.

const (
	passA = "correct horse battery staple"
	// past is the faked time at which the expiring keys are made and used.
	past = "20200101T000000"
)

var pastTime = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)

type gpgKey struct {
	uid     string
	fpr     string // primary fingerprint
	signFpr string // fingerprint of the key gpg signs with (subkey or primary)
	pass    string
}

type gpgFixture struct {
	home  string
	dir   string // exported files
	a     gpgKey // ed25519, passphrase, signs with an ed25519 subkey
	b     gpgKey // rsa3072, no passphrase
	c     gpgKey // ed25519, never in the keyring
	e     gpgKey // ed25519, made in 2020, expired a day later
	o     gpgKey // ed25519, made in 2020, no expiry (for expiring signatures)
	r     gpgKey // ed25519, revoked after it signed
	files map[string]string

	msg     string // a file of bytes to sign
	msgData []byte
	sigE    []byte // by e, in 2020 while it was valid
	sigO    []byte // by o, in 2020, expiring a day later
	sigR    []byte // by r, before r was revoked
}

var (
	fixOnce sync.Once
	fix     *gpgFixture
	fixErr  error
	fixHome string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if fixHome != "" {
		testutil.KillGPGAgent(fixHome)
		os.RemoveAll(fixHome)
	}
	os.Exit(code)
}

// needGPG skips without gpg, unless SSTATEFS_REQUIRE_GPG=1 (CI) makes its
// absence a failure.
func needGPG(t testing.TB) { t.Helper(); testutil.RequireGPG(t) }

func gpgFix(t *testing.T) *gpgFixture {
	t.Helper()
	needGPG(t)
	fixOnce.Do(func() { fix, fixErr = makeFixture() })
	if fixErr != nil {
		t.Fatalf("gpg fixture: %v", fixErr)
	}
	return fix
}

// gpg runs gpg in the fixture's home; stdin may be nil.
func (f *gpgFixture) gpg(stdin []byte, args ...string) ([]byte, error) {
	return runGPG(f.home, stdin, args...)
}

func runGPG(home string, stdin []byte, args ...string) ([]byte, error) {
	return testutil.RunGPG(home, stdin, args...)
}

func makeFixture() (*gpgFixture, error) {
	// A short path: gpg-agent's socket lives in the home and socket paths
	// are limited to about 100 bytes.
	home, err := os.MkdirTemp("", "sgpg")
	if err != nil {
		return nil, err
	}
	fixHome = home
	if err := os.Chmod(home, 0o700); err != nil {
		return nil, err
	}
	f := &gpgFixture{home: home, dir: filepath.Join(home, "out"), files: map[string]string{}}
	if err := os.Mkdir(f.dir, 0o700); err != nil {
		return nil, err
	}
	gen := func(k *gpgKey, uid, algo, expire string, faked bool) error {
		k.uid = uid
		args := []string{"--passphrase", k.pass}
		if faked {
			args = append(args, "--faked-system-time", past)
		}
		args = append(args, "--quick-gen-key", uid, algo, "sign", expire)
		if _, err := f.gpg(nil, args...); err != nil {
			return err
		}
		k.fpr, err = f.fingerprint(uid)
		k.signFpr = k.fpr
		return err
	}
	f.a.pass = passA
	steps := []func() error{
		func() error { return gen(&f.a, "Alice <a@example.com>", "ed25519", "0", false) },
		func() error {
			// A signing subkey: gpg then signs with it, and a signature by
			// it must count as Alice's.
			if _, err := f.gpg(nil, "--passphrase", passA, "--quick-add-key", f.a.fpr, "ed25519", "sign", "0"); err != nil {
				return err
			}
			out, err := f.gpg(nil, "--with-colons", "--list-keys", f.a.fpr)
			if err != nil {
				return err
			}
			var fprs []string
			for _, l := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(l, "fpr:") {
					fprs = append(fprs, strings.Split(l, ":")[9])
				}
			}
			if len(fprs) != 2 {
				return fmt.Errorf("alice has %d keys, want 2", len(fprs))
			}
			f.a.signFpr = fprs[1]
			return nil
		},
		func() error { return gen(&f.b, "Bob <b@example.com>", "rsa3072", "0", false) },
		func() error { return gen(&f.c, "Carol <c@example.com>", "ed25519", "0", false) },
		func() error { return gen(&f.e, "Eve <e@example.com>", "ed25519", "1d", true) },
		func() error { return gen(&f.o, "Olga <o@example.com>", "ed25519", "0", true) },
		func() error { return gen(&f.r, "Rob <r@example.com>", "ed25519", "0", false) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return nil, err
		}
	}
	// Bytes like an object: not text, with a NUL and CRs that a text-mode
	// signature would canonicalise.
	f.msgData = []byte("sstate:zlib-native:x86_64-linux:1.3.1:r0:x86_64:14:\x00\r\n\x7fELF" + strings.Repeat("payload ", 5000))
	f.msg = filepath.Join(f.dir, "object.tar.zst")
	if err := os.WriteFile(f.msg, f.msgData, 0o600); err != nil {
		return nil, err
	}
	// Signatures that need a moment of the keys' past or a key's state
	// before revocation are made once, here.
	if f.sigE, err = f.detachSignErr(f.e, f.msg, "--faked-system-time", "20200101T120000"); err != nil {
		return nil, err
	}
	if f.sigO, err = f.detachSignErr(f.o, f.msg, "--faked-system-time", "20200101T120000", "--default-sig-expire", "1d"); err != nil {
		return nil, err
	}
	if f.sigR, err = f.detachSignErr(f.r, f.msg); err != nil {
		return nil, err
	}
	rev, err := os.ReadFile(filepath.Join(f.home, "openpgp-revocs.d", f.r.fpr+".rev"))
	if err != nil {
		return nil, err
	}
	// gpg escapes the BEGIN line with ":" against accidental import.
	rev = bytes.Replace(rev, []byte(":-----BEGIN"), []byte("-----BEGIN"), 1)
	if _, err := f.gpg(rev, "--import"); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *gpgFixture) fingerprint(uid string) (string, error) {
	out, err := f.gpg(nil, "--with-colons", "--list-keys", uid)
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "fpr:") {
			return strings.Split(l, ":")[9], nil
		}
	}
	return "", fmt.Errorf("no fingerprint for %s", uid)
}

// export writes the key's public (or secret) key to a file, armored or not.
func (f *gpgFixture) export(t *testing.T, k gpgKey, secret, armored bool) string {
	t.Helper()
	name := fmt.Sprintf("%s-%v-%v", k.fpr, secret, armored)
	if p, ok := f.files[name]; ok {
		return p
	}
	args := []string{"--passphrase", k.pass}
	if armored {
		args = append(args, "--armor")
	}
	if secret {
		args = append(args, "--export-secret-keys", k.fpr)
	} else {
		args = append(args, "--export", k.fpr)
	}
	out, err := f.gpg(nil, args...)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(f.dir, name)
	if err := os.WriteFile(p, out, 0o600); err != nil {
		t.Fatal(err)
	}
	f.files[name] = p
	return p
}

// detachSign signs file as OE-core's gpg_sign.py detach_sign does for
// SSTATE_SIG_KEY (binary, passphrase on fd 0, loopback pinentry), plus
// extra arguments.
func (f *gpgFixture) detachSign(t *testing.T, k gpgKey, file string, extra ...string) []byte {
	t.Helper()
	sig, err := f.detachSignErr(k, file, extra...)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

func (f *gpgFixture) detachSignErr(k gpgKey, file string, extra ...string) ([]byte, error) {
	out, err := os.CreateTemp(f.dir, "sig")
	if err != nil {
		return nil, err
	}
	out.Close()
	defer os.Remove(out.Name())
	args := append([]string{"--detach-sign", "--no-permission-warning", "--yes", "--passphrase-fd", "0", "-u", k.fpr}, extra...)
	args = append(args, "-o", out.Name(), file)
	if _, err := f.gpg([]byte(k.pass+"\n"), args...); err != nil {
		return nil, err
	}
	return os.ReadFile(out.Name())
}

// gpgVerify runs `gpg --verify --status-fd 1 sig file` as OE-core's
// gpg_sign.py verify() does and returns the key ids of its GOODSIG lines
// (what SSTATE_VALID_SIGS is matched against) and the primary fingerprints
// of its VALIDSIG lines.
func gpgVerify(t *testing.T, home string, sig []byte, file string) (goodsig, validsig []string, out string) {
	t.Helper()
	sigFile := filepath.Join(t.TempDir(), "x.sig")
	if err := os.WriteFile(sigFile, sig, 0o600); err != nil {
		t.Fatal(err)
	}
	stdout, err := runGPG(home, nil, "--verify", "--no-permission-warning", "--status-fd", "1", sigFile, file)
	if err != nil {
		t.Fatalf("gpg --verify: %v\n%s", err, stdout)
	}
	// verify() decodes the status as UTF-8 (a notation's raw value, such
	// as go-crypto's random salt, makes it raise UnicodeDecodeError)
	if !utf8.Valid(stdout) {
		t.Fatalf("gpg --verify status is not UTF-8, OE-core's verify() would fail:\n%q", stdout)
	}
	for _, l := range strings.Split(string(stdout), "\n") {
		fields := strings.Fields(l)
		if len(fields) >= 3 && fields[0] == "[GNUPG:]" && fields[1] == "GOODSIG" {
			goodsig = append(goodsig, fields[2])
		}
		if len(fields) >= 12 && fields[0] == "[GNUPG:]" && fields[1] == "VALIDSIG" {
			validsig = append(validsig, fields[len(fields)-1])
		}
	}
	return goodsig, validsig, string(stdout)
}
