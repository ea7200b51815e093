package index

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend/file"
)

func TestHasObjectOfHash(t *testing.T) {
	const h = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	const other = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
	obj := func(k string) Object { return Object{Key: k, Size: 1} }
	for _, tc := range []struct {
		name string
		keys []string
		hash string
		want bool
	}{
		{"top level", []string{"01/23/sstate:zlib:core2-64-poky-linux:1.3:r0:core2-64:14:" + h + "_package.tar.zst"}, h, true},
		{"native dir", []string{"debian-12/01/23/sstate:zlib-native:x86_64-linux:1.3:r0:x86_64:14:" + h + "_populate_sysroot.tar.zst"}, h, true},
		{"other hash", []string{"fe/dc/sstate:zlib:core2-64-poky-linux:1.3:r0:core2-64:14:" + other + "_package.tar.zst"}, h, false},
		{"wrong dir", []string{"fe/dc/sstate:zlib:core2-64-poky-linux:1.3:r0:core2-64:14:" + h + "_package.tar.zst"}, h, false},
		{"not a hash", []string{"zz/12/sstate:zlib:a:1:r0:b:14:zz12_package.tar.zst"}, "zz12", false},
		{"too short", []string{"01/2/sstate:zlib:a:1:r0:b:14:012_package.tar.zst"}, "012", false},
	} {
		var objs []Object
		for _, k := range tc.keys {
			objs = append(objs, obj(k))
		}
		if got := New(objs, time.Now()).HasObjectOfHash(tc.hash); got != tc.want {
			t.Errorf("%s: HasObjectOfHash = %v, want %v", tc.name, got, tc.want)
		}
	}
	if (*Index)(nil).HasObjectOfHash(h) {
		t.Error("a nil index has objects")
	}
}

// TestInitEmpty: an empty store gets an empty, complete snapshot, loaded at
// once; a store with objects but no snapshot is left alone.
func TestInitEmpty(t *testing.T) {
	ctx := context.Background()
	s, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	live := NewLive(s, LiveOptions{Interval: time.Hour})
	InitEmpty(ctx, s, live, nil)
	if ix := live.Current(); ix == nil || !ix.Sources().Snapshot || !ix.Sources().Complete || ix.Len() != 0 {
		t.Fatalf("empty store: live index %+v", live.Current())
	}

	s2, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	key := "ab/cd/sstate:x:y:1:r0:z:14:abcd_package.tar.zst"
	if err := s2.Create(ctx, key, strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
	live2 := NewLive(s2, LiveOptions{Interval: time.Hour})
	InitEmpty(ctx, s2, live2, nil)
	if _, err := Load(ctx, s2); err == nil {
		t.Error("a store with objects got an empty snapshot")
	}
}
