package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sstatefs/sstatefs/backend/file"
)

// TestExportListBadLines: bad lines of an --list file (a newline-split
// name, "..", an empty element) are reported with their line number and
// quoted content, the good lines are still exported, and the exit status
// says something was wrong.
func TestExportListBadLines(t *testing.T) {
	t.Setenv("SSTATEFS_CONFIG", "")
	storeDir := t.TempDir()
	s, err := file.New(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	good := []string{testKey(1, "package"), testKey(2, "package")}
	for _, k := range good {
		d := []byte("object " + k)
		if err := s.Create(context.Background(), k, bytes.NewReader(d), int64(len(d))); err != nil {
			t.Fatal(err)
		}
	}
	list := filepath.Join(t.TempDir(), "wanted.txt")
	lines := []string{
		"# wanted",
		good[0],
		"ab/../../etc/shadow",
		"ab//cd\tx",
		"/" + good[1],
		"",
	}
	if err := os.WriteFile(list, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}

	keys, bad, err := readList(list)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(keys) != fmt.Sprint(good) {
		t.Errorf("good keys = %q, want %q", keys, good)
	}
	want := []string{
		fmt.Sprintf("%s:3: %q: not a valid object path", list, lines[2]),
		fmt.Sprintf("%s:4: %q: not a valid object path (control character)", list, lines[3]),
	}
	if fmt.Sprint(bad) != fmt.Sprint(want) {
		t.Errorf("bad lines =\n%q\nwant\n%q", bad, want)
	}

	dst := t.TempDir()
	if rc := run([]string{"export", "--quiet", "--store", "file://" + storeDir, "--list", list, dst}); rc != 1 {
		t.Errorf("export with bad lines exit %d, want 1", rc)
	}
	for _, k := range good {
		if b, err := os.ReadFile(filepath.Join(dst, k)); err != nil || string(b) != "object "+k {
			t.Errorf("good line %s not exported: %q, %v", k, b, err)
		}
	}
}
