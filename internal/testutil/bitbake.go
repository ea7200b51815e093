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
