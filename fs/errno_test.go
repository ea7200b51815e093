package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/cache"
	"github.com/sstatefs/sstatefs/overlay"
)

func TestErrno(t *testing.T) {
	f := &FS{log: testLogger()}
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	for _, tc := range []struct {
		err  error
		want syscall.Errno
	}{
		{nil, 0},
		{fmt.Errorf("k: %w", backend.ErrNotExist), syscall.ENOENT},
		{fmt.Errorf("k: %w", os.ErrNotExist), syscall.ENOENT},
		{fmt.Errorf("k: %w", backend.ErrExist), syscall.EEXIST},
		{fmt.Errorf("k: %w", backend.ErrReadOnly), syscall.EROFS},
		{fmt.Errorf("k: %w", cache.ErrCorrupt), syscall.EIO},
		{fmt.Errorf("get k: %w", refused), syscall.EIO},
		{context.DeadlineExceeded, syscall.EIO},
		{context.Canceled, syscall.EINTR},
		{&os.PathError{Op: "link", Path: "x", Err: syscall.ENOSYS}, syscall.EIO},
		{&os.PathError{Op: "mkdir", Path: "x", Err: syscall.ENOSPC}, syscall.ENOSPC},
		{&os.PathError{Op: "x", Path: "x", Err: syscall.ECONNRESET}, syscall.EIO},
		{errors.New("something else"), syscall.EIO},
		{overlay.ErrNotExist, syscall.ENOENT},
		{fmt.Errorf("unlink k: %w", overlay.ErrNotExist), syscall.ENOENT},
		{fmt.Errorf("link k: %w", overlay.ErrExist), syscall.EEXIST},
		{fmt.Errorf("rmdir k: %w", overlay.ErrNotEmpty), syscall.ENOTEMPTY},
		{fmt.Errorf("link k by uid 1: %w", overlay.ErrPermission), syscall.EACCES},
		{fmt.Errorf("rename k: %w", overlay.ErrCrossDevice), syscall.EXDEV},
		{fmt.Errorf("rename k: flags 0x2: %w", overlay.ErrInvalid), syscall.EINVAL},
		{fmt.Errorf("rename a to b: %w", syscall.ENOTDIR), syscall.ENOTDIR},
	} {
		if got := f.errno(context.Background(), "op", "key", tc.err); got != tc.want {
			t.Errorf("errno(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func testLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
