package fs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/sstatefs/sstatefs/backend"
)

// dirNode is a directory: of the store (from the index or the layout), of
// the overlay, or both.
type dirNode struct {
	gofs.Inode
	noXattrs
	fs *FS
}

var (
	_ = (gofs.NodeLookuper)((*dirNode)(nil))
	_ = (gofs.NodeGetattrer)((*dirNode)(nil))
	_ = (gofs.NodeSetattrer)((*dirNode)(nil))
	_ = (gofs.NodeReaddirer)((*dirNode)(nil))
	_ = (gofs.NodeMkdirer)((*dirNode)(nil))
	_ = (gofs.NodeRmdirer)((*dirNode)(nil))
	_ = (gofs.NodeCreater)((*dirNode)(nil))
	_ = (gofs.NodeUnlinker)((*dirNode)(nil))
	_ = (gofs.NodeRenamer)((*dirNode)(nil))
	_ = (gofs.NodeLinker)((*dirNode)(nil))
	_ = (gofs.NodeSymlinker)((*dirNode)(nil))
	_ = (gofs.NodeStatfser)((*dirNode)(nil))
)

// hidden names are never shown nor created at the root: the store's metadata.
func hidden(key string) bool {
	return key+"/" == backend.MetaPrefix || backend.IsMeta(key)
}

// child finds what is at key: an overlay entry (st set), else a store object
// or directory. It returns ENOENT when there is nothing.
func (d *dirNode) child(ctx context.Context, key string) (gofs.InodeEmbedder, gofs.StableAttr, *fuse.Attr, syscall.Errno) {
	var attr fuse.Attr
	if hidden(key) {
		return nil, gofs.StableAttr{}, nil, syscall.ENOENT
	}
	var st syscall.Stat_t
	if !d.fs.names.has(key) {
		// not in the overlay: no syscall on the hot path of store lookups
	} else if err := syscall.Lstat(d.fs.overlayPath(key), &st); err == nil {
		attr.FromStat(&st)
		if st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
			d.fs.dirAttr(key, &attr)
			return &dirNode{fs: d.fs}, gofs.StableAttr{Mode: fuse.S_IFDIR, Ino: dirIno(key)}, &attr, 0
		}
		return &localNode{fs: d.fs}, gofs.StableAttr{Mode: st.Mode & syscall.S_IFMT, Ino: st.Ino}, &attr, 0
	} else if !errors.Is(err, syscall.ENOENT) {
		return nil, gofs.StableAttr{}, nil, d.fs.errno(ctx, "lookup", key, err)
	}
	if d.fs.whiteouts.has(key) {
		return nil, gofs.StableAttr{}, nil, syscall.ENOENT
	}
	o, err := d.fs.view.Stat(ctx, key)
	if err == nil {
		if d.fs.prefetch == PrefetchOnLookup {
			d.fs.maybePrefetch(o)
		}
		n := &objectNode{fs: d.fs, obj: o}
		n.fill(&attr)
		return n, gofs.StableAttr{Mode: fuse.S_IFREG, Ino: objectIno(key)}, &attr, 0
	}
	if !errors.Is(err, backend.ErrNotExist) {
		// The store could not be asked: the name is unknown, not an error
		// that breaks the caller (bitbake treats it as a missing object).
		d.fs.log.Warn("lookup: store unreachable, answering ENOENT", "object", key, "error", err)
		return nil, gofs.StableAttr{}, nil, syscall.ENOENT
	}
	// an sstate object name is never a directory: skip the directory check
	// on the hot path of absent objects
	if !looksLikeObject(key) && d.fs.view.IsDir(key) {
		d.fs.dirAttr(key, &attr)
		return &dirNode{fs: d.fs}, gofs.StableAttr{Mode: fuse.S_IFDIR, Ino: dirIno(key)}, &attr, 0
	}
	return nil, gofs.StableAttr{}, nil, syscall.ENOENT
}

// exists reports whether anything is at key (overlay or store).
func (d *dirNode) exists(ctx context.Context, key string) bool {
	_, _, _, en := d.child(ctx, key)
	return en == 0
}

