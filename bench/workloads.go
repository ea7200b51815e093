package main

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// Row is one line of the result table.
type Row struct {
	ID           string
	Title        string
	Unit         string
	HigherBetter bool
	// Ref is the system whose value is the reference for this row ("" for
	// none): the plain S3 client where the network bounds, the local disk
	// where nothing should.
	Ref string
}

// Measurement is one value of one row from one run.
type Measurement struct {
	Value  float64
	Approx bool   // extrapolated from part of the work
	NA     bool   // the row does not apply to this system
	Note   string // why there is no value (e.g. "link: EIO"), or how it was estimated
	Err    error  // the run failed
}

func failed(err error) Measurement { return Measurement{Err: err} }

// Workload is something to measure on a fresh instance of a system.
type Workload interface {
	Rows() []Row
	// Applies says whether the workload runs on systems of this role.
	Applies(Role) bool
	// Run measures on t and returns one Measurement per row.
	Run(ctx context.Context, env *Env, sys System, t Target, run int) []Measurement
}

// Phase is the workloads that run, in order, on one fresh instance: a
// new mount on an empty cache, after the page cache was dropped.
type Phase struct {
	Name      string
	Workloads []Workload
}

// --- 1. check ---

// checkWorkload stats every wanted object, its .sig and its .siginfo,
// serially, as bitbake's sstate_checkhashes and unpack shells do, and
// checks each answer against what the store holds. A system that would
// need longer than limit is stopped there and its time extrapolated.
type checkWorkload struct {
	objs  []Object
	limit time.Duration
}

func (w *checkWorkload) Rows() []Row {
	return []Row{{ID: "check", Title: fmt.Sprintf("check: %s serial stats", thousands(3*len(w.objs))), Unit: "s", Ref: "local disk"}}
}

func (w *checkWorkload) Applies(r Role) bool { return r == RoleMount || r == RoleDisk }

func (w *checkWorkload) Run(ctx context.Context, env *Env, sys System, t Target, run int) []Measurement {
	total := 3 * len(w.objs)
	done := 0
	start := time.Now()
	for _, o := range w.objs {
		for _, c := range []struct {
			suffix string
			want   bool
		}{{"", o.Present}, {".sig", false}, {".siginfo", o.Present}} {
			if err := ctx.Err(); err != nil {
				return []Measurement{failed(err)}
			}
			got, err := t.Stat(ctx, o.Key+c.suffix)
			if err != nil {
				return []Measurement{failed(fmt.Errorf("stat %s: %w", o.Key+c.suffix, err))}
			}
			if got != c.want {
				return []Measurement{failed(fmt.Errorf("stat %s: exists=%v, want %v", o.Key+c.suffix, got, c.want))}
			}
			done++
		}
		if w.limit > 0 && time.Since(start) > w.limit && done < total {
			el := time.Since(start).Seconds()
			return []Measurement{{Value: el * float64(total) / float64(done), Approx: true,
				Note: fmt.Sprintf("extrapolated from %s of %s stats in %.0f s", thousands(done), thousands(total), el)}}
		}
	}
	return []Measurement{{Value: time.Since(start).Seconds()}}
}

// --- first byte ---

// firstByteWorkload opens the largest object on an instance whose data
// cache is cold and times how long the first byte takes: a system that
// fetches whole objects before serving them makes pzstd wait for all of
// it. The byte is checked against the content.
type firstByteWorkload struct {
	obj  Object
	seed uint64
}

func (w *firstByteWorkload) Rows() []Row {
	return []Row{{ID: "first-byte", Title: fmt.Sprintf("first byte of the largest object (%s)", formatBytes(w.obj.Size)), Unit: "s", Ref: "S3 client"}}
}

func (w *firstByteWorkload) Applies(r Role) bool { return r == RoleMount || r == RoleS3 }

func (w *firstByteWorkload) Run(ctx context.Context, env *Env, sys System, t Target, run int) []Measurement {
	want, _ := ContentBytes(w.seed, w.obj.Key, 1)
	start := time.Now()
	r, err := t.Open(ctx, w.obj.Key)
	if err != nil {
		return []Measurement{failed(err)}
	}
	defer r.Close()
	got := make([]byte, 1)
	if _, err := io.ReadFull(r, got); err != nil {
		return []Measurement{failed(fmt.Errorf("read %s: %w", w.obj.Key, err))}
	}
	el := time.Since(start)
	if got[0] != want[0] {
		return []Measurement{failed(fmt.Errorf("%s: wrong first byte", w.obj.Key))}
	}
	return []Measurement{{Value: el.Seconds()}}
}

