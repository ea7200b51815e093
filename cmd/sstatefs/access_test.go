package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/internal/mount"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

// shAs runs a shell script as uid:gid (umask 002, as bitbake) and returns
// its combined output and error.
func shAs(uid, gid uint32, script string) (string, error) {
	cmd := exec.Command("sh", "-c", "umask 002; set -e; "+script)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestMountOwnerPublishes: with --allow-other over a mountpoint owned by the
// build user (here nobody), that user publishes through the mount and the
// object reaches the store; another user (uid 65533) gets EACCES, even in
// a directory the build user made world-writable, and nothing of theirs
// reaches the store.
func TestMountOwnerPublishes(t *testing.T) {
	testutil.RequireFUSE(t)
	storeDir := t.TempDir()
	cfg := testConfig(t, "file://"+storeDir)
	cfg.Mount.AllowOther = true
	mp := t.TempDir()
	for _, d := range []string{filepath.Dir(mp), mp} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(mp, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	m, err := mount.Start(context.Background(), cfg, mp, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	key := testKey(1, "populate_sysroot")
	evil := testKey(1, "deploy_source_date_epoch") // another object of the same directory
	dir := filepath.Join(mp, filepath.Dir(key))
	q := func(s string) string { return "'" + s + "'" }
	final := filepath.Join(mp, key)
	// bitbake's publish: mkdir levels, temp file, chmod, link, unlink
	if out, err := shAs(65534, 65534, "mkdir -p "+q(dir)+"; printf 'package bytes' > "+q(final+".tmp")+
		"; chmod 664 "+q(final+".tmp")+"; ln "+q(final+".tmp")+" "+q(final)+"; rm "+q(final+".tmp")+
		"; chmod 777 "+q(dir)); err != nil {
		t.Fatalf("the mount owner publishing: %v\n%s", err, out)
	}
	for _, script := range []string{
		"mkdir " + q(mp+"/x"),
		"printf attacker > " + q(dir+"/t") + "; ln " + q(dir+"/t") + " " + q(filepath.Join(dir, filepath.Base(evil))),
		"printf attacker > " + q(dir+"/t2") + "; mv " + q(dir+"/t2") + " " + q(final+".siginfo"),
		"printf attacker > " + q(final),
	} {
		out, err := shAs(65533, 65533, script)
		if err == nil || !strings.Contains(out, "Permission denied") {
			t.Errorf("as uid 65533: %s: %v %q, want Permission denied", script, err, out)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if left := m.Queue().Drain(ctx); len(left) != 0 {
		t.Fatalf("not uploaded: %+v", left)
	}
	got := storeObjects(t, cfg)
	if len(got) != 1 || !bytes.Equal(got[key], []byte("package bytes")) {
		keys := make([]string, 0, len(got))
		for k := range got {
			keys = append(keys, k)
		}
		t.Errorf("store holds %q, want only %s with the owner's bytes", keys, key)
	}
}
