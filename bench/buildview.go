package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/sstatefs/sstatefs/internal/netem"
)

// The build-time view (--buildview): bitbake's own sequence for restoring
// every wanted object, from a local SSTATE_DIR, through the mount, and by
// probing an HTTP mirror as SSTATE_MIRRORS does, at each RTT.

// replayed says what replayOne did with an object.
type replayed struct{ read bool }

// toucher is a Target that can touch a name (utimensat(NULL), bitbake's
// touch of every object it uses).
type toucher interface{ Touch(key string) error }

// Touch sets the times of key to now, as utimensat(AT_FDCWD, path, NULL, 0)
// does: with a NULL times argument, which os.Chtimes cannot pass.
func (t dirTarget) Touch(key string) error {
	p, err := unix.BytePtrFromString(filepath.Join(t.root, key))
	if err != nil {
		return err
	}
	atFDCWD := unix.AT_FDCWD // a negative constant: through a variable to convert it
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(atFDCWD), uintptr(unsafe.Pointer(p)), 0, 0, 0, 0)
	if e != 0 {
		return &os.PathError{Op: "utimensat", Path: filepath.Join(t.root, key), Err: e}
	}
	return nil
}

// replayOne makes bitbake's calls for one wanted object on a file system:
// stat of the object, its .sig and its .siginfo (sstate_checkhashes); if
// the object is there, touch it and read it whole (the setscene task's
// unpack), checking its size and CRC. An answer that disagrees with the
// store is an error, unless growing says the store is still being
// written (then only a present object's bytes are checked).
func replayOne(ctx context.Context, t Target, o Object, buf []byte, growing bool) (replayed, error) {
	var there [3]bool
	for i, suffix := range []string{"", ".sig", ".siginfo"} {
		ok, err := t.Stat(ctx, o.Key+suffix)
		if err != nil {
			return replayed{}, fmt.Errorf("stat %s: %w", o.Key+suffix, err)
		}
		there[i] = ok
	}
	if there[1] {
		return replayed{}, fmt.Errorf("stat %s.sig: exists, but nothing is signed", o.Key)
	}
	if !growing && (o.Present != there[0] || (o.Present && !there[2])) {
		return replayed{}, fmt.Errorf("stat %s: exists=%v (.siginfo %v), want %v", o.Key, there[0], there[2], o.Present)
	}
	if !there[0] {
		return replayed{}, nil
	}
	if tt, ok := t.(toucher); ok {
		if err := tt.Touch(o.Key); err != nil {
			return replayed{}, err
		}
	}
	n, crc, err := readOne(ctx, t, o.Key, buf)
	if err != nil {
		return replayed{}, err
	}
	if o.CRC != 0 && (n != o.Size || crc != o.CRC) {
		return replayed{}, fmt.Errorf("%s: read %d bytes with CRC %08x, want %d with %08x: wrong bytes", o.Key, n, crc, o.Size, o.CRC)
	}
	return replayed{read: true}, nil
}

// buildViewResult is one system at one RTT.
type buildViewResult struct {
	System string
	RTT    time.Duration
	Took   time.Duration
	Read   int
	Reqs   netem.Counts
	Err    error
}

// replayAll replays every object with jobs in parallel (setscene tasks run
// in parallel) and returns how many objects were read.
func replayAll(ctx context.Context, objs []Object, jobs int, one func(ctx context.Context, o Object, buf []byte) (replayed, error)) (int, error) {
	var next, read atomic.Int64
	g, ctx := errgroup.WithContext(ctx)
	for range jobs {
		g.Go(func() error {
			buf := make([]byte, 256<<10)
			for {
				i := int(next.Add(1)) - 1
				if i >= len(objs) {
					return nil
				}
				if err := ctx.Err(); err != nil {
					return err
				}
				r, err := one(ctx, objs[i], buf)
				if err != nil {
					return err
				}
				if r.read {
					read.Add(1)
				}
			}
		})
	}
	err := g.Wait()
	return int(read.Load()), err
}

// mirrorProber restores as bitbake does from an SSTATE_MIRRORS entry over
// HTTP: a HEAD of the object, its .sig and its .siginfo (the fetcher's
// checkstatus), then a GET of the object and its .siginfo into the local
// SSTATE_DIR, a touch and the read of the local copy.
type mirrorProber struct {
	base   string // http://proxy/
	client *http.Client
	local  string
}

func (m *mirrorProber) head(ctx context.Context, key string) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, m.base+key, nil)
	if err != nil {
		return false, err
	}
	resp, err := m.client.Do(req)
	if err != nil {
		return false, err
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return true, nil
	case http.StatusNotFound:
		return false, nil
	}
	return false, fmt.Errorf("HEAD %s: %s", key, resp.Status)
}

func (m *mirrorProber) get(ctx context.Context, key string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.base+key, nil)
	if err != nil {
		return err
	}
	resp, err := m.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", key, resp.Status)
	}
	path := filepath.Join(m.local, key)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("GET %s: %w", key, err)
	}
	return f.Close()
}

