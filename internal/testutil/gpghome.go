package testutil

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

// GPGHome is a throw-away GNUPGHOME in which tests make keys and signatures
// with the real gpg, as a user and bitbake's SSTATE_SIG_KEY do. Its agent
// is killed and the home removed at cleanup.
type GPGHome struct {
	Home string
}

// HomeKey is a key made by GPG.GenKey, exported to files.
type HomeKey struct {
	Fingerprint string // primary, upper-case hex
	Public      string // armored public key file
	Secret      string // armored secret key file
	Passphrase  string // "" for an unprotected key
	PassFile    string // the passphrase in a file, "" without one
}

// NewGPGHome makes an empty GNUPGHOME for t.
func NewGPGHome(t testing.TB) *GPGHome {
	t.Helper()
	RequireGPG(t)
	// a short path: gpg-agent's socket lives there, and socket paths are
	// limited to about 100 bytes
	home, err := os.MkdirTemp("", "sgpg")
	if err != nil {
		t.Fatal(err)
	}
	g := &GPGHome{Home: home}
	t.Cleanup(func() {
		kill := exec.Command("gpgconf", "--kill", "gpg-agent")
		kill.Env = append(os.Environ(), "GNUPGHOME="+home)
		_ = kill.Run()
		os.RemoveAll(home)
	})
	if err := os.Chmod(home, 0o700); err != nil {
		t.Fatal(err)
	}
	return g
}

// Run runs gpg in batch mode in the home and returns its standard output;
// stdin may be nil.
func (g *GPGHome) Run(t testing.TB, stdin []byte, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command("gpg", append([]string{"--batch", "--no-tty", "--pinentry-mode", "loopback"}, args...)...)
	cmd.Env = append(os.Environ(), "GNUPGHOME="+g.Home)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.Bytes(), &GPGRunError{Args: args, Err: err, Stderr: errOut.String()}
	}
	return out.Bytes(), nil
}

// GPGRunError is a failed gpg run.
type GPGRunError struct {
	Args   []string
	Err    error
	Stderr string
}

func (e *GPGRunError) Error() string {
	return "gpg " + strings.Join(e.Args, " ") + ": " + e.Err.Error() + ": " + e.Stderr
}

// must runs gpg and fails the test on an error.
func (g *GPGHome) must(t testing.TB, stdin []byte, args ...string) []byte {
	t.Helper()
	out, err := g.Run(t, stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// GenKey makes an ed25519 signing key for uid, protected by pass unless
// it is "", and exports it into dir.
func (g *GPGHome) GenKey(t testing.TB, dir, uid, pass string) HomeKey {
	t.Helper()
	g.must(t, nil, "--passphrase", pass, "--quick-gen-key", uid, "ed25519", "sign", "0")
	var k HomeKey
	for _, line := range strings.Split(string(g.must(t, nil, "--with-colons", "--list-keys", uid)), "\n") {
		if f := strings.Split(line, ":"); len(f) > 9 && f[0] == "fpr" {
			k.Fingerprint = f[9]
			break
		}
	}
	if k.Fingerprint == "" {
		t.Fatalf("gpg: no fingerprint listed for %s", uid)
	}
	base := filepath.Join(dir, k.Fingerprint[len(k.Fingerprint)-16:])
	k.Public, k.Secret, k.Passphrase = base+".pub.asc", base+".sec.asc", pass
	if err := os.WriteFile(k.Public, g.must(t, nil, "--armor", "--export", k.Fingerprint), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(k.Secret, g.must(t, nil, "--passphrase", pass, "--armor", "--export-secret-keys", k.Fingerprint), 0o600); err != nil {
		t.Fatal(err)
	}
	if pass != "" {
		k.PassFile = base + ".pass"
		if err := os.WriteFile(k.PassFile, []byte(pass+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return k
}

// DetachSign signs data with k as bitbake's SSTATE_SIG_KEY does (`gpg
// --detach-sign`, binary): the .sig beside an archive.
func (g *GPGHome) DetachSign(t testing.TB, k HomeKey, data []byte) []byte {
	t.Helper()
	in := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(in, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return g.must(t, nil, "--passphrase", k.Passphrase, "--local-user", k.Fingerprint, "--detach-sign", "--output", "-", in)
}

// VerifyStatus runs `gpg --verify --status-fd 1 SIG DATA`, as OE-core's
// gpg_sign.py verify() does, and returns the fingerprints of the GOODSIG
// lines' keys (the primary key's, from VALIDSIG) and the whole status.
func (g *GPGHome) VerifyStatus(t testing.TB, sig, data []byte) (good []string, status string, err error) {
	t.Helper()
	dir := t.TempDir()
	sf, df := filepath.Join(dir, "x.sig"), filepath.Join(dir, "x")
	if err := os.WriteFile(sf, sig, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(df, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := g.Run(t, nil, "--status-fd", "1", "--verify", sf, df)
	if !utf8.Valid(out) {
		// OE-core's verify() decodes the status as UTF-8
		t.Fatalf("gpg --verify status is not UTF-8, bitbake's SSTATE_VERIFY_SIG would fail:\n%q", out)
	}
	goods := 0
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[0] == "[GNUPG:]" && f[1] == "GOODSIG":
			goods++
		case len(f) >= 12 && f[0] == "[GNUPG:]" && f[1] == "VALIDSIG":
			good = append(good, f[11]) // the primary key's fingerprint
		}
	}
	if goods != len(good) {
		t.Fatalf("gpg --verify: %d GOODSIG but %d VALIDSIG lines:\n%s", goods, len(good), out)
	}
	return good, string(out), err
}
