package beneath

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBothResolvers runs the same planted tree through openat2 and through
// the fallback of kernels without it.
func TestBothResolvers(t *testing.T) {
	for _, fallback := range []bool{false, true} {
		name := "openat2"
		if fallback {
			name = "fallback"
		}
		t.Run(name, func(t *testing.T) {
			noOpenat2.Store(fallback)
			t.Cleanup(func() { noOpenat2.Store(false) })
			check(t)
		})
	}
}

func check(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o600))
	must(os.MkdirAll(filepath.Join(dir, "a", "b"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "a", "b", "f"), []byte("ok"), 0o644))
	must(os.Symlink(filepath.Join(outside, "secret"), filepath.Join(dir, "a", "b", "l")))
	must(os.Symlink(outside, filepath.Join(dir, "a", "d")))
	must(os.Symlink("b", filepath.Join(dir, "a", "in")))
	root, err := OpenRoot(dir)
	must(err)
	defer root.Close()

	f, err := Open(root, "a/b/f")
	must(err)
	b, _ := io.ReadAll(f)
	f.Close()
	if string(b) != "ok" {
		t.Errorf("a/b/f = %q", b)
	}
	for _, rel := range []string{"a/b/l", "a/d/secret", "a/in/f", "../" + filepath.Base(dir) + "/a/b/f", "/etc/passwd"} {
		if f, err := Open(root, rel); err == nil {
			f.Close()
			t.Errorf("Open(%s) succeeded", rel)
		}
	}
	for _, rel := range []string{"a/d/secret", "a/in/f"} {
		if _, err := Open(root, rel); !errors.Is(err, ErrSymlink) {
			t.Errorf("Open(%s) = %v, want ErrSymlink", rel, err)
		}
		if _, err := Lstat(root, rel); !errors.Is(err, ErrSymlink) {
			t.Errorf("Lstat(%s) = %v, want ErrSymlink", rel, err)
		}
		if _, err := Dir(root, filepath.Dir(rel)+"/x", true, 0o755); !errors.Is(err, ErrSymlink) {
			t.Errorf("Dir(%s/x, create) = %v, want ErrSymlink", filepath.Dir(rel), err)
		}
	}
	if fi, err := Lstat(root, "a/b/l"); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Errorf("Lstat(a/b/l) = %v, %v; want the link", fi, err)
	}
	d, err := Dir(root, "a/new/deep", true, 0o755)
	must(err)
	d.Close()
	if fi, err := os.Lstat(filepath.Join(dir, "a", "new", "deep")); err != nil || !fi.IsDir() {
		t.Errorf("Dir did not create a/new/deep: %v", err)
	}
	var seen []string
	must(Walk(root, func(rel string, fi fs.FileInfo) error {
		seen = append(seen, rel)
		return nil
	}))
	if strings.Join(seen, ",") != "a/b/f,a/b/l,a/d,a/in" {
		t.Errorf("Walk = %q, want a/b/f and the links, not what they point to", seen)
	}
}
