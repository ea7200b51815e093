package testutil

import (
	"os"
	"testing"
)

// RequireFUSE skips the test when /dev/fuse cannot be opened, or fails it
// when SSTATEFS_REQUIRE_FUSE=1 (scripts/test sets it where FUSE must work).
func RequireFUSE(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		if os.Getenv("SSTATEFS_REQUIRE_FUSE") == "1" {
			t.Fatalf("FUSE required (SSTATEFS_REQUIRE_FUSE=1) but /dev/fuse is unusable: %v", err)
		}
		t.Skipf("no usable /dev/fuse: %v", err)
	}
	f.Close()
}
