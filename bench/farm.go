package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/sstatefs/sstatefs/backend"
	s3store "github.com/sstatefs/sstatefs/backend/s3"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/netem"
)

// The farm simulation (--farm): W builders publish into one bucket at once
// while new mounts keep starting and restoring. Each builder is a real
// `sstatefs push` process of a local sstate-cache: the real publish path
// (conditional create, then a journal record) without a FUSE mount per
// builder, since 50 mounts with their page caches, FUSE threads and
// bitbake-like writers do not fit in 2 cores without measuring the
// machine's overload instead of the store's. The readers are real mounts.
//
// Writers and readers go through two proxies with the same RTT, so that
// each side's requests are counted apart.

// farmBuild is one builder's objects: shared ones (the same names in every
// build) and its own (the same recipes and tasks under new hashes).
type farmBuild struct {
	dir  string
	objs []Object
}

// farmResult is what one W measured.
type farmResult struct {
	W             int
	BuildObjects  int   // files of one build (objects and .siginfo)
	BuildBytes    int64 // bytes of one build
	ObjectBytes   int64 // of its objects alone (what a restore reads)
	Stored        int   // distinct files in the bucket after the storm
	StoredBytes   int64
	Storm         time.Duration
	Segments      int
	SegmentBytes  int64
	Writer        netem.Counts // the storm's requests, every writer
	ReadyDuring   []time.Duration
	Restored      int // objects read by the mounts during the storm
	Reader        netem.Counts
	ReadyAfter    time.Duration // a new mount, after the storm, before compaction
	StartAfter    netem.Counts  // its requests until ready
	StartCompact  netem.Counts  // those of a new mount after compaction
	LoadAfter     time.Duration // index.LoadAll in-process, same time
	RefreshSame   refreshCost   // a refresh when nothing changed
	RefreshSmall  refreshCost   // a refresh after one more small push
	SmallPush     int           // files of that push
	Compact       time.Duration
	Snapshot      int64
	LoadCompacted time.Duration
	ReadyCompact  time.Duration
	Checked       int // published files found once in the merged index
}

type refreshCost struct {
	Took time.Duration
	Reqs netem.Counts
}

// farmBuilds plans W builds of n names each: the first shared fraction of
// the names is common to all, the rest rehashed per builder. Every object
// is present (a build publishes what it built).
func farmBuilds(names []string, w, n int, size int64, shared float64, seed uint64) ([][]Object, error) {
	names = Sample(names, n, seed)
	base, err := Plan(Spec{Names: names, Total: size, Seed: seed})
	if err != nil {
		return nil, err
	}
	common := int(float64(len(base))*shared + 0.5)
	builds := make([][]Object, w)
	for i := range builds {
		b := make([]Object, len(base))
		for j, o := range base {
			o.Present = true
			if j >= common {
				o.Key = Rehash(o.Key, fmt.Sprintf("farm-writer-%d", i))
			}
			b[j] = o
		}
		builds[i] = b
	}
	return builds, nil
}

// materializeBuilds writes each build into its own directory: shared
// objects once into pool and hard-linked from there, the others directly.
func materializeBuilds(work string, builds [][]Object, seed uint64) ([]farmBuild, error) {
	pool := filepath.Join(work, "pool")
	done := map[string]Object{}
	out := make([]farmBuild, len(builds))
	for i, b := range builds {
		dir := filepath.Join(work, fmt.Sprintf("builder%02d", i))
		var own []Object
		for _, o := range b {
			if _, ok := done[o.Key]; !ok {
				own = append(own, o)
			}
		}
		// Objects of the first build go into the pool (the shared ones are
		// there for the others to link); the others' own go to their dir.
		target := dir
		if i == 0 {
			target = pool
		}
		if err := Materialize(target, own, seed); err != nil {
			return nil, err
		}
		for _, o := range own {
			if i == 0 {
				done[o.Key] = o
			}
		}
		objs := make([]Object, len(b))
		for j, o := range b {
			if p, ok := done[o.Key]; ok {
				objs[j] = p
				for _, k := range []string{o.Key, o.Key + ".siginfo"} {
					if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, k)), 0o755); err != nil {
						return nil, err
					}
					if err := os.Link(filepath.Join(pool, k), filepath.Join(dir, k)); err != nil {
						return nil, err
					}
				}
				continue
			}
			objs[j] = own[slices.IndexFunc(own, func(x Object) bool { return x.Key == o.Key })]
		}
		out[i] = farmBuild{dir: dir, objs: objs}
	}
	return out, nil
}

