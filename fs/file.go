package fs

import (
	"context"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/sstatefs/sstatefs/cache"
	"github.com/sstatefs/sstatefs/view"
)

// objectNode is an object of the store: read-only content, fetched on open.
type objectNode struct {
	gofs.Inode
	noXattrs
	fs  *FS
	obj view.Object

	watching atomic.Bool // a watchDownload goroutine is running

	// Open handles by io mode, until their RELEASE. The kernel refuses (EIO) to open an
	// inode in passthrough mode while it is open in cached mode, and the
	// reverse; and go-fuse gives every open of a node the backing file of
	// a passthrough open it still holds (if the handle offers
	// PassthroughFd), an open for writing included, whose writes would
	// then reach the verified cache file. So opens take the mode the open
	// handles allow (see Open).
	modeMu     sync.Mutex // protects passOpen, cachedOpen, wasCached
	passOpen   int        // handles that may have a backing file
	cachedOpen int        // read handles in cached mode
	// wasCached: a read handle was opened in cached mode (during the
	// download). Further reads stay in that mode: the kernel may still
	// count a file in cached mode for a moment after its RELEASE has been
	// answered (seen under load: a passthrough open right after one
	// failed with EIO), and a passthrough open then fails.
	wasCached bool
}

var (
	_ = (gofs.NodeGetattrer)((*objectNode)(nil))
	_ = (gofs.NodeSetattrer)((*objectNode)(nil))
	_ = (gofs.NodeOpener)((*objectNode)(nil))
	_ = (gofs.NodeReader)((*objectNode)(nil))
	_ = (gofs.NodeWriter)((*objectNode)(nil))
	_ = (gofs.NodeFlusher)((*objectNode)(nil))
	_ = (gofs.NodeFsyncer)((*objectNode)(nil))
)

func (n *objectNode) fill(out *fuse.Attr) {
	out.Mode = fuse.S_IFREG | 0o664
	out.Nlink = 1
	out.Size = uint64(n.obj.Size)
	out.Blocks = (out.Size + 511) / 512
	out.Blksize = 1 << 20
	out.Uid, out.Gid = n.fs.uid, n.fs.gid
	m := n.fs.view.ModTime(n.obj)
	c := n.obj.ModTime
	out.SetTimes(&m, &m, &c)
	out.Ino = objectIno(n.obj.Key)
}

func (n *objectNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.fill(&out.Attr)
	out.SetTimeout(n.fs.objectTimeout)
	return 0
}

// Setattr accepts what bitbake does to objects it uses, utimensat and touch,
// as a record of access; the content never changes.
func (n *objectNode) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if _, ok := in.GetSize(); ok {
		return syscall.EROFS
	}
	_, mok := in.GetMode()
	_, uok := in.GetUID()
	_, gok := in.GetGID()
	if mok || uok || gok {
		return syscall.EPERM
	}
	t, ok := in.GetMTime()
	if !ok {
		t, ok = in.GetATime()
	}
	if ok {
		if t.IsZero() || in.Valid&(fuse.FATTR_MTIME_NOW|fuse.FATTR_ATIME_NOW) != 0 {
			t = time.Now()
		}
		n.fs.view.Touch(n.obj, t)
		if n.fs.prefetch == PrefetchOnTouch {
			n.fs.maybePrefetch(n.obj)
		}
	}
	n.fill(&out.Attr)
	return 0
}

