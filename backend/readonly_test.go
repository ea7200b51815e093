package backend_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/file"
	"github.com/sstatefs/sstatefs/backend/storetest"
)

// TestReadOnlyConformance: a file store behind ReadOnly reads as a store
// does and refuses writes as a read-only store must.
func TestReadOnlyConformance(t *testing.T) {
	dirs := map[*testing.T]string{}
	storetest.Run(t, func(t *testing.T) backend.Store {
		dir := t.TempDir()
		s, err := file.New(dir)
		if err != nil {
			t.Fatal(err)
		}
		dirs[t] = dir
		return backend.ReadOnly(s)
	}, storetest.Options{ReadOnly: true, Seed: func(t *testing.T, key string, data []byte) {
		dir, ok := dirs[t]
		if !ok {
			t.Fatal("Seed called outside the test that made the store")
		}
		p := filepath.Join(dir, filepath.FromSlash(key))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}})
}

// TestReadOnlyWritesNeverReachTheStore: writes through ReadOnly fail,
// naming the store and the key, and leave the directory as it was: a new
// object is not created, an existing one neither replaced nor deleted.
func TestReadOnlyWritesNeverReachTheStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	fs, err := file.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	const old = "ab/cd/sstate:old_populate_sysroot.tar.zst"
	if err := fs.Create(ctx, old, strings.NewReader("old"), 3); err != nil {
		t.Fatal(err)
	}
	s := backend.ReadOnly(fs)
	if !backend.IsReadOnly(s) || !backend.IsReadOnly(&backend.Timeout{Store: s}) || backend.IsReadOnly(fs) {
		t.Errorf("IsReadOnly: wrapped %v, under Timeout %v, bare %v", backend.IsReadOnly(s), backend.IsReadOnly(&backend.Timeout{Store: s}), backend.IsReadOnly(fs))
	}
	const fresh = "ab/cd/sstate:new_populate_sysroot.tar.zst"
	for _, w := range []struct {
		op  string
		key string
		do  func() error
	}{
		{"create", fresh, func() error { return s.Create(ctx, fresh, strings.NewReader("new"), 3) }},
		{"put", old, func() error { return s.Put(ctx, old, strings.NewReader("new"), 3) }},
		{"put", ".sstatefs/index/snapshot", func() error { return s.Put(ctx, ".sstatefs/index/snapshot", strings.NewReader("x"), 1) }},
		{"delete", old, func() error { return s.Delete(ctx, old) }},
	} {
		err := w.do()
		if !errors.Is(err, backend.ErrReadOnly) || !strings.Contains(err.Error(), w.op+" "+w.key) || !strings.Contains(err.Error(), fs.Location()) {
			t.Errorf("%s %s: %v, want ErrReadOnly naming the key and %s", w.op, w.key, err, fs.Location())
		}
	}
	if got, err := os.ReadFile(filepath.Join(dir, old)); err != nil || string(got) != "old" {
		t.Errorf("existing object after writes: %q, %v", got, err)
	}
	for _, k := range []string{fresh, ".sstatefs/index/snapshot"} {
		if _, err := os.Lstat(filepath.Join(dir, k)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s reached the store: %v", k, err)
		}
	}
	// reads pass through
	if oi, err := s.Stat(ctx, old); err != nil || oi.Size != 3 {
		t.Errorf("Stat through ReadOnly: %+v, %v", oi, err)
	}
}