// farmEnv is one W's bucket with its two proxies.
type farmEnv struct {
	*Env
	sfs     *sstatefsSystem
	bucket  string
	writers *Proxy
	readers *Proxy
	store   backend.Store // in-process, through the readers' proxy
	direct  backend.Store // in-process, straight to versitygw
}

func (f *farmEnv) storeArgs(proxy *Proxy) []string {
	return []string{"--config", f.EmptyConfig, "--store", "s3://" + f.bucket,
		"--store-endpoint", "http://" + proxy.Addr, "--store-path-style"}
}

// sstatefs runs one sstatefs command to the end and returns how long it took.
func (f *farmEnv) sstatefs(ctx context.Context, log string, args ...string) (time.Duration, error) {
	cmd := exec.CommandContext(ctx, f.sfs.bin, args...)
	cmd.Env = mergeEnv(os.Environ(), f.awsEnv())
	out, err := os.Create(log)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	err = cmd.Run()
	took := time.Since(start)
	if err != nil {
		tail, _ := os.ReadFile(log)
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return took, fmt.Errorf("sstatefs %s: %v\n%s", args[0], err, tail)
	}
	return took, nil
}

// mountEnv is an Env whose mounts use this W's bucket and the readers'
// proxy.
func (f *farmEnv) mountEnv() *Env {
	e := *f.Env
	e.Bucket, e.Proxy = f.bucket, f.readers
	return &e
}

// openStore opens the bucket in-process (for index reads), through addr.
func (f *farmEnv) openStore(ctx context.Context, endpoint string) (backend.Store, error) {
	return s3store.New(ctx, s3store.Config{Bucket: f.bucket, Endpoint: endpoint, PathStyle: true, Region: f.Server.Region})
}

// setAWSEnv gives this process the server's credentials, for the
// in-process index reads (the SDK takes them from the environment).
func setAWSEnv(e *Env) {
	for _, kv := range e.awsEnv() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			os.Setenv(k, v)
		} else {
			os.Unsetenv(kv)
		}
	}
}

// readyMount starts a fresh mount and returns it with the time until it
// was mounted (sstatefs mounts after its first index load).
func (f *farmEnv) readyMount(ctx context.Context, dir string) (Mounted, time.Duration, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, 0, err
	}
	start := time.Now()
	m, err := f.sfs.Mount(ctx, f.mountEnv(), dir)
	return m, time.Since(start), err
}

// restoreSome does bitbake's sequence on some of a build's names through
// a mount (stat of the object, .sig, .siginfo; if there, touch and a whole
// read checked against its CRC) and returns how many objects it read.
func restoreSome(ctx context.Context, m Mounted, objs []Object, n int, r *rand.Rand) (int, error) {
	read := 0
	buf := make([]byte, 256<<10)
	for range n {
		o := objs[r.IntN(len(objs))]
		ok, err := replayOne(ctx, m, o, buf, true)
		if err != nil {
			return read, err
		}
		if ok {
			read++
		}
	}
	return read, nil
}

// runFarm runs the simulation for each W of --farm-writers.
func (b *Bench) runFarm(ctx context.Context, env *Env, sfs *sstatefsSystem) ([]farmResult, error) {
	o := b.Opts
	names := RealNames()
	if o.NamesFile != "" {
		var err error
		if names, err = ReadNames(o.NamesFile); err != nil {
			return nil, err
		}
	}
	setAWSEnv(env)
	// A mount that takes minutes to load a farm's journal is a result to
	// report, not a failure.
	farmSfs := *sfs
	farmSfs.timeout = 10 * time.Minute
	sfs = &farmSfs
	var results []farmResult
	for _, w := range o.FarmWriters {
		res, err := b.farmOnce(ctx, env, sfs, names, w)
		if err != nil {
			return results, fmt.Errorf("farm with %d writers: %w", w, err)
		}
		results = append(results, res)
	}
	return results, nil
}

