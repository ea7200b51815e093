package fs_test

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkLookup stats object names through a real mount, the way
// bitbake's setscene check does: each name once (the kernel's entry cache
// never answers), two of three present in the index, one of three absent.
// Names come from compat/ when it is there.
func BenchmarkLookup(b *testing.B) {
	storeDir := b.TempDir()
	names := benchNames(b)
	for i, n := range names {
		if i%3 != 2 {
			writeStore(b, storeDir, n, []byte("x"))
		}
	}
	m := mount(b, mountOpts{storeDir: storeDir})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// a new suffix per round: every stat is a kernel lookup
		n := names[i%len(names)]
		os.Stat(filepath.Join(m.dir, n) + map[bool]string{true: "", false: fmt.Sprintf(".%d", i/len(names))}[i < len(names)])
	}
}

func benchNames(b *testing.B) []string {
	f, err := os.Open("../../shared/compat/core-image-minimal-sstate-names.txt")
	if err != nil {
		var out []string
		for i := range 3000 {
			out = append(out, fmt.Sprintf("%02x/%02x/sstate:x:y:1:r0:z:14:%064x_populate_sysroot.tar.zst", i%256, i/256%256, i))
		}
		return out
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := sc.Text(); l != "" && l[0] != '#' {
			out = append(out, l)
		}
	}
	return out
}
