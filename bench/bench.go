package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/sstatefs/sstatefs/internal/mountinfo"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

const bucket = "sstate-bench"

// Env is what the systems and workloads share during a benchmark.
type Env struct {
	Opts        Options
	Work        string
	Server      *S3Server
	Proxy       *Proxy
	Bucket      string
	Direct      *s3.Client // to versitygw itself, not through the proxy: setup and polling
	Arrivals    *Arrivals  // versitygw's events: when each object was stored
	LocalDir    string     // the local copy of the store
	EmptyConfig string     // an empty sstatefs config, so no /etc/sstatefs/sstatefs.toml applies
}

// awsEnv is the environment of sstatefs: the server's credentials, and
// nothing from the user's AWS configuration that could point elsewhere.
func (e *Env) awsEnv() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + e.Server.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + e.Server.SecretKey,
		"AWS_REGION=" + e.Server.Region,
		"AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
		"AWS_CONFIG_FILE=" + os.DevNull, "AWS_SHARED_CREDENTIALS_FILE=" + os.DevNull,
		"SSTATEFS_CONFIG",
	}
}

// MaxReaders is the largest reader count, the concurrency of the S3
// client and of populate.
func (e *Env) MaxReaders() int {
	n := 1
	for _, r := range e.Opts.Readers {
		n = max(n, r)
	}
	return n
}

// Bench is one benchmark run.
type Bench struct {
	Opts    Options
	Log     *Logger
	Cleanup *Cleanup
	Stdout  io.Writer

	// skip, if set, is checked before each phase; afterMount is called
	// when a phase's instance is up. Tests use them.
	skip       func(sys System, ph Phase) bool
	afterMount func(sys System, ph Phase)
}

// Run does everything and prints the table; it returns the exit code.
func (b *Bench) Run(ctx context.Context) int {
	if b.Opts.Farm || b.Opts.BuildView {
		return b.runScenarios(ctx)
	}
	res, err := b.run(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return 130
		}
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	fmt.Fprint(b.Stdout, "\n"+res.Text())
	if b.Opts.Out != "" {
		if err := os.WriteFile(b.Opts.Out, []byte(res.Markdown()), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			return 1
		}
		b.Log.Printf("wrote %s", b.Opts.Out)
	}
	return 0
}

func (b *Bench) run(ctx context.Context) (*Results, error) {
	o := b.Opts
	vgw := testutil.FindVersitygw()
	if vgw == "" {
		return nil, errNoVersitygw
	}
	systems, notes, err := b.systems()
	if err != nil {
		return nil, err
	}
	env, err := b.setup(ctx, vgw)
	if err != nil {
		return nil, err
	}
	sfs := findSystem[*sstatefsSystem](systems)
	if sfs != nil {
		if err := b.buildSstatefs(ctx, env, sfs); err != nil {
			return nil, err
		}
	}
	st, err := b.prepareStore(ctx, env, sfs)
	if err != nil {
		return nil, err
	}
	phases, tableOrder, err := b.plan(env, st)
	if err != nil {
		return nil, err
	}

	var columns, peers []string
	for _, s := range systems {
		columns = append(columns, s.Name())
		if s.Role() == RoleMount && s.Name() != "sstatefs" {
			peers = append(peers, s.Name())
		}
	}
	res := NewResults(columns, peers)
	for _, w := range tableOrder {
		for _, r := range w.Rows() {
			res.AddRow(r)
		}
	}
	res.AddRow(memRow)
	dropped := dropCaches() == nil
	if !dropped {
		notes = append(notes, "the page cache could not be dropped (not root?): cold runs may read from memory")
	}
	res.Header = b.header(env, st, systems, tableOrder, sfs != nil)

	more, err := b.measure(ctx, env, systems, phases, res)
	notes = append(notes, more...)
	if err != nil {
		return nil, err
	}
	if o.IndexObjects > 0 && sfs != nil {
		if err := b.indexScale(ctx, st.allNames, res); err != nil {
			return nil, err
		}
	}
	res.Notes = notes
	res.Header = append(res.Header, fmt.Sprintf("took %s in all; page cache dropped before each mount: %v", b.Log.Elapsed().Round(time.Second), dropped))
	return res, nil
}

