package testutil

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// RequireGPG skips the test without gpg, or fails it when
// SSTATEFS_REQUIRE_GPG=1 (CI) makes its absence a failure.
func RequireGPG(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("gpg"); err != nil {
		if os.Getenv("SSTATEFS_REQUIRE_GPG") == "1" {
			t.Fatalf("gpg not found and SSTATEFS_REQUIRE_GPG=1: %v", err)
		}
		t.Skip("gpg not installed (set SSTATEFS_REQUIRE_GPG=1 to fail instead)")
	}
}

// RunGPG runs gpg in batch mode with loopback pinentry in the GNUPGHOME
// home; stdin may be nil. The error holds gpg's stderr.
func RunGPG(home string, stdin []byte, args ...string) ([]byte, error) {
	cmd := exec.Command("gpg", append([]string{"--batch", "--no-tty", "--pinentry-mode", "loopback"}, args...)...)
	cmd.Env = append(os.Environ(), "GNUPGHOME="+home)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("gpg %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.Bytes(), nil
}

// KillGPGAgent stops the gpg-agent of the GNUPGHOME home.
func KillGPGAgent(home string) {
	cmd := exec.Command("gpgconf", "--kill", "gpg-agent")
	cmd.Env = append(os.Environ(), "GNUPGHOME="+home)
	_ = cmd.Run()
}

// GPG is a temporary GNUPGHOME for one test.
type GPG struct {
	Home string
}

// NewGPG makes a GNUPGHOME (skipping the test without gpg, see RequireGPG);
// its agent is killed and the home removed at cleanup.
func NewGPG(t testing.TB) *GPG {
	t.Helper()
	RequireGPG(t)
	// A short path: gpg-agent's socket lives in the home and socket paths
	// are limited to about 100 bytes.
	home, err := os.MkdirTemp("", "sgpg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		KillGPGAgent(home)
		os.RemoveAll(home)
	})
	if err := os.Chmod(home, 0o700); err != nil {
		t.Fatal(err)
	}
	return &GPG{Home: home}
}

// GPGKey is a key made by GPG.GenKey.
type GPGKey struct {
	UID, Fingerprint, Pass string
	// Public and Secret are files of the exported key (binary).
	Public, Secret string
}

// GenKey makes a signing key (algo as gpg --quick-gen-key takes it:
// ed25519, rsa3072) protected by pass ("" for none) and exports its public
// and secret parts into files.
func (g *GPG) GenKey(t testing.TB, uid, algo, pass string) GPGKey {
	t.Helper()
	if _, err := RunGPG(g.Home, nil, "--passphrase", pass, "--quick-gen-key", uid, algo, "sign", "0"); err != nil {
		t.Fatal(err)
	}
	out, err := RunGPG(g.Home, nil, "--with-colons", "--list-keys", uid)
	if err != nil {
		t.Fatal(err)
	}
	k := GPGKey{UID: uid, Pass: pass}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "fpr:") {
			k.Fingerprint = strings.Split(l, ":")[9]
			break
		}
	}
	if k.Fingerprint == "" {
		t.Fatalf("no fingerprint for %s", uid)
	}
	dir := filepath.Join(g.Home, "out")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, e := range []struct {
		file *string
		arg  string
	}{{&k.Public, "--export"}, {&k.Secret, "--export-secret-keys"}} {
		b, err := RunGPG(g.Home, nil, "--passphrase", pass, e.arg, k.Fingerprint)
		if err != nil {
			t.Fatal(err)
		}
		*e.file = filepath.Join(dir, k.Fingerprint+e.arg)
		if err := os.WriteFile(*e.file, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return k
}

// DetachSign signs file with k as OE-core's gpg_sign.py detach_sign does
// for SSTATE_SIG_KEY (binary, passphrase on fd 0, loopback pinentry).
func (g *GPG) DetachSign(t testing.TB, k GPGKey, file string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "x.sig")
	if _, err := RunGPG(g.Home, []byte(k.Pass+"\n"), "--detach-sign", "--no-permission-warning", "--yes", "--passphrase-fd", "0", "-u", k.Fingerprint, "-o", out, file); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