// Open answers ENOSYS unless the mount answers opens itself
// (Options.DaemonOpens): the kernel then opens every file of the mount by
// itself from then on, with no round trip, and keeps the pages it read
// (objects are immutable); reads come to Read with no handle. Otherwise it
// fetches the object into the cache for reading; opens for writing (touch
// opens O_WRONLY|O_CREAT) succeed without a fetch, and writes then fail.
func (n *objectNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if !n.fs.daemonOpens {
		return nil, 0, syscall.ENOSYS
	}
	if flags&syscall.O_TRUNC != 0 {
		return nil, 0, syscall.EROFS
	}
	oh := &objectHandle{node: n}
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		// Writes fail (EROFS), so a writable open must not have the cache
		// file as its backing; while a reader holds the object in
		// passthrough mode it is refused at once (touch then sets the
		// times by name). It is a direct-I/O open, which the kernel keeps
		// out of both io modes: readers opened meanwhile or right after it
		// may still use passthrough.
		n.modeMu.Lock()
		defer n.modeMu.Unlock()
		if n.passOpen > 0 {
			return nil, 0, syscall.EROFS
		}
		if flags&syscall.O_ACCMODE == syscall.O_RDWR {
			h, err := n.fs.view.Open(ctx, n.obj)
			if err != nil {
				return nil, 0, n.fs.errno(ctx, "open", n.obj.Key, err)
			}
			oh.h = h
		}
		oh.direct = true
		return oh, fuse.FOPEN_DIRECT_IO, 0
	}
	h, err := n.fs.view.Open(ctx, n.obj)
	if err != nil {
		return nil, 0, n.fs.errno(ctx, "open", n.obj.Key, err)
	}
	oh.h = h
	var flagsOut uint32
	if h.File() != nil {
		// verified and immutable: the kernel may keep its pages
		flagsOut = fuse.FOPEN_KEEP_CACHE
	}
	// Still downloading: no KEEP_CACHE, so that pages of a download that
	// fails verification never outlive this open.
	n.modeMu.Lock()
	defer n.modeMu.Unlock()
	if n.passOpen > 0 || (!n.wasCached && h.File() != nil && !n.fs.noPassthrough) {
		n.passOpen++
		return &passthroughHandle{oh}, flagsOut, 0
	}
	n.cachedOpen++
	n.wasCached = true
	return oh, flagsOut, 0
}

// Read serves a read made without a handle (the kernel opened the file
// itself): from the verified cache file, or from the download in progress,
// which the first read starts. Each read takes the object anew, so nothing
// stays open between reads and a failed download is retried by the next
// read. Pages the kernel cached from a download that then fails
// verification are dropped (watchDownload).
func (n *objectNode) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	switch oh := fh.(type) {
	case *objectHandle:
		return oh.Read(ctx, dest, off)
	case *passthroughHandle:
		return oh.Read(ctx, dest, off)
	}
	h, err := n.fs.view.Open(ctx, n.obj)
	if err != nil {
		return nil, n.fs.errno(ctx, "read", n.obj.Key, err)
	}
	if h.File() == nil {
		n.watchDownload()
	}
	return n.fs.answer(ctx, n.obj.Key, h, dest, off, true)
}

// answer reads len(dest) bytes at off of an object through h: a splice
// from its cache or download file where the answer fits the pipe, a copy
// where it does not. With release, the answer closes h once it is sent;
// without, h stays the caller's.
func (f *FS) answer(ctx context.Context, key string, h cache.Handle, dest []byte, off int64, release bool) (fuse.ReadResult, syscall.Errno) {
	done := func() {
		if release {
			h.Close()
		}
	}
	file, k, err := h.ReadFile(ctx, off, len(dest))
	if err != nil {
		done()
		return nil, f.errno(ctx, "read", key, err)
	}
	if k > spliceMax() {
		// too large for the pipe a splice goes through (go-fuse would
		// try, fail and log): copy
		defer done()
		got, err := file.ReadAt(dest[:k], off)
		if got < k {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, f.errno(ctx, "read", key, err)
		}
		return sliceResult(dest[:k]), 0
	}
	r := &fileResult{fs: f, key: key, fd: file.Fd(), off: off, size: k}
	if release {
		r.h = h
	}
	return r, 0
}

// spliceMax is the largest read spliced: the pipe's limit less a page for
// the reply header and one that go-fuse keeps free.
var spliceMax = sync.OnceValue(func() int {
	limit := 1 << 20
	if b, err := os.ReadFile("/proc/sys/fs/pipe-max-size"); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && v > 0 {
			limit = v
		}
	}
	return limit - 2*os.Getpagesize()
})

