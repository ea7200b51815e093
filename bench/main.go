// Command bench measures sstatefs against its peers (rclone mount, s3fs),
// a plain S3 client and the local disk, on one machine with no outside
// network: a real S3 server (versitygw) on 127.0.0.1 behind a proxy that
// adds a round-trip time, a synthetic sstate store with the real name
// distribution of a core-image-minimal build, and the workloads bitbake
// puts on SSTATE_DIR. It prints one table (and writes it as Markdown with
// --out). See bench/README.md.
//
//	go run ./bench [--quick] [--rtt 10ms] [--size 1GiB] [--readers 2,8] [--runs 3]
//	               [--systems sstatefs,rclone,s3fs] [--out FILE] [--keep] [--workdir DIR]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Options are the benchmark's parameters.
type Options struct {
	RTT             time.Duration
	Size            int64
	Readers         []int
	Runs            int
	Quick           bool
	Systems         []string
	Keep            bool
	AccessLog       bool
	Workdir         string
	Out             string
	NamesFile       string // "" for the embedded core-image-minimal list
	Names           int    // how many of the names to use (0: all)
	Absent          float64
	CheckLimit      time.Duration
	RestoreLimit    time.Duration
	RepeatLimit     time.Duration
	PopulateN       int
	PopulateSize    int64
	PopulateTimeout time.Duration
	IndexObjects    int
	Seed            uint64
	RcloneFlags     []string
	SstatefsFlags   []string
	S3fsOptions     []string

	// --farm and --buildview (farm.go, buildview.go) replace the table of
	// the peers with their own.
	Farm             bool
	FarmWriters      []int
	FarmObjects      int   // objects of one build (each with its .siginfo)
	FarmSize         int64 // bytes of one build
	FarmJobs         int
	FarmRestore      int // objects each mount started during the storm restores
	FarmIndexObjects int // the memory measurement's index (0: skip it)
	FarmAccess       int // and its access records
	BuildView        bool
	BuildViewRTTs    []time.Duration
	BuildViewJobs    int
}

// allSystems are the mounts --systems may name, in table order.
var allSystems = []string{"sstatefs", "rclone", "s3fs"}