// --- 2, 3. restore ---

// restoreWorkload reads every present object whole, sequentially, with
// readers in parallel (as parallel setscene tasks' pzstd do), and checks
// each one's size and CRC. Cold runs first on a fresh instance; warm runs
// next on the same instance (its caches full), and on the local disk after
// an untimed read that fills the page cache.
//
// A cold restore still going after limit hands out no more objects; its
// throughput is that of the objects read (a fair sample: the list is in
// no order related to size), and the warm restore after it reads the same
// ones.
type restoreWorkload struct {
	objs    []Object
	readers int
	warm    bool
	limit   time.Duration
	// done is shared by a cold restore and the warm one after it: how many
	// objects the cold one read.
	done *int
}

// restorePair makes the cold and the warm restore of one phase.
func restorePair(objs []Object, readers int, limit time.Duration) (cold, warm *restoreWorkload) {
	done := new(int)
	return &restoreWorkload{objs: objs, readers: readers, limit: limit, done: done},
		&restoreWorkload{objs: objs, readers: readers, warm: true, done: done}
}

func (w *restoreWorkload) Rows() []Row {
	if w.warm {
		return []Row{{ID: fmt.Sprintf("warm%d", w.readers), Title: fmt.Sprintf("warm restore, %d readers", w.readers), Unit: "MB/s", HigherBetter: true, Ref: "local disk"}}
	}
	return []Row{{ID: fmt.Sprintf("cold%d", w.readers), Title: fmt.Sprintf("cold restore, %d readers", w.readers), Unit: "MB/s", HigherBetter: true, Ref: "S3 client"}}
}

func (w *restoreWorkload) Applies(r Role) bool {
	if w.warm {
		return r == RoleMount || r == RoleDisk
	}
	return r == RoleMount || r == RoleS3
}

func (w *restoreWorkload) Run(ctx context.Context, env *Env, sys System, t Target, run int) []Measurement {
	objs := w.objs
	var limit time.Duration
	if w.warm {
		if sys.Role() == RoleDisk {
			if _, _, err := readAll(ctx, t, objs, w.readers, 0); err != nil {
				return []Measurement{failed(err)}
			}
		} else {
			objs = objs[:*w.done]
		}
	} else {
		limit = w.limit
		*w.done = 0
	}
	start := time.Now()
	n, read, err := readAll(ctx, t, objs, w.readers, limit)
	el := time.Since(start)
	if err != nil {
		return []Measurement{failed(err)}
	}
	if !w.warm {
		*w.done = read
	}
	m := Measurement{Value: float64(n) / 1e6 / el.Seconds()}
	if read < len(objs) {
		m.Approx = true
		m.Note = fmt.Sprintf("stopped after %.0f s: %s of %s objects, %s", el.Seconds(), thousands(read), thousands(len(objs)), formatBytes(n))
	} else if w.warm && len(objs) < len(w.objs) {
		m.Approx = true
		m.Note = fmt.Sprintf("the %s objects the cold restore read", thousands(len(objs)))
	}
	return []Measurement{m}
}

// readAll reads objs with readers in parallel, in order, and returns the
// bytes and the number of objects read: all of them, or those it started
// before limit passed (0: no limit). An object with the wrong size or CRC
// is an error.
func readAll(ctx context.Context, t Target, objs []Object, readers int, limit time.Duration) (int64, int, error) {
	var next atomic.Int64
	var total atomic.Int64
	var count atomic.Int64
	deadline := time.Now().Add(limit)
	g, ctx := errgroup.WithContext(ctx)
	for range readers {
		g.Go(func() error {
			buf := make([]byte, 256<<10)
			for {
				if limit > 0 && time.Now().After(deadline) {
					return nil
				}
				i := int(next.Add(1)) - 1
				if i >= len(objs) {
					return nil
				}
				if err := ctx.Err(); err != nil {
					return err
				}
				o := objs[i]
				n, crc, err := readOne(ctx, t, o.Key, buf)
				if err != nil {
					return err
				}
				if n != o.Size || crc != o.CRC {
					return fmt.Errorf("%s: read %d bytes with CRC %08x, want %d bytes with CRC %08x: wrong bytes", o.Key, n, crc, o.Size, o.CRC)
				}
				total.Add(n)
				count.Add(1)
			}
		})
	}
	err := g.Wait()
	return total.Load(), int(count.Load()), err
}