func (m *mirrorProber) one(ctx context.Context, o Object, buf []byte) (replayed, error) {
	var there [3]bool
	for i, suffix := range []string{"", ".sig", ".siginfo"} {
		ok, err := m.head(ctx, o.Key+suffix)
		if err != nil {
			return replayed{}, err
		}
		there[i] = ok
	}
	if there[0] != o.Present || there[1] {
		return replayed{}, fmt.Errorf("HEAD %s: exists=%v (.sig %v), want %v", o.Key, there[0], there[1], o.Present)
	}
	if !there[0] {
		return replayed{}, nil
	}
	for _, k := range []string{o.Key, o.Key + ".siginfo"} {
		if err := m.get(ctx, k); err != nil {
			return replayed{}, err
		}
	}
	return replayOne(ctx, dirTarget{root: m.local}, o, buf, false)
}

// runBuildView measures the three ways at each RTT.
func (b *Bench) runBuildView(ctx context.Context, env *Env, sfs *sstatefsSystem, st *store) ([]buildViewResult, error) {
	o, log := b.Opts, b.Log
	// The HTTP mirror serves the same objects: the local copy the bucket
	// was uploaded from.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: http.FileServer(http.Dir(env.LocalDir)), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	var out []buildViewResult
	for _, rtt := range o.BuildViewRTTs {
		for _, system := range []string{"local disk", "sstatefs", "SSTATE_MIRRORS (HTTP)"} {
			r := buildViewResult{System: system, RTT: rtt}
			r.Took, r.Read, r.Reqs, r.Err = b.buildViewOnce(ctx, env, sfs, st, system, rtt, ln.Addr().String())
			if r.Err != nil && ctx.Err() != nil {
				return out, ctx.Err()
			}
			if r.Err == nil && r.Read != len(st.present) {
				r.Err = fmt.Errorf("read %d objects, %d are present", r.Read, len(st.present))
			}
			log.Printf("build-time view, %v RTT, %s: %.2f s, %d requests %v (%v)", rtt, system, r.Took.Seconds(), r.Reqs.Total(), r.Reqs.Requests, r.Err)
			out = append(out, r)
		}
	}
	return out, nil
}

func (b *Bench) buildViewOnce(ctx context.Context, env *Env, sfs *sstatefsSystem, st *store, system string, rtt time.Duration, httpAddr string) (time.Duration, int, netem.Counts, error) {
	o := b.Opts
	dir := filepath.Join(env.Work, "buildview", fmt.Sprintf("%s-%v", slug(strings.Fields(system)[0]), rtt))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, 0, netem.Counts{}, err
	}
	defer func() {
		if !o.Keep {
			safeRemoveAll(dir)
		}
	}()
	var one func(ctx context.Context, o Object, buf []byte) (replayed, error)
	var proxy *Proxy
	var stop func() error
	switch system {
	case "local disk":
		t := dirTarget{root: env.LocalDir}
		one = func(ctx context.Context, o Object, buf []byte) (replayed, error) {
			return replayOne(ctx, t, o, buf, false)
		}
	case "sstatefs":
		if sfs == nil {
			return 0, 0, netem.Counts{}, errors.New("sstatefs not available")
		}
		p, err := StartProxy(strings.TrimPrefix(env.Server.Endpoint, "http://"), rtt)
		if err != nil {
			return 0, 0, netem.Counts{}, err
		}
		defer p.Close()
		proxy = p
	default:
		p, err := StartProxy(httpAddr, rtt)
		if err != nil {
			return 0, 0, netem.Counts{}, err
		}
		defer p.Close()
		proxy = p
		tr := &http.Transport{MaxIdleConnsPerHost: o.BuildViewJobs, DisableCompression: true}
		defer tr.CloseIdleConnections()
		m := &mirrorProber{base: "http://" + p.Addr + "/", client: &http.Client{Transport: tr, Timeout: time.Minute}, local: dir}
		one = m.one
	}
	dropCaches()
	var c0 netem.Counts
	start := time.Now()
	if system == "sstatefs" {
		// The mount's start (its index load) is part of the build's time.
		e := *env
		e.Proxy = proxy
		m, err := sfs.Mount(ctx, &e, dir)
		if err != nil {
			return 0, 0, netem.Counts{}, err
		}
		stop = m.Unmount
		defer func() {
			if stop != nil {
				stop()
			}
		}()
		one = func(ctx context.Context, o Object, buf []byte) (replayed, error) {
			return replayOne(ctx, m, o, buf, false)
		}
	}
	if proxy != nil {
		c0 = proxy.Counts()
	}
	read, err := replayAll(ctx, st.objs, o.BuildViewJobs, one)
	took := time.Since(start)
	var reqs netem.Counts
	if proxy != nil {
		reqs = proxy.Counts().Sub(c0)
	}
	if stop != nil {
		s := stop
		stop = nil
		if uerr := s(); err == nil {
			err = uerr
		}
	}
	return took, read, reqs, err
}
