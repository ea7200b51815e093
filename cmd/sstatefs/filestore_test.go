package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestMountFileStoreLinks mounts a file:// store with no index that holds a
// real object and, under sstate object names, links planted by someone who
// can write to the store directory: to a secret file outside and through a
// linked directory. Reading them through the mount fails; the real object
// reads.
func TestMountFileStoreLinks(t *testing.T) {
	storeDir := t.TempDir()
	outside := t.TempDir()
	secret := filepath.Join(outside, "shadow")
	if err := os.WriteFile(secret, []byte("root:$6$secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	put := func(key string, data []byte) {
		t.Helper()
		p := filepath.Join(storeDir, key)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	realKey, linkKey, dirKey := testKey(1, "package"), testKey(2, "package"), testKey(3, "package")
	put(realKey, []byte("real object"))
	os.MkdirAll(filepath.Dir(filepath.Join(storeDir, linkKey)), 0o755)
	if err := os.Symlink(secret, filepath.Join(storeDir, linkKey)); err != nil {
		t.Fatal(err)
	}
	// dirKey's ab/cd directory is a link to a directory outside holding it
	os.WriteFile(filepath.Join(outside, filepath.Base(dirKey)), []byte("root:$6$secret"), 0o644)
	os.MkdirAll(filepath.Dir(filepath.Dir(filepath.Join(storeDir, dirKey))), 0o755)
	if err := os.Symlink(outside, filepath.Dir(filepath.Join(storeDir, dirKey))); err != nil {
		t.Fatal(err)
	}
	m := startTestMount(t, testConfig(t, "file://"+storeDir))
	if got, err := os.ReadFile(filepath.Join(m.Mountpoint(), realKey)); err != nil || string(got) != "real object" {
		t.Fatalf("the real object through the mount: %q, %v", got, err)
	}
	for _, k := range []string{linkKey, dirKey} {
		got, err := os.ReadFile(filepath.Join(m.Mountpoint(), k))
		if err == nil || bytes.Contains(got, []byte("secret")) {
			t.Errorf("read %s through the mount: %q, %v; want an error", k, got, err)
		}
	}
}
