package fs_test

import (
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/hanwen/go-fuse/v2/posixtest"
)

// posixSkip are the suites of go-fuse's POSIX battery not run here, each
// with the reason; kernelOpensSkip, those skipped only where the kernel
// opens files by itself (the default).
var (
	posixSkip = map[string]string{
		"FcntlFlockLocksFile": "asserts that two F_SETLK locks of one process conflict, which POSIX says they do not (go-fuse's own run skips it)",
		"OpenSymlinkRace":     "a race run for a fixed number of rounds, not a check that can be relied on (go-fuse's own run skips it); in kernel-opens mode it also meets the fstat of a removed file, below",
	}
	kernelOpensSkip = map[string]string{
		"FstatDeleted": "the kernel opened the file itself and keeps no handle here (no round trip per open): fstat of a removed overlay file asks by its name, which is gone (ENOENT); bitbake never does this",
		"NlinkZero":    "as FstatDeleted: fstat after unlink asks by name without a handle",
	}
)

// TestPosix runs go-fuse's POSIX battery against the overlay of a real
// mount (in both open modes): the names created through the mount behave
// as on a local file system.
func TestPosix(t *testing.T) {
	for _, daemonOpens := range []bool{false, true} {
		name := "kernel-opens"
		if daemonOpens {
			name = "daemon-opens"
		}
		t.Run(name, func(t *testing.T) {
			m := mount(t, mountOpts{daemonOpens: daemonOpens})
			var names []string
			for k := range posixtest.All {
				names = append(names, k)
			}
			sort.Strings(names)
			for _, k := range names {
				t.Run(k, func(t *testing.T) {
					if why, ok := posixSkip[k]; ok {
						t.Skip(why)
					}
					if why, ok := kernelOpensSkip[k]; ok && !daemonOpens {
						t.Skip(why)
					}
					dir := filepath.Join(m.dir, "posix-"+k)
					if err := os.Mkdir(dir, 0o755); err != nil {
						t.Fatal(err)
					}
					posixtest.All[k](t, dir)
					if err := os.RemoveAll(dir); err != nil {
						t.Errorf("removing %s: %v", dir, err)
					}
				})
			}
		})
	}
}
