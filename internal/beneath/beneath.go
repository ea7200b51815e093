// Package beneath opens, creates and lists files below a directory without
// ever following a symbolic link: not in the final name, not in a directory
// on the way. A file:// store, the source of `push` and the destination of
// `export` are trees that other users may write into; a link planted there
// (to /etc/shadow, to a directory outside) must not make sstatefs read or
// write outside the tree.
//
// On Linux 5.6+ every path is resolved by openat2 with RESOLVE_BENEATH and
// RESOLVE_NO_SYMLINKS, one system call; on older kernels (ENOSYS) it walks
// the path one directory at a time with O_NOFOLLOW. The directory given as
// the root is the caller's choice and may itself be reached through links.
package beneath

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// ErrSymlink is wrapped by the errors of paths that contain, or name, a
// symbolic link.
var ErrSymlink = errors.New("symbolic link refused")

// noOpenat2 is set once openat2 turned out to be missing (or, in tests, to
// exercise the fallback).
var noOpenat2 atomic.Bool

// OpenRoot opens dir, the root below which the other functions resolve.
func OpenRoot(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	return os.NewFile(uintptr(fd), dir), nil
}

// checkRel refuses absolute paths and "..", which no caller needs.
func checkRel(rel string) error {
	if rel == "" || strings.HasPrefix(rel, "/") {
		return fmt.Errorf("%q: not a relative path", rel)
	}
	for _, el := range strings.Split(rel, "/") {
		if el == ".." {
			return fmt.Errorf("%q: climbs out with ..", rel)
		}
	}
	return nil
}

// mapErr turns the errno of a refused link into ErrSymlink.
func mapErr(op, path string, err error) error {
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
		// ELOOP: a link met with RESOLVE_NO_SYMLINKS or O_NOFOLLOW; EXDEV:
		// RESOLVE_BENEATH refused an escape.
		return &fs.PathError{Op: op, Path: path, Err: ErrSymlink}
	}
	return &fs.PathError{Op: op, Path: path, Err: err}
}

// openat opens rel below root with flags (O_CLOEXEC and O_NOFOLLOW are
// added) and returns the descriptor.
func openat(root *os.File, rel string, flags int, mode uint32) (int, error) {
	if err := checkRel(rel); err != nil {
		return -1, err
	}
	flags |= unix.O_CLOEXEC | unix.O_NOFOLLOW
	if !noOpenat2.Load() {
		for {
			fd, err := unix.Openat2(int(root.Fd()), rel, &unix.OpenHow{
				Flags:   uint64(flags),
				Mode:    uint64(mode),
				Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
			})
			switch {
			case err == unix.EAGAIN || err == unix.EINTR:
				continue // a concurrent rename somewhere in the tree
			case err == unix.ENOSYS:
				noOpenat2.Store(true)
			case err == unix.ENOTDIR && flags&unix.O_DIRECTORY != 0 && finalIsLink(root, rel):
				// O_DIRECTORY|O_NOFOLLOW on a final link says ENOTDIR.
				return -1, unix.ELOOP
			case err != nil:
				return -1, err
			default:
				return fd, nil
			}
			break
		}
	}
	// Fallback: one directory at a time, none of them a link.
	dir := int(root.Fd())
	owned := -1
	defer func() {
		if owned >= 0 {
			unix.Close(owned)
		}
	}()
	els := strings.Split(rel, "/")
	for _, el := range els[:len(els)-1] {
		if el == "." {
			continue
		}
		fd, err := unix.Openat(dir, el, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == unix.ENOTDIR && isLink(dir, el) {
			err = unix.ELOOP
		}
		if err != nil {
			return -1, err
		}
		if owned >= 0 {
			unix.Close(owned)
		}
		owned, dir = fd, fd
	}
	last := els[len(els)-1]
	fd, err := unix.Openat(dir, last, flags, mode)
	if err == unix.ENOTDIR && isLink(dir, last) {
		err = unix.ELOOP
	}
	return fd, err
}

// finalIsLink reports whether the last element of rel is a link (its
// directory reached without one).
func finalIsLink(root *os.File, rel string) bool {
	dir, base := split(rel)
	if dir == "" {
		return isLink(int(root.Fd()), base)
	}
	fd, err := openat(root, dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	return isLink(fd, base)
}

func isLink(dir int, name string) bool {
	var st unix.Stat_t
	return unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK
}

// Open opens rel below root for reading. A symbolic link anywhere in rel is
// an error wrapping ErrSymlink; so is a FIFO or device, which is not even
// opened for reading (that could block): the result is a regular file or
// a directory.
func Open(root *os.File, rel string) (*os.File, error) {
	fd, err := openat(root, rel, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, mapErr("open", rel, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, mapErr("open", rel, err)
	}
	if t := st.Mode & unix.S_IFMT; t != unix.S_IFREG && t != unix.S_IFDIR {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "open", Path: rel, Err: ErrNotRegular}
	}
	// O_NONBLOCK only guarded the open; regular files ignore it, but
	// os.NewFile would hand a non-blocking descriptor to the poller.
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, mapErr("open", rel, err)
	}
	return os.NewFile(uintptr(fd), rel), nil
}

// ErrNotRegular is wrapped by Open's error for a FIFO, socket or device.
var ErrNotRegular = errors.New("not a regular file or directory")

// split returns rel's directory ("" for none) and last element.
func split(rel string) (dir, base string) {
	if i := strings.LastIndexByte(rel, '/'); i >= 0 {
		return rel[:i], rel[i+1:]
	}
	return "", rel
}

// Dir opens the directory rel below root ("" is root itself), with no link
// on the way; with create, missing directories are made with mode perm
// (before the umask), as by os.MkdirAll.
func Dir(root *os.File, rel string, create bool, perm os.FileMode) (*os.File, error) {
	if rel == "" || rel == "." {
		fd, err := unix.Dup(int(root.Fd()))
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: root.Name(), Err: err}
		}
		unix.CloseOnExec(fd)
		return os.NewFile(uintptr(fd), root.Name()), nil
	}
	if !create {
		fd, err := openat(root, rel, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			return nil, mapErr("open", rel, err)
		}
		return os.NewFile(uintptr(fd), rel), nil
	}
	if err := checkRel(rel); err != nil {
		return nil, err
	}
	// One element at a time, each opened without following a link
	// relative to its parent's descriptor: safe on any kernel.
	cur, err := unix.Dup(int(root.Fd()))
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: root.Name(), Err: err}
	}
	for _, el := range strings.Split(rel, "/") {
		if el == "." || el == "" {
			continue
		}
		const flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
		fd, err := unix.Openat(cur, el, flags, 0)
		if err == unix.ENOENT {
			if err = unix.Mkdirat(cur, el, uint32(perm.Perm())); err == nil || err == unix.EEXIST {
				fd, err = unix.Openat(cur, el, flags, 0)
			}
		}
		if (err == unix.ENOTDIR || err == unix.ELOOP) && isLink(cur, el) {
			err = unix.ELOOP
		}
		unix.Close(cur)
		if err != nil {
			return nil, mapErr("mkdir", rel, err)
		}
		cur = fd
	}
	return os.NewFile(uintptr(cur), rel), nil
}