// sliceResult is an answer in memory that go-fuse writes as it is (where
// fuse.ReadResultData would first try, and for a read larger than a splice
// pipe fail and log, to splice it).
type sliceResult []byte

func (r sliceResult) Bytes([]byte) ([]byte, fuse.Status) { return r, fuse.OK }
func (r sliceResult) Size() int                          { return len(r) }
func (r sliceResult) Done()                              {}
func (r sliceResult) Slices() ([][]byte, fuse.Status)    { return [][]byte{r}, fuse.OK }

// fileResult is the answer to a read: size bytes at off of a cache file
// (verified, or of a download whose bytes up to there are), which go-fuse
// splices from the file into the reply, with no copy through this process
// (or copies with Bytes where splicing fails). Done, after the reply,
// releases the handle that keeps the file open, if the answer holds one.
// The pipe a splice goes through holds at most /proc/sys/fs/pipe-max-size
// (1 MiB by default) with the reply's header: larger reads do not come
// here.
type fileResult struct {
	fs   *FS
	key  string // the object's, for errno's log line
	h    cache.Handle
	fd   uintptr
	off  int64
	size int
}

// Seekable lets go-fuse splice from the file.
func (r *fileResult) Seekable() (uintptr, int64, int) { return r.fd, r.off, r.size }

func (r *fileResult) Size() int { return r.size }

func (r *fileResult) Bytes(buf []byte) ([]byte, fuse.Status) {
	if len(buf) < r.size {
		buf = make([]byte, r.size)
	}
	k, err := syscall.Pread(int(r.fd), buf[:r.size], r.off)
	if err != nil {
		// go-fuse asks for Bytes after the operation returned: no ctx left
		return nil, fuse.Status(r.fs.errno(context.Background(), "read", r.key, err))
	}
	if k < r.size {
		// the bytes were there when the read was answered
		return nil, fuse.EIO
	}
	return buf[:k], fuse.OK
}

func (r *fileResult) Done() {
	if r.h != nil {
		r.h.Close()
	}
}

// watchDownload makes sure that, if the object's download in progress
// fails (a corrupt object), the kernel forgets the pages it cached from it:
// with the kernel opening files itself, pages are kept across opens, and
// the bytes read before the digest was checked must not outlive the
// failure. One watcher per node at a time.
func (n *objectNode) watchDownload() {
	if !n.watching.CompareAndSwap(false, true) {
		return
	}
	h, err := n.fs.view.Open(context.Background(), n.obj)
	if err != nil {
		n.watching.Store(false)
		return
	}
	go func() {
		defer n.watching.Store(false)
		defer h.Close()
		if h.Wait() != nil {
			// After the failing reads have been answered (they hold the
			// pages locked), drop every cached page of the object.
			n.NotifyContent(0, 0)
		}
	}()
}

// Write refuses: objects are read-only (an open for writing succeeds so
// that touch works).
func (n *objectNode) Write(ctx context.Context, fh gofs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	return 0, syscall.EROFS
}

// Flush answers ENOSYS: the kernel then stops sending FLUSH on every close
// of this mount (nothing here needs it: objects are read-only, and overlay
// writes go straight to their file), which saves a round trip per object
// bitbake reads.
func (n *objectNode) Flush(ctx context.Context, fh gofs.FileHandle) syscall.Errno {
	return syscall.ENOSYS
}

func (n *objectNode) Fsync(ctx context.Context, fh gofs.FileHandle, flags uint32) syscall.Errno {
	return 0
}

// objectHandle is an open store object in cached mode: reads come from the
// verified cache file or the download in progress (h is nil for a
// write-only open). It offers no PassthroughFd, so that go-fuse never
// gives it a backing file (see objectNode.passOpen).
type objectHandle struct {
	node   *objectNode
	h      cache.Handle
	direct bool // a writable open: direct I/O, in neither io mode
}