// systems are the mounts asked for that can run here, then the
// references; notes say which were skipped and why.
func (b *Bench) systems() ([]System, []string, error) {
	var notes []string
	var systems []System
	for _, name := range b.Opts.Systems {
		var sys System
		switch name {
		case "sstatefs":
			root, err := moduleRoot()
			if err != nil {
				return nil, nil, err
			}
			sys = &sstatefsSystem{root: root, extra: b.Opts.SstatefsFlags}
		case "rclone":
			sys = &rcloneSystem{extra: b.Opts.RcloneFlags}
		case "s3fs":
			sys = &s3fsSystem{extra: b.Opts.S3fsOptions}
		}
		if err := sys.Available(); err != nil {
			notes = append(notes, fmt.Sprintf("%s skipped: %v", name, err))
			b.Log.Printf("%s skipped: %v", name, err)
			continue
		}
		systems = append(systems, sys)
	}
	return append(systems, s3ClientSystem{}, diskSystem{}), notes, nil
}

func findSystem[T System](systems []System) T {
	var zero T
	for _, s := range systems {
		if x, ok := s.(T); ok {
			return x
		}
	}
	return zero
}

// setup makes the work directory (removed last, unless --keep), starts
// versitygw with an empty bucket and the proxy in front of it.
func (b *Bench) setup(ctx context.Context, vgw string) (*Env, error) {
	o, log := b.Opts, b.Log
	if o.Workdir != "" {
		if err := os.MkdirAll(o.Workdir, 0o755); err != nil {
			return nil, err
		}
	}
	work, err := os.MkdirTemp(o.Workdir, "sstatefs-bench-")
	if err != nil {
		return nil, err
	}
	b.Cleanup.Add("work directory", func() {
		if o.Keep {
			log.Printf("kept %s", work)
			return
		}
		if err := safeRemoveAll(work); err != nil {
			log.Printf("not removing %s: %v", work, err)
		}
	})
	log.Printf("work directory %s", work)
	env := &Env{Opts: o, Work: work, Bucket: bucket, LocalDir: filepath.Join(work, "local")}
	env.EmptyConfig = filepath.Join(work, "sstatefs.toml")
	if err := os.WriteFile(env.EmptyConfig, []byte("# defaults only\n"), 0o644); err != nil {
		return nil, err
	}

	if err := mkdirs(filepath.Join(work, "s3")); err != nil {
		return nil, err
	}
	accessLog := ""
	if o.AccessLog {
		accessLog = filepath.Join(work, "versitygw-access.log")
	}
	arrivals, err := StartArrivals()
	if err != nil {
		return nil, err
	}
	b.Cleanup.Add("event listener", arrivals.Close)
	env.Arrivals = arrivals
	srv, err := StartS3Server(ctx, vgw, filepath.Join(work, "s3"), filepath.Join(work, "versitygw.log"), accessLog, arrivals.URL)
	if err != nil {
		return nil, err
	}
	b.Cleanup.Add("versitygw", srv.Stop)
	env.Server = srv
	env.Direct = srv.Client(srv.Endpoint, 16)
	if err := CreateBucket(ctx, env.Direct, bucket); err != nil {
		return nil, err
	}
	proxy, err := StartProxy(strings.TrimPrefix(srv.Endpoint, "http://"), o.RTT)
	if err != nil {
		return nil, err
	}
	b.Cleanup.Add("proxy", proxy.Close)
	env.Proxy = proxy
	log.Printf("versitygw (%s) on %s, proxy with RTT %v on %s", srv.Version, srv.Endpoint, o.RTT, proxy.Addr)
	return env, nil
}

// buildSstatefs builds the binary from the working tree.
func (b *Bench) buildSstatefs(ctx context.Context, env *Env, sfs *sstatefsSystem) error {
	sfs.bin = filepath.Join(env.Work, "bin", "sstatefs")
	b.Log.Printf("building sstatefs from %s", sfs.root)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", sfs.bin, "./cmd/sstatefs")
	cmd.Dir = sfs.root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/sstatefs: %v\n%s", err, out)
	}
	sfs.version = gitVersion(sfs.root)
	return nil
}

// store is the synthetic store the workloads use.
type store struct {
	allNames []string // the whole name list (index scale, populate)
	objs     []Object // the wanted objects
	present  []Object // those in the store, with their CRCs
}

