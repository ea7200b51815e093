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
	} {
		if got := f.errno(context.Background(), "op", "key", tc.err); got != tc.want {
			t.Errorf("errno(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func testLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