var (
	_ = (gofs.FileReader)((*objectHandle)(nil))
	_ = (gofs.FileWriter)((*objectHandle)(nil))
	_ = (gofs.FileReleaser)((*objectHandle)(nil))
	_ = (gofs.FileGetattrer)((*objectHandle)(nil))
	_ = (gofs.FileFlusher)((*objectHandle)(nil))
	_ = (gofs.FileFsyncer)((*objectHandle)(nil))
)

// passthroughHandle is a read-only open of a verified object that the
// kernel may read itself from the cache file (FUSE passthrough, Linux 6.9+
// and root); go-fuse falls back to Read otherwise.
type passthroughHandle struct{ *objectHandle }

var _ = (gofs.FilePassthroughFder)((*passthroughHandle)(nil))

func (h *passthroughHandle) PassthroughFd() (int, bool) {
	f := h.h.File()
	if f == nil {
		return 0, false
	}
	return int(f.Fd()), true
}

func (h *passthroughHandle) Release(ctx context.Context) syscall.Errno {
	h.node.modeMu.Lock()
	h.node.passOpen--
	h.node.modeMu.Unlock()
	h.h.Close()
	return 0
}

func (h *objectHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if h.h == nil {
		return nil, syscall.EBADF
	}
	// The open holds h.h until RELEASE, which the kernel sends only once
	// every answer to a read of this open has arrived: the answer may
	// splice from its file without holding it itself.
	return h.node.fs.answer(ctx, h.node.obj.Key, h.h, dest, off, false)
}

func (h *objectHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	return 0, syscall.EROFS
}

func (h *objectHandle) Release(ctx context.Context) syscall.Errno {
	if !h.direct {
		h.node.modeMu.Lock()
		h.node.cachedOpen--
		h.node.modeMu.Unlock()
	}
	if h.h != nil {
		h.h.Close()
	}
	return 0
}

func (h *objectHandle) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	h.node.fill(&out.Attr)
	return 0
}

// Flush answers ENOSYS, as objectNode.Flush does.
func (h *objectHandle) Flush(ctx context.Context) syscall.Errno               { return syscall.ENOSYS }
func (h *objectHandle) Fsync(ctx context.Context, flags uint32) syscall.Errno { return 0 }

// localNode is a file or symlink of the overlay.
type localNode struct {
	gofs.Inode
	noXattrs
	fs *FS
}

var (
	_ = (gofs.NodeGetattrer)((*localNode)(nil))
	_ = (gofs.NodeSetattrer)((*localNode)(nil))
	_ = (gofs.NodeOpener)((*localNode)(nil))
	_ = (gofs.NodeReadlinker)((*localNode)(nil))
	_ = (gofs.NodeReader)((*localNode)(nil))
	_ = (gofs.NodeWriter)((*localNode)(nil))
	_ = (gofs.NodeFlusher)((*localNode)(nil))
	_ = (gofs.NodeFsyncer)((*localNode)(nil))
	_ = (gofs.NodeAllocater)((*localNode)(nil))
)

func (n *localNode) key() string { return rel(&n.Inode) }

func (n *localNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if g, ok := fh.(gofs.FileGetattrer); ok && fh != nil {
		return g.Getattr(ctx, out)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(n.fs.overlay.Path(n.key()), &st); err != nil {
		return n.fs.errno(ctx, "getattr", n.key(), err)
	}
	out.FromStat(&st)
	return 0
}

func (n *localNode) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if s, ok := fh.(gofs.FileSetattrer); ok && fh != nil {
		return s.Setattr(ctx, in, out)
	}
	key := n.key()
	if err := setattrPath(n.fs.overlay.Path(key), in); err != nil {
		return n.fs.errno(ctx, "setattr", key, err)
	}
	return n.Getattr(ctx, nil, out)
}

// Open answers ENOSYS unless the mount answers opens itself (see
// objectNode.Open); reads and writes then come without a handle and go to
// the overlay file by path, also for files created through the mount
// (see dirNode.Create). With DaemonOpens, an open and a create keep their
// handle until the kernel releases it.
func (n *localNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if !n.fs.daemonOpens {
		return nil, 0, syscall.ENOSYS
	}
	key := n.key()
	fd, err := syscall.Open(n.fs.overlay.Path(key), int(flags&^(syscall.O_APPEND|fuse.FMODE_EXEC))|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, n.fs.errno(ctx, "open", key, err)
	}
	return n.fs.overlayFile(fd), 0, 0
}