// prepareStore generates the store, uploads it and, for sstatefs, builds
// its index.
func (b *Bench) prepareStore(ctx context.Context, env *Env, sfs *sstatefsSystem) (*store, error) {
	o, log := b.Opts, b.Log
	names := RealNames()
	if o.NamesFile != "" {
		var err error
		if names, err = ReadNames(o.NamesFile); err != nil {
			return nil, err
		}
	}
	st := &store{allNames: names}
	if o.Names > 0 {
		names = Sample(names, o.Names, o.Seed)
	}
	objs, err := Plan(Spec{Names: names, Total: o.Size, Seed: o.Seed, Absent: o.Absent})
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	if err := Materialize(env.LocalDir, objs, o.Seed); err != nil {
		return nil, fmt.Errorf("generating the store: %w", err)
	}
	st.objs, st.present = objs, Present(objs)
	log.Printf("generated %d wanted objects (%d present, %d absent), %s with .siginfo, in %.1f s",
		len(objs), len(st.present), len(objs)-len(st.present), formatBytes(StoreBytes(objs)), time.Since(t0).Seconds())
	t0 = time.Now()
	if err := Upload(ctx, env.Direct, bucket, env.LocalDir, objs, 16); err != nil {
		return nil, err
	}
	log.Printf("uploaded to s3://%s in %.1f s", bucket, time.Since(t0).Seconds())
	if sfs != nil {
		t0 = time.Now()
		cmd := exec.CommandContext(ctx, sfs.bin, "index", "build", "--quiet", "--config", env.EmptyConfig,
			"--store", "s3://"+bucket, "--store-endpoint", env.Server.Endpoint, "--store-path-style")
		cmd.Env = mergeEnv(os.Environ(), env.awsEnv())
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("sstatefs index build: %v\n%s", err, out)
		}
		log.Printf("sstatefs index build in %.1f s", time.Since(t0).Seconds())
	}
	return st, nil
}

// plan makes the phases (each on a fresh instance) and the workloads in
// the order of the table's rows.
func (b *Bench) plan(env *Env, st *store) (phases []Phase, tableOrder []Workload, err error) {
	o := b.Opts
	check := &checkWorkload{objs: st.objs, limit: o.CheckLimit}
	firstByte := &firstByteWorkload{obj: largestObject(st.present), seed: o.Seed}
	phases = []Phase{{Name: "check", Workloads: []Workload{check, firstByte}}}
	var colds, warms []Workload
	for _, r := range o.Readers {
		cold, warm := restorePair(st.present, r, o.RestoreLimit)
		colds, warms = append(colds, cold), append(warms, warm)
		phases = append(phases, Phase{Name: fmt.Sprintf("restore-%d", r), Workloads: []Workload{cold, warm}})
	}
	tableOrder = append(append([]Workload{check, firstByte}, colds...), warms...)
	if o.PopulateN > 0 {
		popObjs, err := Plan(Spec{Names: Sample(st.allNames, o.PopulateN, o.Seed+7), Total: o.PopulateSize, Seed: o.Seed + 7})
		if err != nil {
			return nil, nil, err
		}
		populate := &populateWorkload{objs: popObjs, seed: o.Seed, conc: env.MaxReaders(), timeout: o.PopulateTimeout}
		phases = append(phases, Phase{Name: "populate", Workloads: []Workload{populate}})
		tableOrder = append(tableOrder, populate)
	}
	return phases, tableOrder, nil
}

// header describes the run above the table.
func (b *Bench) header(env *Env, st *store, systems []System, workloads []Workload, withIndex bool) []string {
	o := b.Opts
	h := []string{
		fmt.Sprintf("sstatefs benchmark (go run ./bench%s), %s", argsSummary(o), time.Now().UTC().Format("2006-01-02 15:04 UTC")),
		"machine: " + machine(),
		fmt.Sprintf("store: %s wanted objects from the core-image-minimal name list (%s present, %s absent), %s with their .siginfo; largest object %s",
			thousands(len(st.objs)), thousands(len(st.present)), thousands(len(st.objs)-len(st.present)), formatBytes(StoreBytes(st.objs)), formatBytes(largest(st.objs))),
		fmt.Sprintf("network: %s on 127.0.0.1 (--keep-alive) behind a proxy adding %v RTT; every system goes through it", env.Server.Version, o.RTT),
		"check: stat of each wanted object, its .sig and its .siginfo, one after the other" + limitNote(o.CheckLimit, "its time extrapolated") + "; then, on the same instance, the time to the first byte of the largest object",
		fmt.Sprintf("restore: read all %s present objects (%s) whole with N parallel readers, cold on a fresh mount, then warm on the same mount", thousands(len(st.present)), formatBytes(objectBytes(st.present))) + limitNote(o.RestoreLimit, "its throughput taken from what it read"),
	}
	for _, w := range workloads {
		if p, ok := w.(*populateWorkload); ok {
			h = append(h, fmt.Sprintf("populate: publish %d new objects (%s with .siginfo) as bitbake does (temp file, chmod, link, unlink; siginfo by rename), %d at a time, until all are in the bucket", len(p.objs), formatBytes(p.bytes()), p.conc))
		}
	}
	h = append(h, "peak memory: VmHWM of the mount process before its unmount; median over the runs of each phase, the largest phase shown")
	if o.IndexObjects > 0 && withIndex {
		h = append(h, fmt.Sprintf("index: the index package in-process: decode a snapshot of %s synthetic objects, heap kept per object, mean Lookup of hits and .sig misses", thousands(o.IndexObjects)))
	}
	for _, s := range systems {
		h = append(h, fmt.Sprintf("%s: %s", s.Name(), s.Version()))
	}
	return h
}

