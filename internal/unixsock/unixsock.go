// Package unixsock creates unix sockets with the owner and mode they are
// meant to have from the first moment they can be reached. bind(2) creates
// the socket file with the process's umask, and the umask is per process
// (changing it around a bind would race with every other goroutine that
// creates files, the FUSE overlay's included), while chmod after bind
// leaves a window in which any local user may connect. So the socket is
// bound in a fresh directory only its creator can enter, given its mode
// and owner there, then renamed into place.
package unixsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
)

// MaxPath is the longest socket path bind(2) takes: sockaddr_un holds 108
// bytes with the terminating NUL.
const MaxPath = 107

// Owner is the owner and permission bits a socket gets. Mode 0 means 0600.
// UID or GID -1 leaves that id as bind made it (the process's own).
type Owner struct {
	UID, GID int
	Mode     os.FileMode
}

// Listen creates a unix socket at path with o's owner and mode and listens
// on it. An existing file at path is replaced (the caller decides whether
// that is allowed, e.g. only for a stale socket). Closing the listener
// removes the socket, unless another one has replaced it meanwhile.
func Listen(path string, o Owner) (net.Listener, error) {
	if len(path) > MaxPath {
		return nil, fmt.Errorf("socket %s: path is %d bytes, the limit is %d", path, len(path), MaxPath)
	}
	mode := o.Mode.Perm()
	if mode == 0 {
		mode = 0o600
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".sock")
	if err != nil {
		return nil, fmt.Errorf("socket %s: private directory: %w", path, err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	bindAt := tmp
	if len(tmp) > MaxPath {
		// the private directory's name made the path too long for
		// sockaddr_un: reach it through a descriptor instead
		d, err := os.Open(dir)
		if err != nil {
			return nil, fmt.Errorf("socket %s: private directory: %w", path, err)
		}
		defer d.Close()
		bindAt = fmt.Sprintf("/proc/self/fd/%d/s", d.Fd())
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: bindAt, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false) // it is unlinked by its final name
	fail := func(what string, err error) (net.Listener, error) {
		ln.Close()
		return nil, fmt.Errorf("socket %s: %s: %w", path, what, err)
	}
	// chmod before chown: a non-root process may no longer chmod a file
	// it gave away
	if err := os.Chmod(tmp, mode); err != nil {
		return fail("chmod", err)
	}
	if o.UID != -1 || o.GID != -1 {
		if err := os.Lchown(tmp, o.UID, o.GID); err != nil {
			return fail(fmt.Sprintf("chown to %d:%d", o.UID, o.GID), err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail("rename into place", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail("stat", err)
	}
	return &listener{UnixListener: ln, path: path, fi: fi}, nil
}

// listener is a UnixListener bound under another name: it reports and
// removes the final one.
type listener struct {
	*net.UnixListener
	path string
	fi   os.FileInfo
	once sync.Once
}

func (l *listener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *listener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if fi, serr := os.Lstat(l.path); serr == nil && os.SameFile(fi, l.fi) {
			if rerr := os.Remove(l.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
				err = rerr
			}
		}
	})
	return err
}
