package fs

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"syscall"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/cache"
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
	switch {
	case errors.Is(err, backend.ErrNotExist), errors.Is(err, fs.ErrNotExist):
		return syscall.ENOENT
	case errors.Is(err, backend.ErrExist), errors.Is(err, fs.ErrExist):
		return syscall.EEXIST
	case errors.Is(err, backend.ErrReadOnly):
		return syscall.EROFS
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	case errors.As(err, &en):
		if en == syscall.ENOSYS {
			return syscall.EIO
		}
		return en
	case errors.Is(err, cache.ErrCorrupt):
		f.log.LogAttrs(ctx, slog.LevelError, "object failed verification", slog.String("op", op), slog.String("object", key), slog.String("error", err.Error()))
		return syscall.EIO
	default:
		f.log.LogAttrs(ctx, slog.LevelError, "remote operation failed", slog.String("op", op), slog.String("object", key), slog.String("error", err.Error()))
		return syscall.EIO
	}
}