// Lstat describes rel below root without following a link in its last
// element (the result then has fs.ModeSymlink); a link before it is an
// error wrapping ErrSymlink.
func Lstat(root *os.File, rel string) (fs.FileInfo, error) {
	if err := checkRel(rel); err != nil {
		return nil, err
	}
	// The common case in one resolution: a path without links.
	if fd, err := openat(root, rel, unix.O_PATH, 0); err == nil {
		defer unix.Close(fd)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return nil, &fs.PathError{Op: "lstat", Path: rel, Err: err}
		}
		return newInfo(rel, &st), nil
	} else if err != unix.ELOOP && err != unix.EXDEV {
		return nil, mapErr("lstat", rel, err)
	}
	// A link somewhere: describe it if it is the last element.
	dir, base := split(rel)
	d, err := Dir(root, dir, false, 0)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	var st unix.Stat_t
	if err := unix.Fstatat(int(d.Fd()), base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, mapErr("lstat", rel, err)
	}
	return newInfo(rel, &st), nil
}

// statInfo is an fs.FileInfo built from a stat result, as os builds its own.
type statInfo struct {
	name string
	st   unix.Stat_t
}

func newInfo(rel string, st *unix.Stat_t) statInfo {
	_, base := split(rel)
	return statInfo{name: base, st: *st}
}

func (i statInfo) Name() string       { return i.name }
func (i statInfo) Size() int64        { return i.st.Size }
func (i statInfo) ModTime() time.Time { return time.Unix(i.st.Mtim.Unix()) }
func (i statInfo) IsDir() bool        { return i.Mode().IsDir() }
func (i statInfo) Sys() any           { return &i.st }
func (i statInfo) Mode() fs.FileMode {
	m := fs.FileMode(i.st.Mode & 0o777)
	switch i.st.Mode & unix.S_IFMT {
	case unix.S_IFBLK:
		m |= fs.ModeDevice
	case unix.S_IFCHR:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFDIR:
		m |= fs.ModeDir
	case unix.S_IFIFO:
		m |= fs.ModeNamedPipe
	case unix.S_IFLNK:
		m |= fs.ModeSymlink
	case unix.S_IFSOCK:
		m |= fs.ModeSocket
	}
	if i.st.Mode&unix.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if i.st.Mode&unix.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if i.st.Mode&unix.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// Walk calls fn for every file below dir that is not a directory (regular
// files, links, FIFOs: fi is from lstat, so callers tell them apart), with
// its path relative to dir, in lexical order, never descending into a
// link. Files and directories removed during the walk are passed over.
func Walk(dir *os.File, fn func(rel string, fi fs.FileInfo) error) error {
	return walk(dir, "", fn)
}

func walk(dir *os.File, prefix string, fn func(rel string, fi fs.FileInfo) error) error {
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("read directory %s: %w", prefix, err)
	}
	sort.Strings(names)
	for _, name := range names {
		var st unix.Stat_t
		err := unix.Fstatat(int(dir.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if err == unix.ENOENT {
			continue
		}
		if err != nil {
			return &fs.PathError{Op: "lstat", Path: prefix + name, Err: err}
		}
		fi := newInfo(prefix+name, &st)
		switch {
		case !fi.IsDir():
			if err := fn(prefix+name, fi); err != nil {
				return err
			}
		default:
			fd, err := unix.Openat(int(dir.Fd()), name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err == unix.ENOENT {
				continue
			}
			if err != nil {
				return mapErr("open", prefix+name, err)
			}
			sub := os.NewFile(uintptr(fd), prefix+name)
			err = walk(sub, prefix+name+"/", fn)
			sub.Close()
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// CreateTemp creates a new file in dir named prefix+random+suffix,
// exclusively and never through a link, open for writing with mode 0600.
func CreateTemp(dir *os.File, prefix, suffix string) (*os.File, string, error) {
	for try := 0; ; try++ {
		var rnd [6]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return nil, "", err
		}
		name := prefix + hex.EncodeToString(rnd[:]) + suffix
		fd, err := unix.Openat(int(dir.Fd()), name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err == unix.EEXIST && try < 100 {
			continue
		}
		if err != nil {
			return nil, "", &fs.PathError{Op: "create", Path: name, Err: err}
		}
		return os.NewFile(uintptr(fd), name), name, nil
	}
}
