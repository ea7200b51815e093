package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend/file"
	"github.com/sstatefs/sstatefs/index"
)

func TestFarmFlags(t *testing.T) {
	o, err := parseFlags([]string{"--farm", "--quick", "--buildview"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !o.Farm || !o.BuildView || !slices.Equal(o.FarmWriters, []int{1, 10, 50}) || o.FarmObjects != 200 || o.FarmSize != 8<<20 ||
		!slices.Equal(o.BuildViewRTTs, []time.Duration{10 * time.Millisecond, 100 * time.Millisecond}) {
		t.Errorf("--farm --quick: %+v", o)
	}
	o, err = parseFlags([]string{"--farm", "--farm-writers", "2,4", "--farm-size", "1MiB", "--buildview-rtt", "50ms"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.FarmWriters, []int{2, 4}) || o.FarmSize != 1<<20 || o.FarmObjects != 2897 || !slices.Equal(o.BuildViewRTTs, []time.Duration{50 * time.Millisecond}) {
		t.Errorf("explicit farm flags: %+v", o)
	}
	if _, err := parseFlags([]string{"--farm-writers", "0", "--buildview-rtt", "soon"}, io.Discard); err == nil ||
		!strings.Contains(err.Error(), "--farm-writers") || !strings.Contains(err.Error(), "--buildview-rtt") {
		t.Errorf("want both problems reported, got %v", err)
	}
}

// TestFarmBuilds: 80% of every build is the same objects, the rest its
// own; on disk the shared ones are one file linked into every build.
func TestFarmBuilds(t *testing.T) {
	builds, err := farmBuilds(RealNames(), 3, 20, 1<<20, 0.8, 5)
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, b := range builds {
		if len(b) != 20 {
			t.Fatalf("a build of %d objects, want 20", len(b))
		}
		for _, o := range b {
			count[o.Key]++
		}
	}
	shared := 0
	for _, n := range count {
		if n == 3 {
			shared++
		} else if n != 1 {
			t.Errorf("an object in %d of 3 builds", n)
		}
	}
	if shared != 16 || len(count) != 16+3*4 {
		t.Errorf("%d shared objects of %d distinct, want 16 of 28", shared, len(count))
	}
	work := t.TempDir()
	fbs, err := materializeBuilds(work, builds, 5)
	if err != nil {
		t.Fatal(err)
	}
	for _, fb := range fbs {
		for _, o := range fb.objs {
			data, err := os.ReadFile(filepath.Join(fb.dir, o.Key))
			if err != nil {
				t.Fatal(err)
			}
			if want, crc := ContentBytes(5, o.Key, o.Size); !bytes.Equal(data, want) || crc != o.CRC {
				t.Errorf("%s in %s: wrong content or CRC", o.Key, fb.dir)
			}
		}
	}
	a, _ := os.Stat(filepath.Join(fbs[1].dir, builds[1][0].Key))
	b, _ := os.Stat(filepath.Join(fbs[2].dir, builds[2][0].Key))
	if !os.SameFile(a, b) {
		t.Error("a shared object is not one file linked into each build")
	}
}

// TestCheckFarmIndex: the check passes on exactly the published objects
// and fails on one missing, one not published or a wrong size.
func TestCheckFarmIndex(t *testing.T) {
	ctx := context.Background()
	s, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	objs := []index.Object{{Key: "ab/cd/sstate:a:x:1:r0:x:14:abcd_populate_sysroot.tar.zst", Size: 10},
		{Key: "ab/cd/sstate:a:x:1:r0:x:14:abcd_populate_sysroot.tar.zst.siginfo", Size: 3}}
	if err := index.Save(ctx, s, index.New(objs, time.Now())); err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{objs[0].Key: 10, objs[1].Key: 3}
	if n, err := checkFarmIndex(ctx, s, want); err != nil || n != 2 {
		t.Fatalf("exact index: %d, %v", n, err)
	}
	for name, w := range map[string]map[string]int64{
		"missing":       {objs[0].Key: 10, objs[1].Key: 3, "ab/cd/sstate:b:x:1:r0:x:14:abcd_package.tar.zst": 1},
		"not published": {objs[0].Key: 10},
		"wrong size":    {objs[0].Key: 11, objs[1].Key: 3},
	} {
		if _, err := checkFarmIndex(ctx, s, w); !errors.Is(err, errIndexMismatch) {
			t.Errorf("%s: got %v, want errIndexMismatch", name, err)
		}
	}
}

// TestTinyFarmAndBuildView runs both scenarios at a tiny scale on
// versitygw and real mounts, and checks every row got a figure.
func TestTinyFarmAndBuildView(t *testing.T) {
	needVersitygw(t)
	if err := fuseUsable(); err != nil {
		if os.Getenv("SSTATEFS_REQUIRE_FUSE") == "1" {
			t.Fatalf("FUSE required (SSTATEFS_REQUIRE_FUSE=1): %v", err)
		}
		t.Skip(err)
	}
	work := t.TempDir()
	o := Options{
		RTT: 2 * time.Millisecond, Size: 2 << 20, Runs: 1, Workdir: work, Names: 12, Absent: 1.0 / 3, Seed: 3,
		Farm: true, FarmWriters: []int{1, 3}, FarmObjects: 10, FarmSize: 1 << 20, FarmJobs: 2, FarmRestore: 4,
		FarmIndexObjects: 2000, FarmAccess: 5000,
		BuildView: true, BuildViewRTTs: []time.Duration{2 * time.Millisecond}, BuildViewJobs: 2,
	}
	cl := &Cleanup{}
	t.Cleanup(cl.Run)
	var out bytes.Buffer
	b := &Bench{Opts: o, Log: newLogger(testLog{t}), Cleanup: cl, Stdout: &out}
	if code := b.runScenarios(context.Background()); code != 0 {
		t.Fatalf("exit code %d:\n%s", code, out.String())
	}
	md := out.String()
	t.Log("\n" + md)
	for _, want := range []string{"| 2ms | sstatefs |", "| 2ms | SSTATE_MIRRORS (HTTP) |", "| W = 1 | W = 3 |",
		"| index check: published files found exactly once |", "Peak memory of a mount", "| publish (a push of the build) |"} {
		if !strings.Contains(md, want) {
			t.Errorf("the report lacks %q", want)
		}
	}
	if strings.Contains(md, "error:") {
		t.Error("the report has an error")
	}
}

// TestReplayOne: bitbake's restore sequence on a directory touches the
// object and its .siginfo, reads the object and rejects wrong bytes or a
// wrong answer to the existence check.
func TestReplayOne(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	objs, err := Plan(Spec{Names: Sample(RealNames(), 6, 2), Total: 1 << 20, Seed: 2, Absent: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	if err := Materialize(dir, objs, 2); err != nil {
		t.Fatal(err)
	}
	old := time.Unix(1_600_000_000, 0)
	for _, o := range Present(objs) {
		for _, k := range []string{o.Key, o.Key + ".siginfo"} {
			if err := os.Chtimes(filepath.Join(dir, k), old, old); err != nil {
				t.Fatal(err)
			}
		}
	}
	tgt := dirTarget{root: dir}
	buf := make([]byte, 4096)
	for _, o := range objs {
		read, err := replayOne(ctx, tgt, o, buf, false)
		if err != nil || read != o.Present {
			t.Fatalf("%s: read %v, %v; present %v", o.Key, read, err, o.Present)
		}
		if !o.Present {
			continue
		}
		for _, k := range []string{o.Key, o.Key + ".siginfo"} {
			if fi, err := os.Stat(filepath.Join(dir, k)); err != nil || !fi.ModTime().After(old) {
				t.Errorf("%s not touched: %v", k, err)
			}
		}
		wrong := o
		wrong.CRC++
		if _, err := replayOne(ctx, tgt, wrong, buf, false); err == nil || !strings.Contains(err.Error(), "wrong bytes") {
			t.Errorf("%s with another CRC: %v, want wrong bytes", o.Key, err)
		}
		gone := o
		gone.Present = false
		if _, err := replayOne(ctx, tgt, gone, buf, false); err == nil {
			t.Errorf("%s: no error where the store should not have it", o.Key)
		}
		if _, err := replayOne(ctx, tgt, gone, buf, true); err != nil {
			t.Errorf("%s in a growing store: %v", o.Key, err)
		}
	}
}