func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	key := join(rel(&d.Inode), name)
	node, sa, attr, en := d.child(ctx, key)
	if en != 0 {
		return nil, en
	}
	out.Attr = *attr
	out.Attr.Ino = sa.Ino
	switch node.(type) {
	case *objectNode:
		out.SetEntryTimeout(d.fs.objectTimeout)
		out.SetAttrTimeout(d.fs.objectTimeout)
	case *dirNode:
		// A directory stays one: changes made through the mount are seen
		// by the kernel, and one that the store no longer fills shows
		// empty, which is harmless.
		out.SetEntryTimeout(d.fs.objectTimeout)
	}
	return d.NewInode(ctx, node, sa), 0
}

// dirAttr fills the attributes of a directory: the overlay's if it has the
// directory, else synthetic ones owned by the configured owner.
func (f *FS) dirAttr(key string, out *fuse.Attr) {
	var st syscall.Stat_t
	if (key == "" || f.names.has(key)) && syscall.Stat(f.overlayPath(key), &st) == nil && st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		out.FromStat(&st)
	} else {
		out.Mode = fuse.S_IFDIR | 0o775
		out.Nlink = 2
		out.Uid, out.Gid = f.uid, f.gid
		t := f.start
		out.SetTimes(&t, &t, &t)
	}
	out.Ino = dirIno(key)
}

func (d *dirNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.fs.dirAttr(rel(&d.Inode), &out.Attr)
	return 0
}

func (d *dirNode) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	key := rel(&d.Inode)
	p := d.fs.overlayPath(key)
	// a store directory gets its overlay directory (and the set of overlay
	// names learns it, so that its new attributes show)
	if err := d.fs.makeDirs(key); err != nil {
		return d.fs.errno(ctx, "setattr", key, err)
	}
	if err := setattrPath(p, in); err != nil {
		return d.fs.errno(ctx, "setattr", key, err)
	}
	d.fs.dirAttr(key, &out.Attr)
	return 0
}

func (d *dirNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	key := rel(&d.Inode)
	seen := map[string]bool{}
	var entries []fuse.DirEntry
	if des, err := os.ReadDir(d.fs.overlayPath(key)); err == nil {
		for _, de := range des {
			ck := join(key, de.Name())
			if hidden(ck) {
				continue
			}
			fi, err := de.Info()
			if err != nil {
				continue
			}
			st := fi.Sys().(*syscall.Stat_t)
			ino := st.Ino
			if de.IsDir() {
				ino = dirIno(ck)
			}
			seen[de.Name()] = true
			entries = append(entries, fuse.DirEntry{Name: de.Name(), Mode: st.Mode & syscall.S_IFMT, Ino: ino})
		}
	}
	for _, e := range d.fs.view.ReadDir(key) {
		ck := join(key, e.Name)
		if seen[e.Name] || d.fs.whiteouts.has(ck) {
			continue
		}
		if e.IsDir {
			entries = append(entries, fuse.DirEntry{Name: e.Name, Mode: fuse.S_IFDIR, Ino: dirIno(ck)})
		} else {
			entries = append(entries, fuse.DirEntry{Name: e.Name, Mode: fuse.S_IFREG, Ino: objectIno(ck)})
		}
	}
	return gofs.NewListDirStream(entries), 0
}

// ensureDir makes the overlay directory for key's parent exist, so a file
// can be created in a directory that so far exists only in the store. The
// levels it creates belong to the configured owner, like the store's
// directories they stand for.
func (f *FS) ensureDir(key string) error {
	return f.makeDirs(filepath.Dir(key))
}

// makeDirs makes the overlay directory dir and its parents exist, as
// ensureDir does.
func (f *FS) makeDirs(dir string) error {
	if dir == "." || dir == "" {
		return nil
	}
	var k string
	for _, el := range strings.Split(filepath.ToSlash(dir), "/") {
		k = join(k, el)
		if f.names.has(k) {
			continue // made through the mount already: no syscall
		}
		p := f.overlayPath(k)
		switch err := syscall.Mkdir(p, 0o775); {
		case err == nil:
			f.names.add(k)
			if os.Getuid() == 0 {
				f.chown(p, int(f.uid), int(f.gid))
			}
			// 0775 whatever this process's umask: the group publishes
			if err := syscall.Chmod(p, 0o775); err != nil {
				return err
			}
		case errors.Is(err, syscall.EEXIST):
			f.names.add(k)
		default:
			return err
		}
	}
	return nil
}

