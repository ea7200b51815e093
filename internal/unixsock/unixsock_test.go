package unixsock

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestListen(t *testing.T) {
	// the mode must not depend on the umask: with 0, bind makes 0777
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	for _, tc := range []struct {
		owner Owner
		mode  os.FileMode
		gid   uint32
	}{
		{Owner{UID: -1, GID: -1}, 0o600, uint32(os.Getgid())},
		{Owner{UID: os.Getuid(), GID: 4242, Mode: 0o660}, 0o660, 4242},
	} {
		ln, err := Listen(sock, tc.owner)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(sock)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); fi.Mode() != os.ModeSocket|tc.mode || st.Gid != tc.gid {
			t.Errorf("%+v: socket %v gid %d, want %v gid %d", tc.owner, fi.Mode(), st.Gid, tc.mode, tc.gid)
		}
		if a := ln.Addr().String(); a != sock {
			t.Errorf("Addr() = %s, want %s", a, sock)
		}
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if left, _ := filepath.Glob(filepath.Join(dir, ".sock*")); len(left) != 0 {
			t.Errorf("private directory left behind: %v", left)
		}
		ln.Close()
		if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket left after Close: %v", err)
		}
	}

	t.Run("close keeps a successor", func(t *testing.T) {
		ln, err := Listen(sock, Owner{UID: -1, GID: -1})
		if err != nil {
			t.Fatal(err)
		}
		ln2, err := Listen(sock, Owner{UID: -1, GID: -1}) // replaces it
		if err != nil {
			t.Fatal(err)
		}
		defer ln2.Close()
		ln.Close()
		if c, err := net.Dial("unix", sock); err != nil {
			t.Fatalf("the successor's socket went with the first listener: %v", err)
		} else {
			c.Close()
		}
	})
	t.Run("long paths", func(t *testing.T) {
		long := filepath.Join(dir, strings.Repeat("d", MaxPath-len(dir)-4))
		os.Mkdir(long, 0o700)
		// at the limit: the private directory's path is longer still
		p := filepath.Join(long, "s")
		ln, err := Listen(p, Owner{UID: -1, GID: -1})
		if err != nil {
			t.Fatalf("Listen(%d bytes): %v", len(p), err)
		}
		if fi, err := os.Lstat(p); err != nil || fi.Mode() != os.ModeSocket|0o600 {
			t.Errorf("socket at the limit: %v %v", fi, err)
		}
		ln.Close()
		p = filepath.Join(long, strings.Repeat("s", 10))
		if ln, err := Listen(p, Owner{UID: -1, GID: -1}); err == nil {
			ln.Close()
			t.Errorf("Listen(%d bytes) succeeded", len(p))
		} else if !strings.Contains(err.Error(), "limit is 107") {
			t.Errorf("Listen(%d bytes): %v", len(p), err)
		}
	})
}

// TestNoWindow: the socket never exists at its name with another mode: it
// is not created there (bind would, with the umask's mode) but moved there
// ready. Watched with inotify, so that no timing is involved.
func TestNoWindow(t *testing.T) {
	dir := t.TempDir()
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Skip("no inotify:", err)
	}
	defer unix.Close(fd)
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_ATTRIB); err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(filepath.Join(dir, "s.sock"), Owner{UID: -1, GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var events []string
	buf := make([]byte, 64<<10)
	n, _ := unix.Read(fd, buf)
	for off := 0; off+unix.SizeofInotifyEvent <= n; {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
		name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
		off += unix.SizeofInotifyEvent + int(ev.Len)
		if name != "s.sock" {
			continue
		}
		switch {
		case ev.Mask&unix.IN_CREATE != 0:
			events = append(events, "created")
		case ev.Mask&unix.IN_ATTRIB != 0:
			events = append(events, "chmod")
		case ev.Mask&unix.IN_MOVED_TO != 0:
			events = append(events, "moved")
		}
	}
	if strings.Join(events, " ") != "moved" {
		t.Errorf("events on the socket's name: %v, want only its arrival by rename", events)
	}
}