func (b *Bench) farmOnce(ctx context.Context, env *Env, sfs *sstatefsSystem, names []string, w int) (farmResult, error) {
	o, log := b.Opts, b.Log
	res := farmResult{W: w}
	work := filepath.Join(env.Work, fmt.Sprintf("farm-w%d", w))
	defer func() {
		if !o.Keep {
			if err := safeRemoveAll(work); err != nil {
				log.Printf("not removing %s: %v", work, err)
			}
		}
	}()
	plans, err := farmBuilds(names, w, o.FarmObjects, o.FarmSize, 0.8, o.Seed)
	if err != nil {
		return res, err
	}
	t0 := time.Now()
	builds, err := materializeBuilds(work, plans, o.Seed)
	if err != nil {
		return res, fmt.Errorf("generating the builds: %w", err)
	}
	res.BuildObjects = 2 * len(plans[0])
	res.BuildBytes = StoreBytes(plans[0])
	res.ObjectBytes = objectBytes(plans[0])
	want := map[string]int64{}
	for _, fb := range builds {
		for _, x := range fb.objs {
			want[x.Key], want[x.Key+".siginfo"] = x.Size, x.Siginfo
		}
	}
	for _, v := range want {
		res.StoredBytes += v
	}
	res.Stored = len(want)
	log.Printf("farm W=%d: %d builds of %s files (%s) generated in %.1f s; %s distinct files, %s", w, w, thousands(res.BuildObjects),
		formatBytes(res.BuildBytes), time.Since(t0).Seconds(), thousands(res.Stored), formatBytes(res.StoredBytes))

	f := &farmEnv{Env: env, sfs: sfs, bucket: fmt.Sprintf("sstate-farm-w%d", w)}
	if err := CreateBucket(ctx, env.Direct, f.bucket); err != nil {
		return res, err
	}
	for _, p := range []**Proxy{&f.writers, &f.readers} {
		if *p, err = StartProxy(strings.TrimPrefix(env.Server.Endpoint, "http://"), o.RTT); err != nil {
			return res, err
		}
		defer (*p).Close()
	}
	if f.store, err = f.openStore(ctx, "http://"+f.readers.Addr); err != nil {
		return res, err
	}
	if f.direct, err = f.openStore(ctx, env.Server.Endpoint); err != nil {
		return res, err
	}
	// A farm's bucket is set up once: an index that says the store is
	// empty, so that mounts answer absent names from memory.
	if _, err := f.sstatefs(ctx, filepath.Join(work, "index-build.log"), append([]string{"index", "build", "--quiet"}, f.storeArgs(f.writers)...)...); err != nil {
		return res, err
	}

	// The storm: every writer at once, and mounts starting one after
	// the other until the writers are done.
	wc0 := f.writers.Counts()
	rc0 := f.readers.Counts()
	stormCtx, stormDone := context.WithCancel(ctx)
	var readersErr error
	var rwg sync.WaitGroup
	rwg.Add(1)
	go func() {
		defer rwg.Done()
		r := rand.New(rand.NewPCG(o.Seed, uint64(w)))
		for i := 0; stormCtx.Err() == nil; i++ {
			m, ready, err := f.readyMount(ctx, filepath.Join(work, "mounts", fmt.Sprint(i)))
			if err != nil {
				readersErr = err
				return
			}
			res.ReadyDuring = append(res.ReadyDuring, ready)
			n, err := restoreSome(ctx, m, builds[r.IntN(w)].objs, o.FarmRestore, r)
			res.Restored += n
			if uerr := m.Unmount(); err == nil {
				err = uerr
			}
			if err != nil {
				readersErr = fmt.Errorf("mount %d during the storm: %w", i, err)
				return
			}
		}
	}()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, w)
	for i, fb := range builds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			args := append([]string{"push", "--quiet", "--jobs", fmt.Sprint(o.FarmJobs), "--publish-writer-id", fmt.Sprintf("farm-%02d", i)}, f.storeArgs(f.writers)...)
			_, errs[i] = f.sstatefs(ctx, filepath.Join(work, fmt.Sprintf("push%02d.log", i)), append(args, fb.dir)...)
		}()
	}
	wg.Wait()
	res.Storm = time.Since(start)
	stormDone()
	rwg.Wait()
	if err := errors.Join(errs...); err != nil {
		return res, err
	}
	if readersErr != nil {
		return res, readersErr
	}
	res.Writer = f.writers.Counts().Sub(wc0)
	res.Reader = f.readers.Counts().Sub(rc0)
	log.Printf("farm W=%d: storm of %d pushes took %.1f s; %d mounts started meanwhile and read %d objects", w, w, res.Storm.Seconds(), len(res.ReadyDuring), res.Restored)

	segs, err := listPrefix(ctx, env.Direct, f.bucket, index.JournalPrefix)
	if err != nil {
		return res, err
	}
	res.Segments = len(segs)
	for _, s := range segs {
		res.SegmentBytes += s
	}

	// After the storm: a new mount, an in-process load, refreshes.
	c0 := f.readers.Counts()
	m, ready, err := f.readyMount(ctx, filepath.Join(work, "mounts", "after"))
	if err != nil {
		return res, err
	}
	res.ReadyAfter, res.StartAfter = ready, f.readers.Counts().Sub(c0)
	if err := m.Unmount(); err != nil {
		return res, err
	}
	t0 = time.Now()
	if _, err := index.LoadAll(ctx, f.store); err != nil {
		return res, err
	}
	res.LoadAfter = time.Since(t0)
	live := index.NewLive(f.store, index.LiveOptions{})
	if err := live.LoadOnce(ctx); err != nil {
		return res, err
	}
	if res.RefreshSame, err = measureRefresh(ctx, live, f.readers); err != nil {
		return res, err
	}
	// One more small build: a handful of new objects, then a refresh.
	small := plans[0][:max(1, len(plans[0])/100)]
	for i := range small {
		small[i].Key = Rehash(small[i].Key, "farm-late")
	}
	smallDir := filepath.Join(work, "late")
	if err := Materialize(smallDir, small, o.Seed); err != nil {
		return res, err
	}
	for _, x := range small {
		want[x.Key], want[x.Key+".siginfo"] = x.Size, x.Siginfo
	}
	res.SmallPush = 2 * len(small)
	if _, err := f.sstatefs(ctx, filepath.Join(work, "push-late.log"), append(append([]string{"push", "--quiet", "--publish-writer-id", "farm-late"}, f.storeArgs(f.writers)...), smallDir)...); err != nil {
		return res, err
	}
	if res.RefreshSmall, err = measureRefresh(ctx, live, f.readers); err != nil {
		return res, err
	}

	// Compaction, then the compacted index.
	if res.Compact, err = f.sstatefs(ctx, filepath.Join(work, "compact.log"), append([]string{"index", "compact", "--grace", "0s"}, f.storeArgs(f.writers)...)...); err != nil {
		return res, err
	}
	snap, err := listPrefix(ctx, env.Direct, f.bucket, ".sstatefs/index/snapshot")
	if err != nil {
		return res, err
	}
	for _, s := range snap {
		res.Snapshot = max(res.Snapshot, s)
	}
	t0 = time.Now()
	if _, err := index.LoadAll(ctx, f.store); err != nil {
		return res, err
	}
	res.LoadCompacted = time.Since(t0)
	c0 = f.readers.Counts()
	if m, res.ReadyCompact, err = f.readyMount(ctx, filepath.Join(work, "mounts", "compacted")); err != nil {
		return res, err
	}
	res.StartCompact = f.readers.Counts().Sub(c0)
	if err := m.Unmount(); err != nil {
		return res, err
	}

	// No record lost or duplicated: every published file once in the
	// merged index, with its size, and nothing else.
	if res.Checked, err = checkFarmIndex(ctx, f.direct, want); err != nil {
		return res, err
	}
	log.Printf("farm W=%d: %d segments (%s), ready %.2f s after the storm, compaction %.1f s, snapshot %s; index checked: all %d files once",
		w, res.Segments, formatBytes(res.SegmentBytes), res.ReadyAfter.Seconds(), res.Compact.Seconds(), formatBytes(res.Snapshot), res.Checked)
	return res, nil
}