func readOne(ctx context.Context, t Target, key string, buf []byte) (int64, uint32, error) {
	r, err := t.Open(ctx, key)
	if err != nil {
		return 0, 0, err
	}
	defer r.Close()
	h := crc32.New(castagnoli)
	n, err := io.CopyBuffer(h, struct{ io.Reader }{r}, buf)
	if err != nil {
		return n, 0, fmt.Errorf("read %s: %w", key, err)
	}
	return n, h.Sum32(), r.Close()
}

// --- 4. populate ---

// populateWorkload publishes objects the way bitbake does (on file
// systems: temp file, chmod, link(tmp, final), unlink; siginfo by rename;
// on S3: PUT), conc at a time, then waits until every object is in the
// bucket with its size. It reports how long the publishing took and the
// throughput until everything was in the bucket. Every system and run
// publishes the same sizes under new names.
type populateWorkload struct {
	objs    []Object // names and sizes (only the sizes matter)
	seed    uint64
	conc    int
	timeout time.Duration
}

func (w *populateWorkload) bytes() int64 {
	var b int64
	for _, o := range w.objs {
		b += o.Size + o.Siginfo
	}
	return b
}

func (w *populateWorkload) Rows() []Row {
	return []Row{
		{ID: "publish", Title: fmt.Sprintf("populate: publish %d objects", len(w.objs)), Unit: "s", Ref: "local disk"},
		{ID: "upload", Title: "populate: all in the bucket", Unit: "MB/s", HigherBetter: true, Ref: "S3 client"},
	}
}

func (w *populateWorkload) Applies(Role) bool { return true }

type popItem struct {
	key           string
	data, siginfo []byte
}

func (w *populateWorkload) Run(ctx context.Context, env *Env, sys System, t Target, run int) []Measurement {
	salt := fmt.Sprintf("populate/%d/%s/%d", w.seed, sys.Name(), run)
	items := make([]popItem, len(w.objs))
	want := map[string]int64{}
	for i, o := range w.objs {
		key := Rehash(o.Key, salt)
		data, _ := ContentBytes(w.seed, key, o.Size)
		sig, _ := ContentBytes(w.seed, key+".siginfo", o.Siginfo)
		items[i] = popItem{key, data, sig}
		want[key], want[key+".siginfo"] = o.Size, o.Siginfo
	}
	start := time.Now()
	var next atomic.Int64
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for range w.conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(items) || ctx.Err() != nil {
					return
				}
				if err := t.Publish(ctx, items[i].key, items[i].data, items[i].siginfo); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					next.Store(int64(len(items))) // stop the others
					return
				}
			}
		}()
	}
	wg.Wait()
	published := time.Since(start)
	if firstErr != nil {
		// A peer without hard links is expected here: say which call
		// failed how, rather than report an error.
		if errno := errnoOf(firstErr); errno != "" && opOf(firstErr) == "link" {
			note := "link: " + errno
			return []Measurement{{Note: note}, {Note: note}}
		}
		return []Measurement{failed(firstErr), failed(firstErr)}
	}
	pub := Measurement{Value: published.Seconds()}
	switch sys.Role() {
	case RoleDisk:
		return []Measurement{pub, {NA: true}}
	case RoleS3:
		return []Measurement{{NA: true}, {Value: float64(w.bytes()) / 1e6 / published.Seconds()}}
	}
	stored, err := env.Arrivals.Wait(ctx, env.Bucket, want, w.timeout)
	if err != nil {
		return []Measurement{pub, failed(err)}
	}
	// The events say when; the bucket itself confirms what (one HEAD of
	// each object, after the clock stopped, when the events did).
	if err := WaitInBucket(ctx, env.Direct, env.Bucket, want, w.timeout); err != nil {
		return []Measurement{pub, failed(err)}
	}
	return []Measurement{pub, {Value: float64(w.bytes()) / 1e6 / stored.Sub(start).Seconds()}}
}

// opOf names the system call that failed ("link"), from the error os
// returns.
func opOf(err error) string {
	var le *os.LinkError
	var pe *os.PathError
	var se *os.SyscallError
	switch {
	case errors.As(err, &le):
		return le.Op
	case errors.As(err, &pe):
		return pe.Op
	case errors.As(err, &se):
		return se.Syscall
	}
	return "publish"
}
