package index

import (
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	names := names(t)
	keys := realisticKeys(t)
	extra := []string{
		"12/sstate:old:x86_64-linux:1:r0:x86_64:3:12ab_populate_sysroot.tgz", // one level, pre-dunfell
		"ab/cd/sstate:zlib:core2-64-poky-linux:1.3:r0:core2-64:14:abcd_package.tar.zst.sig",
		"universal/ab/cd/sstate:quilt-native:x86_64-linux:0.67:r0:x86_64:14:abcd_populate_sysroot.tar.zst",
		"README",
		"misc/notes.txt",
	}
	created := time.Unix(1_750_000_000, 0)
	ix := New(randomObjects(append(keys, extra...), 21), created)
	s := Summarize(ix)

	wantTask := map[string]int{"populate_sysroot": 2} // the .tgz and universal ones
	task := regexp.MustCompile(`:[0-9a-f]{64}_([a-z_]+)\.tar\.zst$`)
	native := 0
	for _, n := range names {
		wantTask[task.FindStringSubmatch(n)[1]]++
		if strings.HasPrefix(n, "debian-12/") {
			native++
		}
	}
	want := Summary{
		Objects: len(keys) + len(extra),
		Bytes:   ix.TotalSize(),
		Created: created,
		ByTask:  wantTask,
		ByPrefix: map[string]int{
			"":          2*(len(names)-native) + 3,
			"debian-12": 2 * native,
			"universal": 1,
			"misc":      1,
		},
		Packages: len(names) + 2,
		Siginfo:  len(names),
		Sig:      1,
		Sources:  Sources{Complete: true},
	}
	s.Created = s.Created.In(time.Local)
	if !reflect.DeepEqual(s, want) {
		t.Errorf("Summarize =\n%+v\nwant\n%+v", s, want)
	}
	if s := Summarize(nil); s.Objects != 0 || s.ByTask == nil || s.ByPrefix == nil {
		t.Errorf("Summarize(nil) = %+v", s)
	}

	// Access times and sources of a merged index.
	merged := apply(ix, []*Segment{{Key: testSegKeys(1)[0], Accessed: []Access{
		{Key: keys[0], Time: time.Unix(1_750_000_100, 0)}, {Key: keys[1], Time: time.Unix(1_750_000_200, 0)},
		{Key: "not/indexed", Time: time.Unix(1_750_000_300, 0)},
	}}})
	s = Summarize(merged)
	if s.Accessed != 2 || !s.LastAccess.Equal(time.Unix(1_750_000_200, 0)) ||
		s.Sources.Applied != 1 || s.Sources.Covered != 1 || !s.Sources.Complete {
		t.Errorf("merged: accessed %d, last %v, sources %+v", s.Accessed, s.LastAccess, s.Sources)
	}
}
