// Package storetest is the conformance suite every backend.Store passes: it
// checks the contract written on backend.Store against a real store.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

// Options describes what the store under test can do.
type Options struct {
	// ReadOnly stores refuse Create, Put and Delete with ErrReadOnly; the
	// suite then puts its objects in place with Seed.
	ReadOnly bool
	// Seed writes an object behind the store's back (needed when ReadOnly).
	Seed func(t *testing.T, key string, data []byte)
	// NoList stores answer List with ErrNotSupported.
	NoList bool
}

// A real sstate object name: long, with colons.
const objKey = "debian-12/c3/69/sstate:sstate-probe-native:x86_64-linux:1.0:r0:x86_64:14:c369644453e7186778f2fc3e6bd1f8573c07d05e836615ed00790293797515bf_populate_sysroot.tar.zst"

// Run runs the suite. newStore returns a fresh, empty store for each subtest.
func Run(t *testing.T, newStore func(t *testing.T) backend.Store, opt Options) {
	ctx := context.Background()
	put := func(t *testing.T, s backend.Store, key string, data []byte) {
		t.Helper()
		if opt.ReadOnly {
			opt.Seed(t, key, data)
			return
		}
		if err := s.Create(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatalf("Create(%s): %v", key, err)
		}
	}
	readAll := func(t *testing.T, s backend.Store, key string, off, n int64) ([]byte, error) {
		t.Helper()
		rc, err := s.Open(ctx, key, off, n)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		return io.ReadAll(rc)
	}

	t.Run("StatMissing", func(t *testing.T) {
		s := newStore(t)
		_, err := s.Stat(ctx, "ab/cd/sstate:missing")
		if !errors.Is(err, backend.ErrNotExist) {
			t.Fatalf("Stat of a missing key: got %v, want ErrNotExist", err)
		}
		_, err = s.Open(ctx, "ab/cd/sstate:missing", 0, -1)
		if !errors.Is(err, backend.ErrNotExist) {
			t.Fatalf("Open of a missing key: got %v, want ErrNotExist", err)
		}
	})

	t.Run("StatAndRead", func(t *testing.T) {
		s := newStore(t)
		data := testutil.RandBytes(t, 300_000)
		before := time.Now().Add(-time.Minute)
		put(t, s, objKey, data)
		oi, err := s.Stat(ctx, objKey)
		if err != nil {
			t.Fatal(err)
		}
		if oi.Size != int64(len(data)) {
			t.Errorf("Stat size = %d, want %d", oi.Size, len(data))
		}
		if oi.ModTime.Before(before) || oi.ModTime.After(time.Now().Add(time.Minute)) {
			t.Errorf("Stat mtime = %v, not near now", oi.ModTime)
		}
		got, err := readAll(t, s, objKey, 0, -1)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("full read: %d bytes, err %v; want %d bytes equal", len(got), err, len(data))
		}
		for _, r := range []struct{ off, n int64 }{{0, 1}, {1000, 4096}, {299_999, 1}, {123_456, -1}, {200_000, 100_000}} {
			got, err := readAll(t, s, objKey, r.off, r.n)
			end := int64(len(data))
			if r.n >= 0 {
				end = r.off + r.n
			}
			if err != nil || !bytes.Equal(got, data[r.off:end]) {
				t.Errorf("range read off=%d n=%d: %d bytes, err %v; want %d bytes", r.off, r.n, len(got), err, end-r.off)
			}
		}
	})

	t.Run("EmptyObject", func(t *testing.T) {
		s := newStore(t)
		put(t, s, "ab/cd/empty", nil)
		oi, err := s.Stat(ctx, "ab/cd/empty")
		if err != nil || oi.Size != 0 {
			t.Fatalf("Stat of an empty object: %+v, %v", oi, err)
		}
		got, err := readAll(t, s, "ab/cd/empty", 0, -1)
		if err != nil || len(got) != 0 {
			t.Fatalf("read of an empty object: %q, %v", got, err)
		}
	})

	t.Run("InvalidKey", func(t *testing.T) {
		s := newStore(t)
		for _, k := range []string{"", "/abs", "a/../b", "a//b", "./a"} {
			if _, err := s.Stat(ctx, k); !errors.Is(err, backend.ErrInvalidKey) {
				t.Errorf("Stat(%q) = %v, want ErrInvalidKey", k, err)
			}
		}
	})

	t.Run("CancelledContext", func(t *testing.T) {
		s := newStore(t)
		put(t, s, "ab/cd/x", []byte("x"))
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := s.Stat(cctx, "ab/cd/x"); err == nil {
			t.Error("Stat with a cancelled context succeeded")
		}
	})

	if !opt.NoList {
		t.Run("List", func(t *testing.T) {
			s := newStore(t)
			want := map[string]int64{
				"ab/cd/sstate:a_fetch.tar.zst.siginfo": 1,
				"ab/cd/sstate:b_populate_lic.tar.zst":  22,
				"ab/ce/sstate:c_x.tar.zst":             333,
				"debian-12/ab/cd/sstate:d_x.tar.zst":   4,
				".sstatefs/index/snapshot.v1":          5,
			}
			for k, n := range want {
				put(t, s, k, testutil.RandBytes(t, int(n)))
			}
			list := func(prefix string) map[string]int64 {
				got := map[string]int64{}
				if err := s.List(ctx, prefix, func(oi backend.ObjectInfo) error {
					got[oi.Key] = oi.Size
					return nil
				}); err != nil {
					t.Fatalf("List(%q): %v", prefix, err)
				}
				return got
			}
			if got := list(""); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("List(\"\") = %v, want %v", got, want)
			}
			got := list("ab/cd/")
			keys := make([]string, 0, len(got))
			for k := range got {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			if strings.Join(keys, ",") != "ab/cd/sstate:a_fetch.tar.zst.siginfo,ab/cd/sstate:b_populate_lic.tar.zst" {
				t.Errorf("List(ab/cd/) = %v", keys)
			}
			if got := list("zz/"); len(got) != 0 {
				t.Errorf("List of an absent prefix = %v, want nothing", got)
			}
			stop := errors.New("stop")
			n := 0
			err := s.List(ctx, "", func(backend.ObjectInfo) error { n++; return stop })
			if !errors.Is(err, stop) || n != 1 {
				t.Errorf("List stopped by fn: err %v after %d calls, want stop after 1", err, n)
			}
		})
		t.Run("ListAfter", func(t *testing.T) {
			s := newStore(t)
			// Journal-like keys: time first, so key order is time order.
			keys := []string{
				".sstatefs/index/journal/00000000000000000100-a-1.seg",
				".sstatefs/index/journal/00000000000000000200-b-2.seg",
				".sstatefs/index/journal/00000000000000000200-c-3.seg",
				".sstatefs/index/journal/00000000000000000300-a-4.seg",
				".sstatefs/index/snapshot.v1",
				"ab/cd/sstate:a_fetch.tar.zst",
			}
			for _, k := range keys {
				put(t, s, k, []byte(k))
			}
			if _, ok := s.(backend.AfterLister); !ok {
				t.Errorf("%T does not implement backend.AfterLister: a listing after a key costs a whole listing", s)
			}
			after := func(prefix, start string) string {
				var got []string
				if err := backend.ListAfter(ctx, s, prefix, start, func(oi backend.ObjectInfo) error {
					if oi.Size != int64(len(oi.Key)) {
						t.Errorf("ListAfter: %s has size %d, want %d", oi.Key, oi.Size, len(oi.Key))
					}
					got = append(got, oi.Key)
					return nil
				}); err != nil {
					t.Fatalf("ListAfter(%q, %q): %v", prefix, start, err)
				}
				sort.Strings(got)
				return strings.Join(got, ",")
			}
			j := ".sstatefs/index/journal/"
			for _, c := range []struct{ start, want string }{
				{"", strings.Join(keys[:4], ",")},
				{j + "00000000000000000200", strings.Join(keys[1:4], ",")}, // a time prefix: its keys follow it
				{keys[1], strings.Join(keys[2:4], ",")},                    // strictly after
				{j + "00000000000000000300-a-4.seg", ""},
				{j + "1", ""},
				{".", strings.Join(keys[:4], ",")}, // before the prefix
			} {
				if got := after(j, c.start); got != c.want {
					t.Errorf("ListAfter(%q, %q) = %v, want %v", j, c.start, got, c.want)
				}
			}
			if got, want := after("", keys[3]), strings.Join(keys[4:], ","); got != want {
				t.Errorf("ListAfter(\"\", %q) = %v, want %v", keys[3], got, want)
			}
		})
	} else {
		t.Run("ListNotSupported", func(t *testing.T) {
			s := newStore(t)
			err := s.List(ctx, "", func(backend.ObjectInfo) error { return nil })
			if !errors.Is(err, backend.ErrNotSupported) {
				t.Errorf("List = %v, want ErrNotSupported", err)
			}
		})
	}

	if opt.ReadOnly {
		t.Run("ReadOnly", func(t *testing.T) {
			s := newStore(t)
			if err := s.Create(ctx, "ab/cd/new", strings.NewReader("x"), 1); !errors.Is(err, backend.ErrReadOnly) {
				t.Errorf("Create = %v, want ErrReadOnly", err)
			}
			if err := s.Put(ctx, "ab/cd/new", strings.NewReader("x"), 1); !errors.Is(err, backend.ErrReadOnly) {
				t.Errorf("Put = %v, want ErrReadOnly", err)
			}
			if err := s.Delete(ctx, "ab/cd/new"); !errors.Is(err, backend.ErrReadOnly) {
				t.Errorf("Delete = %v, want ErrReadOnly", err)
			}
		})
		return
	}

	t.Run("CreateExisting", func(t *testing.T) {
		s := newStore(t)
		first := []byte("first writer")
		put(t, s, objKey, first)
		err := s.Create(ctx, objKey, strings.NewReader("second writer!"), 14)
		if !errors.Is(err, backend.ErrExist) {
			t.Fatalf("second Create = %v, want ErrExist", err)
		}
		got, err := readAll(t, s, objKey, 0, -1)
		if err != nil || !bytes.Equal(got, first) {
			t.Fatalf("after a refused Create the object reads %q, %v; want %q", got, err, first)
		}
	})

	t.Run("CreateConcurrent", func(t *testing.T) {
		s := newStore(t)
		const writers = 6
		datas := make([][]byte, writers)
		errs := make([]error, writers)
		var wg sync.WaitGroup
		for i := range writers {
			datas[i] = testutil.RandBytes(t, 64<<10+i)
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = s.Create(ctx, "ab/cd/race", bytes.NewReader(datas[i]), int64(len(datas[i])))
			}()
		}
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("writers %d and %d both created the object", winner, i)
			case err == nil:
				winner = i
			case !errors.Is(err, backend.ErrExist):
				t.Fatalf("writer %d: %v, want nil or ErrExist", i, err)
			}
		}
		if winner < 0 {
			t.Fatal("no writer created the object")
		}
		got, err := readAll(t, s, "ab/cd/race", 0, -1)
		if err != nil || !bytes.Equal(got, datas[winner]) {
			t.Fatalf("object is not the winner's bytes (%d bytes, %v)", len(got), err)
		}
	})

	t.Run("CreateShortReader", func(t *testing.T) {
		s := newStore(t)
		err := s.Create(ctx, "ab/cd/short", strings.NewReader("abc"), 10)
		if err == nil {
			t.Fatal("Create with fewer bytes than size succeeded")
		}
		if _, err := s.Stat(ctx, "ab/cd/short"); !errors.Is(err, backend.ErrNotExist) {
			t.Fatalf("a failed Create left something visible: %v", err)
		}
	})

	t.Run("PutReplaces", func(t *testing.T) {
		s := newStore(t)
		key := ".sstatefs/index/snapshot.v1"
		for _, v := range []string{"one", "number two"} {
			if err := s.Put(ctx, key, strings.NewReader(v), int64(len(v))); err != nil {
				t.Fatal(err)
			}
			got, err := readAll(t, s, key, 0, -1)
			if err != nil || string(got) != v {
				t.Fatalf("after Put(%q) read %q, %v", v, got, err)
			}
		}
	})

	t.Run("Delete", func(t *testing.T) {
		s := newStore(t)
		put(t, s, "ab/cd/gone", []byte("x"))
		if err := s.Delete(ctx, "ab/cd/gone"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Stat(ctx, "ab/cd/gone"); !errors.Is(err, backend.ErrNotExist) {
			t.Fatalf("Stat after Delete = %v", err)
		}
		if err := s.Delete(ctx, "ab/cd/gone"); err != nil {
			t.Fatalf("Delete of a missing key = %v, want nil", err)
		}
	})
}