var memRow = Row{ID: "memory", Title: "peak memory of the mount", Unit: "MB"}

// measure runs every phase on every system, --runs times, and records the
// results; it returns notes on phases that ran only once.
func (b *Bench) measure(ctx context.Context, env *Env, systems []System, phases []Phase, res *Results) ([]string, error) {
	o := b.Opts
	var notes []string
	repeatSkip := map[string]bool{}
	peaks := map[string]map[string][]float64{} // system → phase → VmHWM of each run, MB
	for run := 1; run <= o.Runs; run++ {
		for _, sys := range systems {
			for _, ph := range phases {
				if err := ctx.Err(); err != nil {
					return notes, err
				}
				if repeatSkip[sys.Name()+"/"+ph.Name] || (b.skip != nil && b.skip(sys, ph)) {
					continue
				}
				start := time.Now()
				p, ok := b.runPhase(ctx, env, sys, ph, run, res)
				if !ok {
					continue
				}
				if sys.Role() == RoleMount && p > 0 {
					if peaks[sys.Name()] == nil {
						peaks[sys.Name()] = map[string][]float64{}
					}
					peaks[sys.Name()][ph.Name] = append(peaks[sys.Name()][ph.Name], float64(p)/1e6)
				}
				if took := time.Since(start); run == 1 && o.Runs > 1 && o.RepeatLimit > 0 && took > o.RepeatLimit {
					repeatSkip[sys.Name()+"/"+ph.Name] = true
					notes = append(notes, fmt.Sprintf("%s: %s ran once (%.0f s, over --repeat-limit %v)", sys.Name(), ph.Name, took.Seconds(), o.RepeatLimit))
				}
			}
		}
	}
	// Phases ran a different number of times (--repeat-limit): the peak is
	// the largest of the phases' medians.
	for _, sys := range systems {
		if sys.Role() != RoleMount || peaks[sys.Name()] == nil {
			continue
		}
		m := failed(errors.New("no VmHWM read from /proc"))
		for _, ph := range phases {
			if v := peaks[sys.Name()][ph.Name]; len(v) > 0 && median(v) > m.Value {
				m = Measurement{Value: median(v), Note: "in " + ph.Name}
			}
		}
		res.Add(memRow.ID, sys.Name(), m)
	}
	return notes, nil
}

// indexScale measures the index package at scale, --runs times.
func (b *Bench) indexScale(ctx context.Context, names []string, res *Results) error {
	w := &indexScale{n: b.Opts.IndexObjects, names: names, seed: b.Opts.Seed}
	for _, r := range w.Rows() {
		res.AddRow(r)
	}
	for run := 1; run <= b.Opts.Runs; run++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		ms := w.Run()
		for i, r := range w.Rows() {
			res.Add(r.ID, "sstatefs", ms[i])
		}
		b.Log.Printf("run %d/%d index scale: load %s s, %s B/object, lookup %s ns", run, b.Opts.Runs,
			formatValue(ms[0].Value), formatValue(ms[1].Value), formatValue(ms[2].Value))
	}
	return nil
}