// makeEntry creates name in the overlay with create (given its path), unless
// it is hidden or exists already, and gives it to the caller.
func (d *dirNode) makeEntry(ctx context.Context, op, name string, create func(p string) error) (key, p string, en syscall.Errno) {
	key = join(rel(&d.Inode), name)
	if hidden(key) {
		return "", "", syscall.EACCES
	}
	if d.exists(ctx, key) {
		return "", "", syscall.EEXIST
	}
	if isObjectName(key) {
		if en := d.fs.allowPublish(ctx, op, key); en != 0 {
			return "", "", en
		}
	}
	if err := d.fs.ensureDir(key); err != nil {
		return "", "", d.fs.errno(ctx, op, key, err)
	}
	p = d.fs.overlayPath(key)
	if err := create(p); err != nil {
		return "", "", d.fs.errno(ctx, op, key, err)
	}
	d.fs.names.add(key)
	d.fs.chownToCaller(ctx, p)
	return key, p, 0
}

func (d *dirNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	key, _, en := d.makeEntry(ctx, "mkdir", name, func(p string) error {
		if err := syscall.Mkdir(p, mode); err != nil {
			return err
		}
		// the mode the kernel sent, without this process's umask
		return syscall.Chmod(p, mode&0o7777)
	})
	if en != 0 {
		return nil, en
	}
	d.fs.whiteouts.remove(key)
	d.fs.dirAttr(key, &out.Attr)
	return d.NewInode(ctx, &dirNode{fs: d.fs}, gofs.StableAttr{Mode: fuse.S_IFDIR, Ino: dirIno(key)}), 0
}

func (d *dirNode) Rmdir(ctx context.Context, name string) syscall.Errno {
	key := join(rel(&d.Inode), name)
	// Refuse while the directory shows anything (overlay or store).
	for _, e := range d.fs.view.ReadDir(key) {
		if !d.fs.whiteouts.has(join(key, e.Name)) {
			return syscall.ENOTEMPTY
		}
	}
	inStore := d.fs.view.IsDir(key)
	if inStore {
		if en := d.fs.allowPublish(ctx, "rmdir", key); en != 0 {
			return en
		}
	}
	err := syscall.Rmdir(d.fs.overlayPath(key))
	if err == nil {
		d.fs.names.remove(key)
	}
	switch {
	case err == nil || (errors.Is(err, syscall.ENOENT) && inStore):
		if inStore {
			if err := d.fs.whiteouts.add(key); err != nil {
				return d.fs.errno(ctx, "rmdir", key, err)
			}
		}
		return 0
	default:
		return d.fs.errno(ctx, "rmdir", key, err)
	}
}

func (d *dirNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	key := join(rel(&d.Inode), name)
	if hidden(key) {
		return nil, nil, 0, syscall.EACCES
	}
	if flags&syscall.O_EXCL != 0 && d.exists(ctx, key) {
		return nil, nil, 0, syscall.EEXIST
	}
	if isObjectName(key) {
		// bitbake never creates an object's name (it links or renames a
		// temp file onto it), but bytes written there are served as the
		// object all the same
		if en := d.fs.allowPublish(ctx, "create", key); en != 0 {
			return nil, nil, 0, en
		}
	}
	if err := d.fs.ensureDir(key); err != nil {
		return nil, nil, 0, d.fs.errno(ctx, "create", key, err)
	}
	p := d.fs.overlayPath(key)
	// Only a file made here gets the caller and the mode asked for (the
	// kernel applied the caller's umask; this process's must not apply
	// again, or 0664 becomes 0644 and the group cannot publish); one that
	// exists already is opened as it is.
	base := int(flags&^(syscall.O_APPEND|syscall.O_CREAT|syscall.O_EXCL)) | syscall.O_CLOEXEC
	fd, err := syscall.Open(p, base|syscall.O_CREAT|syscall.O_EXCL, mode)
	created := err == nil
	if errors.Is(err, syscall.EEXIST) && flags&syscall.O_EXCL == 0 {
		fd, err = syscall.Open(p, base, 0)
	}
	if err != nil {
		return nil, nil, 0, d.fs.errno(ctx, "create", key, err)
	}
	d.fs.names.add(key)
	if created {
		if err := syscall.Fchmod(fd, mode&0o7777); err != nil {
			syscall.Close(fd)
			return nil, nil, 0, d.fs.errno(ctx, "create", key, err)
		}
		d.fs.chownToCaller(ctx, p)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		syscall.Close(fd)
		return nil, nil, 0, d.fs.errno(ctx, "create", key, err)
	}
	d.fs.whiteouts.remove(key)
	d.fs.view.Forget(key)
	out.Attr.FromStat(&st)
	n := d.NewInode(ctx, &localNode{fs: d.fs}, gofs.StableAttr{Mode: fuse.S_IFREG, Ino: st.Ino})
	if !d.fs.daemonOpens {
		// Once the kernel opens files itself it never sends RELEASE, also
		// not for files it created here: a handle would keep its
		// descriptor (and a removed file's space) until the process ends.
		// Reads and writes go to the overlay file by path instead, as for
		// files the kernel opened.
		syscall.Close(fd)
		return n, nil, 0, 0
	}
	return n, d.fs.overlayFile(fd), 0, 0
}