func measureRefresh(ctx context.Context, live *index.Live, p *Proxy) (refreshCost, error) {
	c0 := p.Counts()
	t0 := time.Now()
	if err := live.LoadOnce(ctx); err != nil {
		return refreshCost{}, fmt.Errorf("refresh: %w", err)
	}
	return refreshCost{Took: time.Since(t0), Reqs: p.Counts().Sub(c0)}, nil
}

// errIndexMismatch is a farm run whose merged index is not exactly what
// was published.
var errIndexMismatch = errors.New("the merged index does not hold every published object exactly once")

// checkFarmIndex loads the merged index (snapshot and segments) and checks
// that it holds each key of want exactly once with its size, and no other.
func checkFarmIndex(ctx context.Context, s backend.Store, want map[string]int64) (int, error) {
	ix, err := index.LoadAll(ctx, s)
	if err != nil {
		return 0, err
	}
	seen := map[string]int{}
	var problems []string
	ix.Objects(func(o index.Object) bool {
		seen[o.Key]++
		if size, ok := want[o.Key]; !ok {
			problems = append(problems, "not published: "+o.Key)
		} else if size != o.Size {
			problems = append(problems, fmt.Sprintf("%s: size %d in the index, %d published", o.Key, o.Size, size))
		}
		return true
	})
	for k := range want {
		switch n := seen[k]; {
		case n == 0:
			problems = append(problems, "missing: "+k)
		case n > 1:
			problems = append(problems, fmt.Sprintf("%d times: %s", n, k))
		}
	}
	if ix.Len() != len(want) {
		problems = append(problems, fmt.Sprintf("the index has %d objects, %d were published", ix.Len(), len(want)))
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		if len(problems) > 10 {
			problems = append(problems[:10], fmt.Sprintf("and %d more", len(problems)-10))
		}
		return 0, fmt.Errorf("%w:\n  %s", errIndexMismatch, strings.Join(problems, "\n  "))
	}
	return len(want), nil
}

