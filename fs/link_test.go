package fs_test

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// A hard link whose source is a store object (it has no local file) fails
// with EXDEV through the kernel: never ENOSYS, which makes bitbake abort,
// and never a silent success.
func TestLinkStoreObject(t *testing.T) {
	storeDir := t.TempDir()
	writeStore(t, storeDir, pkgKey, []byte("object"))
	m := mount(t, mountOpts{storeDir: storeDir})
	err := os.Link(filepath.Join(m.dir, pkgKey), filepath.Join(m.dir, "copy"))
	if !errors.Is(err, syscall.EXDEV) {
		t.Fatalf("link of a store object: %v, want EXDEV", err)
	}
	if _, err := os.Lstat(filepath.Join(m.dir, "copy")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after the refused link: %v, want ENOENT", err)
	}
}
