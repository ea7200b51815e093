package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) backend.Store {
		s, err := New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, storetest.Options{})
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"file:///srv/sstate", "/srv/sstate", true},
		{"file://localhost/srv/sstate/", "/srv/sstate", true},
		{"file://host/srv", "", false},
		{"file:relative", "", false},
		{"s3://b/p", "", false},
	} {
		got, err := ParseURL(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseURL(%q) = %q, %v", tc.in, got, err)
		}
	}
}

func TestNotReadOnly(t *testing.T) {
	s, _ := New(t.TempDir())
	if backend.IsReadOnly(&backend.Timeout{Store: s}) {
		t.Fatal("file store reported read-only")
	}
}

// TestSymlinksStayOut plants links in a store directory, as a local user
// who can write there would: to a secret file outside, to a directory
// outside, and to an object inside. None of them is an object: Stat and
// Open answer ErrNotExist, List skips them, and no write goes through them.
func TestSymlinksStayOut(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	outside := t.TempDir()
	secret := filepath.Join(outside, "shadow")
	if err := os.WriteFile(secret, []byte("root:secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(outside, "cd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "cd", "obj"), []byte("outside object"), 0o644); err != nil {
		t.Fatal(err)
	}
	const real = "ab/cd/real"
	if err := s.Create(ctx, real, strings.NewReader("real"), 4); err != nil {
		t.Fatal(err)
	}
	link := func(target, key string) {
		t.Helper()
		p := filepath.Join(root, filepath.FromSlash(key))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	link(secret, "ab/cd/to-secret")                 // a file outside
	link(outside, "ef")                             // a directory outside: ef/cd/obj
	link(filepath.Join(root, real), "ab/cd/inside") // an object inside
	link("../../../"+filepath.Base(outside)+"/shadow", "ab/cd/relative")
	if err := os.WriteFile(filepath.Join(root, "ab", "cd", "new\nline"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(root, "ab", "cd", "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, key := range []string{"ab/cd/to-secret", "ef/cd/obj", "ab/cd/inside", "ab/cd/relative", "ab/cd/fifo"} {
		if _, err := s.Stat(ctx, key); !errors.Is(err, backend.ErrNotExist) {
			t.Errorf("Stat(%s) = %v, want ErrNotExist", key, err)
		}
		rc, err := s.Open(ctx, key, 0, -1)
		if err == nil {
			b, _ := io.ReadAll(rc)
			rc.Close()
			t.Errorf("Open(%s) read %q", key, b)
		} else if !errors.Is(err, backend.ErrNotExist) {
			t.Errorf("Open(%s) = %v, want ErrNotExist", key, err)
		}
	}
	if got, err := readKey(s, real); err != nil || got != "real" {
		t.Errorf("the real object: %q, %v", got, err)
	}

	var listed []string
	for _, prefix := range []string{"", "ef/", "ef/cd/", "ab/cd/"} {
		if err := s.List(ctx, prefix, func(oi backend.ObjectInfo) error {
			listed = append(listed, oi.Key)
			return nil
		}); err != nil {
			t.Errorf("List(%q): %v", prefix, err)
		}
	}
	if want := []string{real, real}; fmt.Sprint(listed) != fmt.Sprint(want) {
		t.Errorf("List = %q, want %q", listed, want)
	}

	// Writes: through the linked directory is refused, over a link
	// leaves its target alone.
	if err := s.Create(ctx, "ef/cd/new", strings.NewReader("x"), 1); err == nil {
		t.Error("Create through a linked directory succeeded")
	}
	if err := s.Put(ctx, "ef/cd/new", strings.NewReader("x"), 1); err == nil {
		t.Error("Put through a linked directory succeeded")
	}
	if err := s.Delete(ctx, "ef/cd/obj"); err == nil {
		t.Error("Delete through a linked directory succeeded")
	}
	if _, err := os.Stat(filepath.Join(outside, "cd", "new")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a write landed outside the store: %v", err)
	}
	if _, err := os.Stat(filepath.Join(outside, "cd", "obj")); err != nil {
		t.Errorf("a delete went outside the store: %v", err)
	}
	if err := s.Create(ctx, "ab/cd/to-secret", strings.NewReader("evil"), 4); !errors.Is(err, backend.ErrExist) {
		t.Errorf("Create over a link = %v, want ErrExist", err)
	}
	if err := s.Put(ctx, "ab/cd/to-secret", strings.NewReader("evil"), 4); err != nil {
		t.Errorf("Put over a link: %v", err)
	}
	if b, _ := os.ReadFile(secret); string(b) != "root:secret" {
		t.Errorf("the link's target was written: %q", b)
	}
	if got, err := readKey(s, "ab/cd/to-secret"); err != nil || got != "evil" {
		t.Errorf("Put replaced the link with %q, %v", got, err)
	}
}

func readKey(s backend.Store, key string) (string, error) {
	rc, err := s.Open(context.Background(), key, 0, -1)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	return string(b), err
}
