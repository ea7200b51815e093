package hashserv

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sstatefs/sstatefs/internal/unixsock"
)

func TestListen(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "hs.sock")

	t.Run("unix forms", func(t *testing.T) {
		for _, addr := range []string{"unix://" + sock, "unix:" + sock} {
			ln, err := Listen(addr)
			if err != nil {
				t.Fatalf("%s: %v", addr, err)
			}
			if ln.Addr().Network() != "unix" || ln.Addr().String() != sock {
				t.Errorf("%s listens on %v", addr, ln.Addr())
			}
			ln.Close()
			if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("socket left behind after Close: %v", err)
			}
		}
	})
	t.Run("owner only", func(t *testing.T) {
		ln, err := Listen("unix://" + sock)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		fi, err := os.Lstat(sock)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode() != os.ModeSocket|0o600 || st.Uid != uint32(os.Getuid()) || st.Gid != uint32(os.Getgid()) {
			t.Errorf("socket %v %d:%d, want owner-only (0600) and this process's", fi.Mode(), st.Uid, st.Gid)
		}
		if left, _ := filepath.Glob(filepath.Join(dir, ".sock*")); len(left) != 0 {
			t.Errorf("private directory left behind: %v", left)
		}
	})
	t.Run("group", func(t *testing.T) {
		ln, err := ListenAs("unix://"+sock, unixsock.Owner{UID: -1, GID: 4242, Mode: 0o660})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		fi, _ := os.Lstat(sock)
		if st := fi.Sys().(*syscall.Stat_t); fi.Mode() != os.ModeSocket|0o660 || st.Gid != 4242 {
			t.Errorf("socket %v gid %d, want 0660 and gid 4242", fi.Mode(), st.Gid)
		}
	})
	t.Run("stale socket is replaced", func(t *testing.T) {
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close() // as a crashed server leaves it
		ln, err = Listen("unix://" + sock)
		if err != nil {
			t.Fatalf("stale socket: %v", err)
		}
		defer ln.Close()
		t.Run("live socket is kept", func(t *testing.T) {
			if _, err := Listen("unix://" + sock); err == nil || !strings.Contains(err.Error(), "in use") {
				t.Fatalf("second Listen on a live socket: %v", err)
			}
		})
	})
	t.Run("not a socket", func(t *testing.T) {
		f := filepath.Join(dir, "file")
		os.WriteFile(f, []byte("keep me"), 0o644)
		if _, err := Listen("unix://" + f); err == nil {
			t.Fatal("Listen over a regular file succeeded")
		}
		if b, _ := os.ReadFile(f); string(b) != "keep me" {
			t.Fatal("regular file was touched")
		}
	})
	for _, addr := range []string{"unix://", "unix://" + strings.Repeat("d", 120), "ws://127.0.0.1:1", "wss://h:1", "nocolon", "127.0.0.1"} {
		if ln, err := Listen(addr); err == nil {
			ln.Close()
			t.Errorf("Listen(%q) succeeded", addr)
		}
	}
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:0", "example.com:8686"} {
		if ln, err := Listen(addr); !errors.Is(err, ErrNotLoopback) {
			if ln != nil {
				ln.Close()
			}
			t.Errorf("Listen(%q): %v, want ErrNotLoopback", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:0", "localhost:0", "127.0.0.2:0", "[::1]:0"} {
		ln, err := Listen(addr)
		if err != nil {
			if addr == "[::1]:0" {
				t.Logf("no IPv6 loopback here: %v", err)
				continue
			}
			t.Errorf("Listen(%q): %v", addr, err)
			continue
		}
		if ip := ln.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() {
			t.Errorf("Listen(%q) listens on %v", addr, ip)
		}
		ln.Close()
	}
}