func parseFlags(args []string, stderr io.Writer) (Options, error) {
	var o Options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&o.RTT, "rtt", 10*time.Millisecond, "round-trip time the proxy adds between the clients and the S3 server")
	size := fs.String("size", "1GiB", "bytes of the synthetic store (present objects and their .siginfo); --quick: 64MiB")
	readers := fs.String("readers", "2,8", "parallel readers of the restore workloads, comma-separated")
	fs.IntVar(&o.Runs, "runs", 3, "runs of each workload; the table shows medians (--quick: 1)")
	fs.BoolVar(&o.Quick, "quick", false, "small and fast: 64MiB, 300 of the names, one run, shorter limits")
	systems := fs.String("systems", strings.Join(allSystems, ","), "mounts to measure (sstatefs, rclone, s3fs); missing peers are skipped with a note")
	fs.BoolVar(&o.Keep, "keep", false, "keep the work directory (store, caches, logs) for inspection")
	fs.BoolVar(&o.AccessLog, "access-log", false, "have versitygw log every request to versitygw-access.log in the work directory (with --keep)")
	fs.StringVar(&o.Workdir, "workdir", "", "directory to create the work directory in (default $TMPDIR)")
	fs.StringVar(&o.Out, "out", "", "also write the table as Markdown to this file")
	fs.StringVar(&o.NamesFile, "names", "", "object name list to use instead of the embedded core-image-minimal one")
	fs.IntVar(&o.Names, "objects", 0, "use a random subset of this many names (0: all; --quick: 300)")
	fs.Float64Var(&o.Absent, "absent", 1.0/3, "fraction of the wanted objects missing from the store")
	fs.DurationVar(&o.CheckLimit, "check-limit", 45*time.Second, "stop a check after this long and extrapolate (0: never; --quick: 15s)")
	fs.DurationVar(&o.RestoreLimit, "restore-limit", 60*time.Second, "stop a cold restore after this long and report the throughput so far (0: never; --quick: 30s)")
	fs.DurationVar(&o.RepeatLimit, "repeat-limit", 30*time.Second, "a phase whose first run takes longer is not repeated (0: always repeat)")
	fs.IntVar(&o.PopulateN, "populate", 32, "objects the populate workload publishes (--quick: 8)")
	popSize := fs.String("populate-size", "", "bytes the populate workload publishes (default --size/16)")
	fs.DurationVar(&o.PopulateTimeout, "populate-timeout", 2*time.Minute, "how long to wait for published objects to reach the bucket")
	fs.IntVar(&o.IndexObjects, "index-objects", 1_000_000, "objects in the index scale workload (0: skip it)")
	seed := fs.Uint64("seed", 1, "seed of the synthetic store")
	rcloneFlags := fs.String("rclone-flags", "", "extra flags for rclone mount, space-separated")
	sstatefsFlags := fs.String("sstatefs-flags", "", "extra flags for sstatefs mount, space-separated")
	s3fsOptions := fs.String("s3fs-options", "", "extra -o options for s3fs, comma-separated")
	fs.BoolVar(&o.Farm, "farm", false, "run the farm simulation instead of the comparison: W builders push into one bucket while new mounts start and restore")
	farmWriters := fs.String("farm-writers", "1,10,50", "builders of the farm simulation, comma-separated: one run each")
	fs.IntVar(&o.FarmObjects, "farm-objects", 2897, "objects of one farm build, from the name list (each with its .siginfo; --quick: 200)")
	farmSize := fs.String("farm-size", "1GiB", "bytes of one farm build (--quick: 8MiB)")
	fs.IntVar(&o.FarmJobs, "farm-jobs", 4, "uploads at once of each farm builder (sstatefs push --jobs)")
	fs.IntVar(&o.FarmRestore, "farm-restore", 100, "objects each mount started during the storm looks up and restores (--quick: 30)")
	fs.IntVar(&o.FarmIndexObjects, "farm-index-objects", 1_000_000, "objects of the index a mount's peak memory is measured with (0: skip; --quick: 200000)")
	fs.IntVar(&o.FarmAccess, "farm-access-records", 10_000_000, "access records in that index's journal (--quick: 2000000)")
	fs.BoolVar(&o.BuildView, "buildview", false, "run the build-time view instead of the comparison: bitbake's restore sequence from a local dir, the mount and an HTTP mirror")
	buildViewRTTs := fs.String("buildview-rtt", "10ms,100ms", "round-trip times of the build-time view, comma-separated")
	fs.IntVar(&o.BuildViewJobs, "buildview-jobs", 8, "objects restored at once in the build-time view (bitbake's parallel setscene tasks)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: go run ./bench [flags]\n\nMeasures sstatefs, rclone mount, s3fs, a plain S3 client and the local disk on a synthetic\nsstate store served by versitygw behind a latency proxy on 127.0.0.1. See bench/README.md.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.Quick {
		if !set["size"] {
			*size = "64MiB"
		}
		if !set["runs"] {
			o.Runs = 1
		}
		if !set["objects"] {
			o.Names = 300
		}
		if !set["check-limit"] {
			o.CheckLimit = 15 * time.Second
		}
		if !set["restore-limit"] {
			o.RestoreLimit = 30 * time.Second
		}
		if !set["populate"] {
			o.PopulateN = 8
		}
		if !set["populate-timeout"] {
			o.PopulateTimeout = time.Minute
		}
		if !set["farm-objects"] {
			o.FarmObjects = 200
		}
		if !set["farm-size"] {
			*farmSize = "8MiB"
		}
		if !set["farm-restore"] {
			o.FarmRestore = 30
		}
		if !set["farm-index-objects"] {
			o.FarmIndexObjects = 200_000
		}
		if !set["farm-access-records"] {
			o.FarmAccess = 2_000_000
		}
	}
	var err error
	var problems []string
	if o.Size, err = parseBytes(*size); err != nil {
		problems = append(problems, "--size: "+err.Error())
	}
	o.PopulateSize = o.Size / 16
	if *popSize != "" {
		if o.PopulateSize, err = parseBytes(*popSize); err != nil {
			problems = append(problems, "--populate-size: "+err.Error())
		}
	}
	for _, r := range strings.Split(*readers, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(r))
		if err != nil || n < 1 || n > 256 {
			problems = append(problems, fmt.Sprintf("--readers: %q is not a number from 1 to 256", r))
			continue
		}
		if !slices.Contains(o.Readers, n) {
			o.Readers = append(o.Readers, n)
		}
	}
	for _, s := range strings.Split(*systems, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !slices.Contains(allSystems, s) {
			problems = append(problems, fmt.Sprintf("--systems: unknown system %q (want %s)", s, strings.Join(allSystems, ", ")))
			continue
		}
		if !slices.Contains(o.Systems, s) {
			o.Systems = append(o.Systems, s)
		}
	}
	if o.RTT < 0 {
		problems = append(problems, "--rtt: must not be negative")
	}
	if o.Runs < 1 {
		problems = append(problems, "--runs: must be at least 1")
	}
	if o.Absent < 0 || o.Absent >= 1 {
		problems = append(problems, "--absent: must be from 0 to below 1")
	}
	if o.PopulateN < 0 || o.Names < 0 || o.IndexObjects < 0 {
		problems = append(problems, "--populate, --objects and --index-objects must not be negative")
	}
	if o.FarmSize, err = parseBytes(*farmSize); err != nil {
		problems = append(problems, "--farm-size: "+err.Error())
	}
	for _, v := range strings.Split(*farmWriters, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 || n > 200 {
			problems = append(problems, fmt.Sprintf("--farm-writers: %q is not a number from 1 to 200", v))
			continue
		}
		o.FarmWriters = append(o.FarmWriters, n)
	}
	for _, v := range strings.Split(*buildViewRTTs, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil || d < 0 {
			problems = append(problems, fmt.Sprintf("--buildview-rtt: %q is not a duration", v))
			continue
		}
		o.BuildViewRTTs = append(o.BuildViewRTTs, d)
	}
	if o.FarmObjects < 1 || o.FarmJobs < 1 || o.FarmRestore < 0 || o.FarmIndexObjects < 0 || o.FarmAccess < 0 || o.BuildViewJobs < 1 {
		problems = append(problems, "--farm-objects, --farm-jobs and --buildview-jobs must be at least 1, the other --farm counts not negative")
	}
	o.Seed = *seed
	o.RcloneFlags = strings.Fields(*rcloneFlags)
	o.SstatefsFlags = strings.Fields(*sstatefsFlags)
	for _, opt := range strings.Split(*s3fsOptions, ",") {
		if opt = strings.TrimSpace(opt); opt != "" {
			o.S3fsOptions = append(o.S3fsOptions, opt)
		}
	}
	if len(problems) > 0 {
		return o, errors.New(strings.Join(problems, "\n"))
	}
	return o, nil
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	opts, err := parseFlags(args, os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 2
	}
	cleanup := &Cleanup{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logger := newLogger(os.Stderr)

	// On SIGINT/SIGTERM: stop the workloads, unmount, stop the servers,
	// then exit. The cleanup runs here too, so a workload blocked on a
	// hung mount does not keep it from happening; a second signal exits at
	// once.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		logger.Printf("%v: stopping and cleaning up (again to exit at once)", s)
		cancel()
		go func() {
			<-sigs
			logger.Printf("exiting without finishing the cleanup; left: %s", strings.Join(cleanup.Pending(), ", "))
			os.Exit(130)
		}()
		cleanup.Run()
		os.Exit(130)
	}()

	b := &Bench{Opts: opts, Log: logger, Cleanup: cleanup, Stdout: os.Stdout}
	code := b.Run(ctx)
	cleanup.Run()
	return code
}

// Logger prints progress to stderr with the time since the start.
type Logger struct {
	w     io.Writer
	start time.Time
}

func newLogger(w io.Writer) *Logger { return &Logger{w: w, start: time.Now()} }

func (l *Logger) Printf(format string, args ...any) {
	fmt.Fprintf(l.w, "[%6.1fs] %s\n", time.Since(l.start).Seconds(), fmt.Sprintf(format, args...))
}

func (l *Logger) Elapsed() time.Duration { return time.Since(l.start) }

func machine() string {
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		f := strings.Fields(string(b))
		if len(f) > 1 {
			if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				mem = fmt.Sprintf(", %s RAM", formatBytes(kb<<10))
			}
		}
	}
	return fmt.Sprintf("%d cores%s, %s/%s, %s", runtime.NumCPU(), mem, runtime.GOOS, runtime.GOARCH, runtime.Version())
}