func (d *dirNode) Unlink(ctx context.Context, name string) syscall.Errno {
	key := join(rel(&d.Inode), name)
	if hidden(key) {
		return syscall.ENOENT
	}
	inStore := false
	if !d.fs.whiteouts.has(key) {
		_, err := d.fs.view.Stat(ctx, key)
		inStore = err == nil
	}
	if inStore || isObjectName(key) {
		// hiding a store object, or removing an object's name
		if en := d.fs.allowPublish(ctx, "unlink", key); en != 0 {
			return en
		}
	}
	removed := false
	err := syscall.Unlink(d.fs.overlayPath(key))
	switch {
	case err == nil:
		d.fs.names.remove(key)
		removed = true
	case errors.Is(err, syscall.ENOENT):
	default:
		return d.fs.errno(ctx, "unlink", key, err)
	}
	if inStore {
		// A store object: hide it here; the store is not changed.
		if err := d.fs.whiteouts.add(key); err != nil {
			return d.fs.errno(ctx, "unlink", key, err)
		}
		removed = true
	}
	if !removed {
		return syscall.ENOENT
	}
	return 0
}

func (d *dirNode) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np, ok := newParent.(*dirNode)
	if !ok {
		return syscall.EXDEV
	}
	from := join(rel(&d.Inode), name)
	to := join(rel(&np.Inode), newName)
	if hidden(from) || hidden(to) {
		return syscall.EACCES
	}
	const renameNoreplace = 1 // RENAME_NOREPLACE
	if flags&^renameNoreplace != 0 {
		return syscall.EINVAL // RENAME_EXCHANGE, RENAME_WHITEOUT
	}
	if flags&renameNoreplace != 0 && d.exists(ctx, to) {
		return syscall.EEXIST
	}
	// Publishing onto an object's name, or moving an object's name away
	// (which hides a store object of that name), is the publishers' alone.
	_, fromErr := d.fs.view.Stat(ctx, from)
	if isObjectName(to) || isObjectName(from) || fromErr == nil {
		if en := d.fs.allowPublish(ctx, "rename", to); en != 0 {
			return en
		}
	}
	src := d.fs.overlayPath(from)
	var st syscall.Stat_t
	if err := syscall.Lstat(src, &st); err != nil {
		if errors.Is(err, syscall.ENOENT) && d.exists(ctx, from) {
			// A store object or directory: it cannot move inside the store
			// from here; EXDEV makes mv copy and unlink instead.
			return syscall.EXDEV
		}
		return d.fs.errno(ctx, "rename", from, err)
	}
	if st.Mode&syscall.S_IFMT == syscall.S_IFDIR && (d.fs.view.IsDir(from) || d.fs.view.IsDir(to)) {
		return syscall.EXDEV
	}
	if err := d.fs.ensureDir(to); err != nil {
		return d.fs.errno(ctx, "rename", to, err)
	}
	dst := d.fs.overlayPath(to)
	if err := syscall.Rename(src, dst); err != nil {
		return d.fs.errno(ctx, "rename", to, err)
	}
	if st.Mode&syscall.S_IFMT == syscall.S_IFREG && d.fs.publishes(to) {
		if err := d.fs.publish(ctx, to, dst); err != nil {
			// Undo, so bitbake does not believe in a publication that
			// would be lost. (A name replaced by the rename is gone.)
			if uerr := syscall.Rename(dst, src); uerr != nil {
				d.fs.log.Error("rename: could not undo after a failed publish", "object", to, "error", uerr)
			}
			return d.fs.errno(ctx, "publish", to, err)
		}
	}
	if st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		d.fs.names.removeTree(from)
		if err := d.fs.names.addTree(d.fs.overlay, to); err != nil {
			d.fs.log.Error("rename: could not list the moved directory", "dir", to, "error", err)
		}
	} else {
		d.fs.names.remove(from)
		d.fs.names.add(to)
	}
	// The source name must not fall back to a store object of that name.
	if fromErr == nil {
		d.fs.whiteouts.add(from)
	}
	d.fs.whiteouts.remove(to)
	d.fs.view.Forget(to)
	return 0
}

