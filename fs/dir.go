package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/sstatefs/sstatefs/overlay"
	"github.com/sstatefs/sstatefs/view"
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

func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	key := view.Join(rel(&d.Inode), name)
	e, err := d.fs.overlay.Lookup(ctx, key)
	if err != nil {
		return nil, d.fs.errno(ctx, "lookup", key, err)
	}
	switch e.Kind {
	case overlay.Object:
		if d.fs.prefetch == PrefetchOnLookup {
			d.fs.maybePrefetch(e.Object)
		}
		n := &objectNode{fs: d.fs, obj: e.Object}
		n.fill(&out.Attr)
		out.SetEntryTimeout(d.fs.objectTimeout)
		out.SetAttrTimeout(d.fs.objectTimeout)
		return d.NewInode(ctx, n, gofs.StableAttr{Mode: fuse.S_IFREG, Ino: objectIno(key)}), 0
	case overlay.Dir:
		d.fs.dirAttr(key, &out.Attr)
		// A directory stays one: changes made through the mount are seen
		// by the kernel, and one that the store no longer fills shows
		// empty, which is harmless.
		out.SetEntryTimeout(d.fs.objectTimeout)
		return d.NewInode(ctx, &dirNode{fs: d.fs}, gofs.StableAttr{Mode: fuse.S_IFDIR, Ino: dirIno(key)}), 0
	default:
		out.Attr.FromStat(&e.Stat)
		return d.NewInode(ctx, &localNode{fs: d.fs}, gofs.StableAttr{Mode: e.Stat.Mode & syscall.S_IFMT, Ino: e.Stat.Ino}), 0
	}
}

// dirAttr fills the attributes of a directory: the overlay's if it has the
// directory, else synthetic ones owned by the configured owner.
func (f *FS) dirAttr(key string, out *fuse.Attr) {
	if st, ok := f.overlay.DirStat(key); ok {
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

// Setattr gives a store directory its overlay directory, which then holds
// the new attributes.
func (d *dirNode) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	key := rel(&d.Inode)
	if err := d.fs.overlay.MakeDirs(key); err != nil {
		return d.fs.errno(ctx, "setattr", key, err)
	}
	if err := setattrPath(d.fs.overlay.Path(key), in); err != nil {
		return d.fs.errno(ctx, "setattr", key, err)
	}
	d.fs.dirAttr(key, &out.Attr)
	return 0
}

func (d *dirNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	key := rel(&d.Inode)
	list := d.fs.overlay.ReadDir(key)
	entries := make([]fuse.DirEntry, 0, len(list))
	for _, e := range list {
		ck := view.Join(key, e.Name)
		ino := e.Ino
		switch {
		case e.Mode == syscall.S_IFDIR:
			ino = dirIno(ck)
		case !e.Local:
			ino = objectIno(ck)
		}
		entries = append(entries, fuse.DirEntry{Name: e.Name, Mode: e.Mode, Ino: ino})
	}
	return gofs.NewListDirStream(entries), 0
}

func (d *dirNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	key := view.Join(rel(&d.Inode), name)
	if err := d.fs.overlay.Mkdir(ctx, caller(ctx), key, mode); err != nil {
		return nil, d.fs.errno(ctx, "mkdir", key, err)
	}
	d.fs.dirAttr(key, &out.Attr)
	return d.NewInode(ctx, &dirNode{fs: d.fs}, gofs.StableAttr{Mode: fuse.S_IFDIR, Ino: dirIno(key)}), 0
}

func (d *dirNode) Rmdir(ctx context.Context, name string) syscall.Errno {
	key := view.Join(rel(&d.Inode), name)
	return d.fs.errno(ctx, "rmdir", key, d.fs.overlay.Rmdir(ctx, caller(ctx), key))
}

func (d *dirNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	key := view.Join(rel(&d.Inode), name)
	fd, st, err := d.fs.overlay.Create(ctx, caller(ctx), key, int(flags), mode)
	if err != nil {
		return nil, nil, 0, d.fs.errno(ctx, "create", key, err)
	}
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
	key := view.Join(rel(&d.Inode), name)
	return d.fs.errno(ctx, "unlink", key, d.fs.overlay.Unlink(ctx, caller(ctx), key))
}

func (d *dirNode) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np, ok := newParent.(*dirNode)
	if !ok {
		return syscall.EXDEV
	}
	from, to := view.Join(rel(&d.Inode), name), view.Join(rel(&np.Inode), newName)
	return d.fs.errno(ctx, "rename", to, d.fs.overlay.Rename(ctx, caller(ctx), from, to, flags))
}

func (d *dirNode) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	key := view.Join(rel(&d.Inode), name)
	src := "" // a store object
	if ln, ok := target.(*localNode); ok {
		src = ln.key()
	}
	st, err := d.fs.overlay.Link(ctx, caller(ctx), src, key)
	if err != nil {
		return nil, d.fs.errno(ctx, "link", key, err)
	}
	out.Attr.FromStat(&st)
	return d.NewInode(ctx, &localNode{fs: d.fs}, gofs.StableAttr{Mode: fuse.S_IFREG, Ino: st.Ino}), 0
}

func (d *dirNode) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	key := view.Join(rel(&d.Inode), name)
	st, err := d.fs.overlay.Symlink(ctx, caller(ctx), target, key)
	if err != nil {
		return nil, d.fs.errno(ctx, "symlink", key, err)
	}
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
