package fs

import (
	"context"
	"errors"
	iofs "io/fs"
	"log/slog"
	"net"
	"syscall"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/cache"
	"github.com/sstatefs/sstatefs/overlay"
)

// errno maps an error to the errno the kernel gets: the one place where that
// happens. go-fuse's own ToErrno does not unwrap %w chains and turns unknown
// errors into ENOSYS, which bitbake treats as fatal on link. Failures that
// are not the caller's doing are logged with the operation and the key.
func (f *FS) errno(ctx context.Context, op, key string, err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var en syscall.Errno
	var oe *net.OpError
	var de *net.DNSError
	switch {
	case err == overlay.ErrNotExist: // the hot path of absent names
		return syscall.ENOENT
	case errors.Is(err, overlay.ErrPermission):
		return syscall.EACCES
	case errors.Is(err, overlay.ErrCrossDevice):
		return syscall.EXDEV
	case errors.Is(err, overlay.ErrNotEmpty):
		return syscall.ENOTEMPTY
	case errors.Is(err, overlay.ErrInvalid):
		return syscall.EINVAL
	case errors.Is(err, backend.ErrNotExist), errors.Is(err, iofs.ErrNotExist), errors.Is(err, overlay.ErrNotExist):
		return syscall.ENOENT
	case errors.Is(err, backend.ErrExist), errors.Is(err, iofs.ErrExist), errors.Is(err, overlay.ErrExist):
		return syscall.EEXIST
	case errors.Is(err, backend.ErrReadOnly):
		return syscall.EROFS
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	case errors.As(err, &oe), errors.As(err, &de):
		// A network failure may carry an errno (ECONNREFUSED): it means
		// the store is unreachable, which is an I/O error to the caller.
		f.log.LogAttrs(ctx, slog.LevelError, "remote operation failed", slog.String("op", op), slog.String("object", key), slog.String("error", err.Error()))
		return syscall.EIO
	case errors.As(err, &en) && localErrno[en]:
		return en
	case errors.Is(err, cache.ErrCorrupt):
		f.log.LogAttrs(ctx, slog.LevelError, "object failed verification", slog.String("op", op), slog.String("object", key), slog.String("error", err.Error()))
		return syscall.EIO
	default:
		f.log.LogAttrs(ctx, slog.LevelError, "remote operation failed", slog.String("op", op), slog.String("object", key), slog.String("error", err.Error()))
		return syscall.EIO
	}
}

// localErrno are the errors of the overlay's local file system that make
// sense to the caller as they are; any other errno becomes EIO (never
// ENOSYS, which makes bitbake abort on link).
var localErrno = map[syscall.Errno]bool{
	syscall.ENOENT: true, syscall.EEXIST: true, syscall.ENOTEMPTY: true, syscall.EACCES: true,
	syscall.EPERM: true, syscall.EROFS: true, syscall.ENOSPC: true, syscall.EDQUOT: true,
	syscall.EISDIR: true, syscall.ENOTDIR: true, syscall.EINVAL: true, syscall.ENAMETOOLONG: true,
	syscall.EXDEV: true, syscall.EBUSY: true, syscall.ELOOP: true, syscall.EMLINK: true,
	syscall.EBADF: true, syscall.EINTR: true, syscall.EFBIG: true, syscall.ETXTBSY: true,
	syscall.EAGAIN: true, syscall.EIO: true,
}