// overlayFile is the handle of an overlay file created or opened through
// the mount. When the kernel opens files by itself (no DaemonOpens), the
// handle must not offer FUSE passthrough: the kernel refuses, with EIO, an
// open it made itself of an inode another process holds in passthrough
// mode (a lock file held by one bitbake process and opened by another).
func (f *FS) overlayFile(fd int) gofs.FileHandle {
	lf := gofs.NewLoopbackFile(fd)
	if f.daemonOpens {
		return lf
	}
	return noPassthrough{lf.(*gofs.LoopbackFile)}
}

// noPassthrough is a loopback file without PassthroughFd.
type noPassthrough struct{ *gofs.LoopbackFile }

func (noPassthrough) PassthroughFd() (int, bool) { return 0, false }

// withFile runs op on the overlay file opened with flags, for an operation
// that came without a handle.
func (n *localNode) withFile(ctx context.Context, what string, flags int, op func(fd int) error) syscall.Errno {
	key := n.key()
	fd, err := syscall.Open(n.fs.overlay.Path(key), flags|syscall.O_CLOEXEC, 0)
	if err != nil {
		return n.fs.errno(ctx, what, key, err)
	}
	defer syscall.Close(fd)
	if err := op(fd); err != nil {
		return n.fs.errno(ctx, what, key, err)
	}
	return 0
}

func (n *localNode) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if r, ok := fh.(gofs.FileReader); ok {
		return r.Read(ctx, dest, off)
	}
	var k int
	en := n.withFile(ctx, "read", syscall.O_RDONLY, func(fd int) (err error) {
		k, err = syscall.Pread(fd, dest, off)
		return err
	})
	if en != 0 {
		return nil, en
	}
	return sliceResult(dest[:k]), 0
}

func (n *localNode) Write(ctx context.Context, fh gofs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if w, ok := fh.(gofs.FileWriter); ok {
		return w.Write(ctx, data, off)
	}
	var k int
	en := n.withFile(ctx, "write", syscall.O_WRONLY, func(fd int) (err error) {
		k, err = syscall.Pwrite(fd, data, off)
		return err
	})
	return uint32(k), en
}

// Flush answers ENOSYS (see objectNode.Flush): overlay writes go straight
// to the file.
func (n *localNode) Flush(ctx context.Context, fh gofs.FileHandle) syscall.Errno {
	return syscall.ENOSYS
}

func (n *localNode) Fsync(ctx context.Context, fh gofs.FileHandle, flags uint32) syscall.Errno {
	if s, ok := fh.(gofs.FileFsyncer); ok {
		return s.Fsync(ctx, flags)
	}
	return n.withFile(ctx, "fsync", syscall.O_RDONLY, syscall.Fsync)
}

func (n *localNode) Allocate(ctx context.Context, fh gofs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	if a, ok := fh.(gofs.FileAllocater); ok {
		return a.Allocate(ctx, off, size, mode)
	}
	return n.withFile(ctx, "fallocate", syscall.O_WRONLY, func(fd int) error {
		return syscall.Fallocate(fd, mode, int64(off), int64(size))
	})
}

func (n *localNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	key := n.key()
	t, err := os.Readlink(n.fs.overlay.Path(key))
	if err != nil {
		return nil, n.fs.errno(ctx, "readlink", key, err)
	}
	return []byte(t), 0
}

// maybePrefetch queues a package (not its .siginfo or .sig, which bitbake
// only touches) for a background fetch.
func (f *FS) maybePrefetch(o view.Object) {
	if strings.HasSuffix(o.Key, ".siginfo") || strings.HasSuffix(o.Key, ".sig") {
		return
	}
	f.view.Prefetch(o)
}