// listPrefix returns the sizes of the objects under prefix.
func listPrefix(ctx context.Context, c *s3.Client, bucket, prefix string) (map[string]int64, error) {
	out := map[string]int64{}
	p := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list s3://%s/%s: %w", bucket, prefix, err)
		}
		for _, o := range page.Contents {
			out[aws.ToString(o.Key)] = aws.ToInt64(o.Size)
		}
	}
	return out, nil
}

// --- peak memory of a mount with a large index ---

// farmMemory writes a snapshot of n synthetic objects and journal
// segments holding access records accesses into a bucket, mounts it and
// returns the mount's peak memory (VmHWM) once it is ready.
func (b *Bench) farmMemory(ctx context.Context, env *Env, sfs *sstatefsSystem, names []string) (peak int64, ready time.Duration, err error) {
	o, log := b.Opts, b.Log
	slow := *sfs
	slow.timeout = 10 * time.Minute
	f := &farmEnv{Env: env, sfs: &slow, bucket: "sstate-farm-memory"}
	if err := CreateBucket(ctx, env.Direct, f.bucket); err != nil {
		return 0, 0, err
	}
	if f.readers, err = StartProxy(strings.TrimPrefix(env.Server.Endpoint, "http://"), o.RTT); err != nil {
		return 0, 0, err
	}
	defer f.readers.Close()
	setAWSEnv(env)
	if f.direct, err = f.openStore(ctx, env.Server.Endpoint); err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	objs, err := synthIndexObjects(names, o.FarmIndexObjects, o.Seed)
	if err != nil {
		return 0, 0, err
	}
	if err := index.Save(ctx, f.direct, index.New(objs, time.Now())); err != nil {
		return 0, 0, err
	}
	// Access records in segments of at most 400,000 (a segment's body is
	// bounded at 64 MiB), each key at most once per segment.
	const perSegment = 400_000
	r := rand.New(rand.NewPCG(o.Seed, 0xacce55))
	at := time.Now().Add(-time.Duration(o.FarmAccess/perSegment+2) * time.Second)
	for done := 0; done < o.FarmAccess; {
		n := min(perSegment, o.FarmAccess-done, len(objs))
		seg := &index.Segment{Writer: "farm-memory", Time: at}
		seg.Key = fmt.Sprintf("%s%020d-%s-%016x.seg", index.JournalPrefix, at.UnixNano(), seg.Writer, r.Uint64())
		first := r.IntN(len(objs))
		for i := range n {
			seg.Accessed = append(seg.Accessed, index.Access{Key: objs[(first+i)%len(objs)].Key, Time: at})
		}
		var buf bytes.Buffer
		if err := index.EncodeSegment(&buf, seg); err != nil {
			return 0, 0, err
		}
		if err := f.direct.Put(ctx, seg.Key, bytes.NewReader(buf.Bytes()), int64(buf.Len())); err != nil {
			return 0, 0, err
		}
		done += n
		at = at.Add(time.Second)
	}
	objs = nil
	log.Printf("memory: index of %s objects and %s access records written in %.1f s", thousands(o.FarmIndexObjects), thousands(o.FarmAccess), time.Since(t0).Seconds())
	dir := filepath.Join(env.Work, "farm-memory")
	m, ready, err := f.readyMount(ctx, dir)
	if err != nil {
		return 0, 0, err
	}
	// Once ready, lookups of every kind: a hit and a miss.
	if _, err := m.Stat(ctx, "ab/cd/sstate:none:x:1:r0:x:14:0123_populate_sysroot.tar.zst"); err != nil {
		m.Unmount()
		return 0, 0, err
	}
	peak = m.PeakRSS()
	if err := m.Unmount(); err != nil {
		return 0, 0, err
	}
	if !o.Keep {
		safeRemoveAll(dir)
	}
	return peak, ready, nil
}
