package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// DumpSiginfo writes final+".siginfo" the way bitbake's dump_sigtask does
// (compat/bitbake-sstate-syscalls.md): mkstemp in the same directory, a
// zstd child writing the compressed JSON to it, chmod 0664, then rename onto
// the final name.
func DumpSiginfo(t testing.TB, final, json string) {
	t.Helper()
	sig := filepath.Join(filepath.Dir(final), "sigtask.k2Jd9a")
	sf, err := os.OpenFile(sig, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		t.Fatalf("siginfo temp file: %v", err)
	}
	cmd := exec.Command("zstd", "-c")
	cmd.Stdin = strings.NewReader(json)
	cmd.Stdout = sf
	if err := cmd.Run(); err != nil {
		t.Fatalf("zstd: %v", err)
	}
	sf.Close()
	if err := os.Chmod(sig, 0o664); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(sig, final+".siginfo"); err != nil {
		t.Fatalf("rename siginfo: %v", err)
	}
}

// BitbakeDir returns the bitbake checkout named by SSTATEFS_BITBAKE_DIR, for
// tests that judge compatibility by bitbake's own hash equivalence client
// and server, or skips the test when it is not set (CI has no bitbake). A
// set variable that names no bitbake tree, or no python3 to run it with,
// fails the test: it was asked for.
func BitbakeDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("SSTATEFS_BITBAKE_DIR")
	if dir == "" {
		t.Skip("SSTATEFS_BITBAKE_DIR is not set: no real bitbake to test against")
	}
	for _, f := range []string{"bin/bitbake-hashserv", "lib/hashserv/client.py"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("SSTATEFS_BITBAKE_DIR=%s is not a bitbake tree: %v", dir, err)
		}
	}
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatalf("SSTATEFS_BITBAKE_DIR is set but: %v", err)
	}
	return dir
}

// BitbakeEnv is the environment to run bitbake's Python from the checkout
// dir with: its lib on the path, no bytecode written into the checkout, and
// none of bitbake-hashserv's HASHSERVER_ defaults, which would change what
// a test asks for.
func BitbakeEnv(dir string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HASHSERVER_") && !strings.HasPrefix(kv, "PYTHONPATH=") {
			env = append(env, kv)
		}
	}
	return append(env, "PYTHONPATH="+filepath.Join(dir, "lib"), "PYTHONDONTWRITEBYTECODE=1")
}
