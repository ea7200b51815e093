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

// toucher is a Target whose names can be touched the ways bitbake does.
type toucher interface {
	// Touch is utimensat(path, NULL): python's os.utime(path, None).
	Touch(key string) error
	// TouchShell is coreutils' touch f and touch --no-dereference f.
	TouchShell(key string) error
}

// utimensat(dirfd, path, NULL, flags); an empty path passes NULL (the
// times of dirfd itself), which neither os.Chtimes nor unix.UtimesNanoAt
// can do.
func utimensat(dirfd int, path string, flags int) error {
	var p *byte
	if path != "" {
		var err error
		if p, err = unix.BytePtrFromString(path); err != nil {
			return err
		}
	}
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)), 0, uintptr(flags), 0, 0)
	if e != 0 {
		return &os.PathError{Op: "utimensat", Path: path, Err: e}
	}
	return nil
}

func (t dirTarget) Touch(key string) error {
	return utimensat(unix.AT_FDCWD, filepath.Join(t.root, key), 0)
}

func (t dirTarget) TouchShell(key string) error {
	path := filepath.Join(t.root, key)
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0o666)
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	err = utimensat(fd, "", 0)
	unix.Close(fd)
	if err != nil {
		return err
	}
	return utimensat(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW)
}

var companions = []string{"", ".sig", ".siginfo"}

// checkOne makes sstate_checkhashes' calls for one wanted object: stat of
// the object, touch if there, stat of its .sig and its .siginfo, touch of
// the .siginfo if there. It returns whether the object is there. An answer
// that disagrees with the store is an error, unless growing says the store
// is still being written.
func checkOne(ctx context.Context, t Target, o Object, growing bool) (bool, error) {
	var there [3]bool
	for i, suffix := range companions {
		ok, err := t.Stat(ctx, o.Key+suffix)
		if err != nil {
			return false, fmt.Errorf("stat %s: %w", o.Key+suffix, err)
		}
		there[i] = ok
		if tt, isT := t.(toucher); ok && isT && suffix != ".sig" {
			if err := tt.Touch(o.Key + suffix); err != nil {
				return false, err
			}
		}
	}
	if there[1] {
		return false, fmt.Errorf("stat %s.sig: exists, but nothing is signed", o.Key)
	}
	if !growing && (o.Present != there[0] || (o.Present && !there[2])) {
		return false, fmt.Errorf("stat %s: exists=%v (.siginfo %v), want %v", o.Key, there[0], there[2], o.Present)
	}
	return there[0], nil
}

// unpackOne makes the setscene task's calls for an object that is there
// (sstate_unpack_package): stat, a whole sequential read (pzstd), checked
// against its size and CRC, then for the object, its .sig and its
// .siginfo a stat and, if there, the shell's two touches.
func unpackOne(ctx context.Context, t Target, o Object, buf []byte) error {
	if _, err := t.Stat(ctx, o.Key); err != nil {
		return err
	}
	n, crc, err := readOne(ctx, t, o.Key, buf)
	if err != nil {
		return err
	}
	if o.CRC != 0 && (n != o.Size || crc != o.CRC) {
		return fmt.Errorf("%s: read %d bytes with CRC %08x, want %d with %08x: wrong bytes", o.Key, n, crc, o.Size, o.CRC)
	}
	tt, ok := t.(toucher)
	for _, suffix := range companions {
		there, err := t.Stat(ctx, o.Key+suffix)
		if err != nil {
			return err
		}
		if there && ok {
			if err := tt.TouchShell(o.Key + suffix); err != nil {
				return err
			}
		}
	}
	return nil
}

// replayOne is checkOne and, for an object that is there, unpackOne; it
// says whether it read the object.
func replayOne(ctx context.Context, t Target, o Object, buf []byte, growing bool) (bool, error) {
	there, err := checkOne(ctx, t, o, growing)
	if err != nil || !there {
		return false, err
	}
	return true, unpackOne(ctx, t, o, buf)
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

// replayAll is a restore as bitbake runs it: the check of every object
// first (at runqueue start; checkJobs at a time: bitbake checks files one
// by one and probes mirrors from a thread pool), then the setscene tasks
// of the objects that are there, jobs at a time. It returns how many
// objects were read.
func replayAll(ctx context.Context, objs []Object, checkJobs, jobs int,
	check func(ctx context.Context, o Object) (bool, error),
	unpack func(ctx context.Context, o Object, buf []byte) error) (int, error) {
	there := make([]bool, len(objs))
	if err := forEach(ctx, len(objs), checkJobs, func(ctx context.Context, i int, _ []byte) (err error) {
		there[i], err = check(ctx, objs[i])
		return err
	}); err != nil {
		return 0, err
	}
	var present []Object
	for i, o := range objs {
		if there[i] {
			present = append(present, o)
		}
	}
	err := forEach(ctx, len(present), jobs, func(ctx context.Context, i int, buf []byte) error {
		return unpack(ctx, present[i], buf)
	})
	return len(present), err
}

// forEach calls fn for 0..n-1, jobs at a time, each worker with its own
// read buffer; the first error stops it.
func forEach(ctx context.Context, n, jobs int, fn func(ctx context.Context, i int, buf []byte) error) error {
	var next atomic.Int64
	g, ctx := errgroup.WithContext(ctx)
	for range jobs {
		g.Go(func() error {
			buf := make([]byte, 256<<10)
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return nil
				}
				if err := ctx.Err(); err != nil {
					return err
				}
				if err := fn(ctx, i, buf); err != nil {
					return err
				}
			}
		})
	}
	return g.Wait()
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

// check is the mirror's checkstatus: a HEAD of the object and its
// companions.
func (m *mirrorProber) check(ctx context.Context, o Object) (bool, error) {
	var there [3]bool
	for i, suffix := range companions {
		ok, err := m.head(ctx, o.Key+suffix)
		if err != nil {
			return false, err
		}
		there[i] = ok
	}
	if there[0] != o.Present || there[1] {
		return false, fmt.Errorf("HEAD %s: exists=%v (.sig %v), want %v", o.Key, there[0], there[1], o.Present)
	}
	return there[0], nil
}

// unpack fetches the object and its .siginfo into the local SSTATE_DIR,
// then unpacks from there.
func (m *mirrorProber) unpack(ctx context.Context, o Object, buf []byte) error {
	for _, k := range []string{o.Key, o.Key + ".siginfo"} {
		if err := m.get(ctx, k); err != nil {
			return err
		}
	}
	return unpackOne(ctx, dirTarget{root: m.local}, o, buf)
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
	var check func(ctx context.Context, o Object) (bool, error)
	var unpack func(ctx context.Context, o Object, buf []byte) error
	onFS := func(t Target) {
		check = func(ctx context.Context, o Object) (bool, error) { return checkOne(ctx, t, o, false) }
		unpack = func(ctx context.Context, o Object, buf []byte) error { return unpackOne(ctx, t, o, buf) }
	}
	checkJobs := 1
	var proxy *Proxy
	var stop func() error
	switch system {
	case "local disk":
		onFS(dirTarget{root: env.LocalDir})
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
		check, unpack, checkJobs = m.check, m.unpack, o.BuildViewJobs
	}
	dropCaches()
	var c0 netem.Counts
	if proxy != nil {
		c0 = proxy.Counts() // the mount's start counts too
	}
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
		onFS(m)
	}
	read, err := replayAll(ctx, st.objs, checkJobs, o.BuildViewJobs, check, unpack)
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
