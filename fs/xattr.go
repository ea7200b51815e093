package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
)

// noXattrs answers every extended attribute request with ENOSYS: sstate
// objects carry none, and the kernel, told so once, stops asking for the
// whole mount and answers EOPNOTSUPP itself. Otherwise it asks for
// security.capability before every write(2), a round trip that doubled the
// cost of bitbake's small writes through the mount.
type noXattrs struct{}

var (
	_ = (gofs.NodeGetxattrer)((*noXattrs)(nil))
	_ = (gofs.NodeSetxattrer)((*noXattrs)(nil))
	_ = (gofs.NodeListxattrer)((*noXattrs)(nil))
	_ = (gofs.NodeRemovexattrer)((*noXattrs)(nil))
)

func (noXattrs) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return 0, syscall.ENOSYS
}

func (noXattrs) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return syscall.ENOSYS
}

func (noXattrs) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return 0, syscall.ENOSYS
}

func (noXattrs) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return syscall.ENOSYS
}
