package fs_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// openFDs counts this process's open descriptors (the mount is served by
// this process).
func openFDs(t *testing.T) int {
	t.Helper()
	des, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(des)
}

// TestCreateReleasesDescriptors: files created, written and removed through
// the mount leave no descriptor open in sstatefs, whichever side opens files.
func TestCreateReleasesDescriptors(t *testing.T) {
	for _, daemonOpens := range []bool{false, true} {
		t.Run(fmt.Sprintf("daemonOpens=%v", daemonOpens), func(t *testing.T) {
			m := mount(t, mountOpts{daemonOpens: daemonOpens})
			dir := filepath.Join(m.dir, "aa", "bb")
			if err := os.MkdirAll(dir, 0o775); err != nil {
				t.Fatal(err)
			}
			// One open of an existing file first: in the default mode its
			// ENOSYS answer is what tells the kernel to open files itself
			// from then on (bitbake's tar reopens its temp file with creat).
			// And a first cycle, so that what is set up once (worker
			// goroutines' pipes) is counted before, not as a leak.
			cycle := func(i int) {
				p := filepath.Join(dir, fmt.Sprintf("tmp.%d", i))
				if err := os.WriteFile(p, []byte("some bytes"), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
			}
			cycle(-1)
			if err := os.WriteFile(filepath.Join(dir, "lock"), nil, 0o664); err != nil {
				t.Fatal(err)
			}
			if _, err := os.ReadFile(filepath.Join(dir, "lock")); err != nil {
				t.Fatal(err)
			}
			before := openFDs(t)
			const n = 1000
			for i := range n {
				cycle(i)
			}
			after := openFDs(t)
			t.Logf("%d create/write/remove cycles: %d open descriptors before, %d after", n, before, after)
			// The kernel sends RELEASE in the background, so a few
			// releases may still be on their way: allow for them (at most
			// MaxBackground are in flight), far below one per cycle.
			const slack = 64 + 8
			if after > before+slack {
				t.Errorf("%d create/write/remove cycles: %d open descriptors, %d before (a descriptor kept per file)", n, after, before)
			}
		})
	}
}