func (d *dirNode) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	key := join(rel(&d.Inode), name)
	if hidden(key) {
		return nil, syscall.EACCES
	}
	ln, ok := target.(*localNode)
	if !ok {
		// A store object has no local file to link; refuse clearly (never
		// ENOSYS, which bitbake treats as fatal).
		d.fs.log.Warn("link: source is a store object, refusing with EXDEV", "link", key)
		return nil, syscall.EXDEV
	}
	if d.exists(ctx, key) {
		return nil, syscall.EEXIST
	}
	if isObjectName(key) {
		if en := d.fs.allowPublish(ctx, "link", key); en != 0 {
			return nil, en
		}
	}
	if err := d.fs.ensureDir(key); err != nil {
		return nil, d.fs.errno(ctx, "link", key, err)
	}
	p := d.fs.overlayPath(key)
	if err := syscall.Link(d.fs.overlayPath(rel(&ln.Inode)), p); err != nil {
		return nil, d.fs.errno(ctx, "link", key, err)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		return nil, d.fs.errno(ctx, "link", key, err)
	}
	if d.fs.publishes(key) {
		if err := d.fs.publish(ctx, key, p); err != nil {
			syscall.Unlink(p)
			return nil, d.fs.errno(ctx, "publish", key, err)
		}
	}
	d.fs.names.add(key)
	d.fs.whiteouts.remove(key)
	d.fs.view.Forget(key)
	out.Attr.FromStat(&st)
	return d.NewInode(ctx, &localNode{fs: d.fs}, gofs.StableAttr{Mode: fuse.S_IFREG, Ino: st.Ino}), 0
}

func (d *dirNode) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	key, p, en := d.makeEntry(ctx, "symlink", name, func(p string) error { return syscall.Symlink(target, p) })
	if en != 0 {
		return nil, en
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		return nil, d.fs.errno(ctx, "symlink", key, err)
	}
	d.fs.whiteouts.remove(key)
	out.Attr.FromStat(&st)
	return d.NewInode(ctx, &localNode{fs: d.fs}, gofs.StableAttr{Mode: fuse.S_IFLNK, Ino: st.Ino}), 0
}

// Statfs answers with the figures of the disk the cache lives on.
func (d *dirNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var s syscall.Statfs_t
	if err := syscall.Statfs(d.fs.cacheDir, &s); err != nil {
		return d.fs.errno(ctx, "statfs", "", err)
	}
	out.FromStatfsT(&s)
	return 0
}

// setattrPath applies a setattr request to an overlay path.
func setattrPath(p string, in *fuse.SetAttrIn) error {
	if m, ok := in.GetMode(); ok {
		if err := syscall.Chmod(p, m); err != nil {
			return err
		}
	}
	uid, uok := in.GetUID()
	gid, gok := in.GetGID()
	if uok || gok {
		su, sg := -1, -1
		if uok {
			su = int(uid)
		}
		if gok {
			sg = int(gid)
		}
		if err := syscall.Lchown(p, su, sg); err != nil {
			return err
		}
	}
	if sz, ok := in.GetSize(); ok {
		if err := syscall.Truncate(p, int64(sz)); err != nil {
			return err
		}
	}
	mt, mok := in.GetMTime()
	at, aok := in.GetATime()
	if mok || aok {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if aok {
			ts[0] = unix.NsecToTimespec(at.UnixNano())
		}
		if mok {
			ts[1] = unix.NsecToTimespec(mt.UnixNano())
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	return nil
}

// looksLikeObject is a cheap test for names that can only be objects.
func looksLikeObject(key string) bool {
	i := strings.LastIndexByte(key, '/')
	return strings.HasPrefix(key[i+1:], "sstate:")
}