// runPhase mounts sys fresh, runs the phase's workloads on it, records
// their measurements and unmounts. It returns the peak memory of the
// mount, and false if no workload of the phase applies to sys.
func (b *Bench) runPhase(ctx context.Context, env *Env, sys System, ph Phase, run int, res *Results) (int64, bool) {
	var ws []Workload
	for _, w := range ph.Workloads {
		if w.Applies(sys.Role()) {
			ws = append(ws, w)
		}
	}
	if len(ws) == 0 {
		return 0, false
	}
	record := func(w Workload, ms []Measurement) {
		for i, r := range w.Rows() {
			res.Add(r.ID, sys.Name(), ms[i])
			b.Log.Printf("run %d/%d %s: %s: %s", run, b.Opts.Runs, sys.Name(), r.Title, describe(ms[i], r.Unit))
		}
	}
	failAll := func(ws []Workload, err error) {
		for _, w := range ws {
			ms := make([]Measurement, len(w.Rows()))
			for i := range ms {
				ms[i] = failed(err)
			}
			record(w, ms)
		}
	}
	dir := filepath.Join(env.Work, "runs", slug(sys.Name()), fmt.Sprintf("run%d-%s", run, ph.Name))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		failAll(ws, err)
		return 0, true
	}
	dropCaches()
	m, err := sys.Mount(ctx, env, dir)
	if err != nil {
		failAll(ws, fmt.Errorf("mount: %w", err))
		return 0, true
	}
	unmount := b.Cleanup.Add(sys.Name()+" mount "+dir, func() {
		if err := m.Unmount(); err != nil {
			b.Log.Printf("%s: unmount: %v", sys.Name(), err)
		}
	})
	if b.afterMount != nil {
		b.afterMount(sys, ph)
	}
	for i, w := range ws {
		ms := w.Run(ctx, env, sys, m, run)
		record(w, ms)
		if ms[0].Err != nil && i+1 < len(ws) {
			failAll(ws[i+1:], fmt.Errorf("not run: %s failed", w.Rows()[0].Title))
			break
		}
	}
	peak := m.PeakRSS()
	unmount()
	if c, ok := m.(interface{ CPUTime() time.Duration }); ok {
		b.Log.Printf("run %d/%d %s: %s: the mount process used %.2f s of CPU, peak memory %.1f MB", run, b.Opts.Runs, sys.Name(), ph.Name, c.CPUTime().Seconds(), float64(peak)/1e6)
	}
	if !b.Opts.Keep {
		if err := safeRemoveAll(dir); err != nil {
			b.Log.Printf("not removing %s: %v", dir, err)
		}
	}
	return peak, true
}

func describe(m Measurement, unit string) string {
	switch {
	case m.Err != nil:
		return "error: " + m.Err.Error()
	case m.NA:
		return "n/a"
	case m.Note != "" && m.Value == 0:
		return m.Note
	}
	s := formatValue(m.Value) + " " + unit
	if m.Approx {
		s = "~" + s
	}
	if m.Note != "" {
		s += " (" + m.Note + ")"
	}
	return s
}

// safeRemoveAll removes dir unless something is still mounted below it:
// removing through a mount would delete objects from the bucket.
func safeRemoveAll(dir string) error {
	if mps := mountinfo.Under(dir); len(mps) > 0 {
		return fmt.Errorf("%s is still mounted", mps[0])
	}
	return os.RemoveAll(dir)
}

func slug(s string) string { return strings.ReplaceAll(s, " ", "-") }

func limitNote(d time.Duration, then string) string {
	if d <= 0 {
		return ""
	}
	return fmt.Sprintf(" (a system still busy after %v is stopped and %s)", d, then)
}

func objectBytes(objs []Object) int64 {
	var n int64
	for _, o := range objs {
		n += o.Size
	}
	return n
}

func largestObject(objs []Object) Object {
	var l Object
	for _, o := range objs {
		if o.Present && o.Size > l.Size {
			l = o
		}
	}
	return l
}

func largest(objs []Object) int64 {
	var n int64
	for _, o := range objs {
		if o.Present {
			n = max(n, o.Size)
		}
	}
	return n
}

func argsSummary(o Options) string {
	s := ""
	if o.Quick {
		s += " --quick"
	}
	s += fmt.Sprintf(" --rtt %v --size %s --readers %s --runs %d", o.RTT, formatBytes(o.Size), joinInts(o.Readers), o.Runs)
	for _, f := range []struct {
		name, sep string
		value     []string
	}{{"sstatefs-flags", " ", o.SstatefsFlags}, {"rclone-flags", " ", o.RcloneFlags}, {"s3fs-options", ",", o.S3fsOptions}} {
		if len(f.value) > 0 {
			s += fmt.Sprintf(" --%s %q", f.name, strings.Join(f.value, f.sep))
		}
	}
	return s
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = fmt.Sprint(n)
	}
	return strings.Join(s, ",")
}

// gitVersion describes the tree sstatefs was built from.
func gitVersion(root string) string {
	out, err := exec.Command("git", "-C", root, "describe", "--always", "--dirty").Output()
	if err != nil {
		return "built from " + root
	}
	return "built from " + root + " at " + strings.TrimSpace(string(out))
}
