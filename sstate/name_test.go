package sstate

import (
	"bufio"
	"errors"
	"os"
	"strings"
	"testing"
)

func TestParseRealNames(t *testing.T) {
	f, err := os.Open("../../shared/compat/core-image-minimal-sstate-names.txt")
	if err != nil {
		t.Skipf("compat names not available: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	n, native := 0, 0
	for sc.Scan() {
		p := sc.Text()
		for _, c := range []string{"", ".siginfo", ".sig"} {
			name, err := Parse(p + c)
			if err != nil {
				t.Fatalf("Parse(%q): %v", p+c, err)
			}
			if got := name.String(); got != p+c {
				t.Fatalf("String() = %q, want %q", got, p+c)
			}
			if name.Companion != c {
				t.Fatalf("%q: companion %q", p+c, name.Companion)
			}
		}
		if name, _ := Parse(p); name.Native != "" {
			native++
		}
		n++
	}
	if n != 2897 {
		t.Fatalf("parsed %d names, want 2897", n)
	}
	// compat/README.md: about 38% of a core-image-minimal build is native
	if native < n*30/100 || native > n*45/100 {
		t.Errorf("%d of %d names native, want about 38%%", native, n)
	}
}

func TestParse(t *testing.T) {
	h := "c369644453e7186778f2fc3e6bd1f8573c07d05e836615ed00790293797515bf"
	good := "debian-12/c3/69/sstate:sstate-probe-native:x86_64-linux:1.0:r0:x86_64:14:" + h + "_populate_sysroot.tar.zst"
	n, err := Parse(good)
	if err != nil {
		t.Fatal(err)
	}
	want := Name{Native: "debian-12", PN: "sstate-probe-native", Arch: "x86_64-linux", PV: "1.0", PR: "r0", PkgArch: "x86_64", Version: "14", Hash: h, Task: "populate_sysroot", Ext: ".tar.zst"}
	if n != want {
		t.Errorf("Parse = %+v, want %+v", n, want)
	}
	short := "79/34/sstate:sstate-probe-native::1.0:r0::14:7934f5033b9e8e2ab30a0af81640942d3e239c9ba8d0350b520fef20a5478762_populate_lic.tar.zst.siginfo"
	if n, err := Parse(short); err != nil || n.Arch != "" || n.Companion != ".siginfo" || n.Task != "populate_lic" {
		t.Errorf("short form: %+v, %v", n, err)
	}
	for _, bad := range []string{
		"",
		"ab/cd",
		"sstate:x",
		"c3/69/notsstate.tar.zst",
		"aa/69/sstate:sstate-probe-native:x86_64-linux:1.0:r0:x86_64:14:" + h + "_populate_sysroot.tar.zst", // wrong dir
		"c3/69/sstate:p:a:1:r0:x:14:" + h + "_task.tar.gz",                                                  // extension
		"c3/69/sstate:p:a:1:r0:x:" + h + "_task.tar.zst",                                                    // 6 fields
		"c3/69/sstate:p:a:1:r0:x:14:C369" + h[4:] + "_task.tar.zst",                                         // uppercase
		"c3/69/sstate:p:a:1:r0:x:14:" + h + ".tar.zst",                                                      // no task
		"tmp/c3/69/sstate:p:a:1:r0:x:14:" + h + "_t.tar.zst",                                                // bad native dir
		"c3/69/sstate:p:a:1:r0:x:14:" + h + "_populate_sysroot.tar.zstABCDEFGH",                             // bitbake temp name
	} {
		if _, err := Parse(bad); !errors.Is(err, ErrNotSstate) {
			t.Errorf("Parse(%q) = %v, want ErrNotSstate", bad, err)
		}
	}
}

// TestControlCharacters: a name with a newline (or any control character)
// parses into nothing, whatever field holds it, so push never uploads it.
func TestControlCharacters(t *testing.T) {
	h := "c369644453e7186778f2fc3e6bd1f8573c07d05e836615ed00790293797515bf"
	for _, bad := range []string{
		"c3/69/sstate:zlib\nINFO fake:a:1:r0:x:14:" + h + "_populate_sysroot.tar.zst",
		"c3/69/sstate:zlib:a:1\t:r0:x:14:" + h + "_populate_sysroot.tar.zst",
		"c3/69/sstate:zlib:a:1:r0\x7f:x:14:" + h + "_populate_sysroot.tar.zst",
		"c3/69/sstate:zlib:a:1:r0:x:14:" + h + "_populate_sysroot\r.tar.zst",
	} {
		if _, err := Parse(bad); !errors.Is(err, ErrControlChar) || !errors.Is(err, ErrNotSstate) {
			t.Errorf("Parse(%q) = %v, want ErrControlChar and ErrNotSstate", bad, err)
		}
		base := bad[strings.LastIndexByte(bad, '/')+1:]
		if _, err := ParseFile(base); !errors.Is(err, ErrControlChar) {
			t.Errorf("ParseFile(%q) = %v, want ErrControlChar", base, err)
		}
	}
}

func TestDirs(t *testing.T) {
	for s, want := range map[string]bool{"debian-12": true, "ubuntu-22.04": true, "universal": true, "universal-4.9": true, "fedora-41": true, "ab": false, "debian": false, "12": false, "Debian-12": false, "x-": false} {
		if got := IsNativeDir(s); got != want {
			t.Errorf("IsNativeDir(%q) = %v", s, got)
		}
	}
	for s, want := range map[string]bool{"ab": true, "0f": true, "AB": false, "abc": false, "g0": false} {
		if got := IsHexDir(s); got != want {
			t.Errorf("IsHexDir(%q) = %v", s, got)
		}
	}
}

func BenchmarkParse(b *testing.B) {
	p := "debian-12/c3/69/sstate:sstate-probe-native:x86_64-linux:1.0:r0:x86_64:14:c369644453e7186778f2fc3e6bd1f8573c07d05e836615ed00790293797515bf_populate_sysroot.tar.zst.siginfo"
	for b.Loop() {
		if _, err := Parse(p); err != nil {
			b.Fatal(err)
		}
	}
}
