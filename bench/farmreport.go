package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/sstatefs/sstatefs/internal/netem"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

// Published S3 Standard us-east-1 prices, for the cost model.
const (
	pricePUT     = 0.005 / 1000  // PUT, COPY, POST, LIST per request
	priceGET     = 0.0004 / 1000 // GET, HEAD and the rest per request
	priceStorage = 0.023         // per GB-month
)

// requestCost prices requests by kind.
func requestCost(c netem.Counts) float64 {
	var usd float64
	for k, n := range c.Requests {
		switch k {
		case netem.KindPUT, netem.KindPOST, netem.KindLIST:
			usd += float64(n) * pricePUT
		case netem.KindDELETE: // free on S3
		default:
			usd += float64(n) * priceGET
		}
	}
	return usd
}

// runScenarios runs --buildview and/or --farm and prints their tables
// (Markdown, also written to --out).
func (b *Bench) runScenarios(ctx context.Context) int {
	md, err := b.scenarios(ctx)
	if md != "" {
		fmt.Fprint(b.Stdout, "\n"+md)
		if b.Opts.Out != "" {
			if werr := os.WriteFile(b.Opts.Out, []byte(md), 0o644); werr != nil {
				fmt.Fprintf(os.Stderr, "bench: %v\n", werr)
				return 1
			}
			b.Log.Printf("wrote %s", b.Opts.Out)
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return 130
		}
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	return 0
}

func (b *Bench) scenarios(ctx context.Context) (string, error) {
	o := b.Opts
	vgw := testutil.FindVersitygw()
	if vgw == "" {
		return "", errNoVersitygw
	}
	if err := fuseUsable(); err != nil {
		return "", err
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	sfs := &sstatefsSystem{root: root, extra: o.SstatefsFlags}
	env, err := b.setup(ctx, vgw)
	if err != nil {
		return "", err
	}
	if err := b.buildSstatefs(ctx, env, sfs); err != nil {
		return "", err
	}
	var md strings.Builder
	fmt.Fprintf(&md, "sstatefs %s, %s; machine: %s; %s behind the latency proxy\n\n",
		sfs.version, time.Now().UTC().Format("2006-01-02 15:04 UTC"), machine(), env.Server.Version)
	if o.BuildView {
		st, err := b.prepareStore(ctx, env, sfs)
		if err != nil {
			return md.String(), err
		}
		res, err := b.runBuildView(ctx, env, sfs, st)
		md.WriteString(buildViewTable(o, st, res))
		if err != nil {
			return md.String(), err
		}
		for _, r := range res {
			if r.Err != nil {
				return md.String(), fmt.Errorf("build-time view, %s at %v: %w", r.System, r.RTT, r.Err)
			}
		}
	}
	if o.Farm {
		res, err := b.runFarm(ctx, env, sfs)
		var mem string
		if err == nil && o.FarmIndexObjects > 0 {
			names := RealNames()
			if o.NamesFile != "" {
				names, _ = ReadNames(o.NamesFile)
			}
			peak, ready, merr := b.farmMemory(ctx, env, sfs, names)
			if merr != nil {
				err = merr
			} else {
				mem = fmt.Sprintf("Peak memory of a mount (VmHWM once ready, %.1f s to mount at %v RTT) with an index of %s objects and %s access records in %s journal segments: **%.0f MB**.\n\n",
					ready.Seconds(), o.RTT, thousands(o.FarmIndexObjects), thousands(o.FarmAccess), thousands((o.FarmAccess+399_999)/400_000), float64(peak)/1e6)
			}
		}
		md.WriteString(farmTable(o, res))
		md.WriteString(mem)
		if len(res) > 0 {
			md.WriteString(costModel(res))
		}
		if err != nil {
			return md.String(), err
		}
	}
	return md.String(), nil
}

func buildViewTable(o Options, st *store, res []buildViewResult) string {
	var s strings.Builder
	fmt.Fprintf(&s, "### Build-time view: restore of %s wanted objects (%s present, %s), %d at a time\n\n",
		thousands(len(st.objs)), thousands(len(st.present)), formatBytes(StoreBytes(st.objs)), o.BuildViewJobs)
	s.WriteString("bitbake's two phases: the check of every object (stat of the object, its `.sig` and its `.siginfo`, utimensat of those there; one after the other on file systems as `sstate_checkhashes` does, in parallel against the mirror as its thread pool does), then the unpack of those there in parallel (stat, a whole read checked against the CRC, stat and coreutils touch of each companion). HTTP: HEADs for the check, then a GET of the object and its `.siginfo` into a local dir and the unpack there. The mount's time and requests include its start (the index load).\n\n")
	s.WriteString("| RTT | system | time (s) | requests | GET | HEAD | LIST | other | MB down | vs local |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	local := map[time.Duration]time.Duration{}
	for _, r := range res {
		if r.System == "local disk" {
			local[r.RTT] = r.Took
		}
	}
	for _, r := range res {
		if r.Err != nil {
			fmt.Fprintf(&s, "| %v | %s | error: %v |||||||\n", r.RTT, r.System, r.Err)
			continue
		}
		q := r.Reqs.Requests
		other := r.Reqs.Total() - q[netem.KindGET] - q[netem.KindHEAD] - q[netem.KindLIST]
		ratio := "1"
		if l := local[r.RTT]; l > 0 && r.System != "local disk" {
			ratio = fmt.Sprintf("%.2fx", r.Took.Seconds()/l.Seconds())
		}
		fmt.Fprintf(&s, "| %v | %s | %.2f | %s | %s | %s | %s | %s | %.1f | %s |\n", r.RTT, r.System, r.Took.Seconds(), thousands(int(r.Reqs.Total())),
			thousands(int(q[netem.KindGET])), thousands(int(q[netem.KindHEAD])), thousands(int(q[netem.KindLIST])), thousands(int(other)), float64(r.Reqs.Down)/1e6, ratio)
	}
	return s.String() + "\n"
}

func durs(v []time.Duration) (med, worst float64) {
	if len(v) == 0 {
		return 0, 0
	}
	f := make([]float64, len(v))
	for i, d := range v {
		f[i] = d.Seconds()
	}
	return median(f), slices.Max(f)
}

func perObject(c netem.Counts, kind string, n int) string {
	if n == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", float64(c.Requests[kind])/float64(n))
}

func farmTable(o Options, res []farmResult) string {
	var s strings.Builder
	fmt.Fprintf(&s, "### Farm: W builders pushing into one bucket at %v RTT while new mounts start and restore\n\n", o.RTT)
	if len(res) == 0 {
		return s.String() + "(no run finished)\n\n"
	}
	r0 := res[0]
	fmt.Fprintf(&s, "Each build: %s objects with their `.siginfo` (%s files, %s), 80%% the same names in every build, 20%% its own; each builder is an `sstatefs push --jobs %d` process; mounts start one after the other during the storm, each looking up %d random names of a build and restoring those present.\n\n",
		thousands(r0.BuildObjects/2), thousands(r0.BuildObjects), formatBytes(r0.BuildBytes), o.FarmJobs, o.FarmRestore)
	s.WriteString("| | " + strings.Join(mapRes(res, func(r farmResult) string { return fmt.Sprintf("W = %d", r.W) }), " | ") + " |\n")
	s.WriteString("|---|" + strings.Repeat("---:|", len(res)) + "\n")
	row := func(title string, f func(r farmResult) string) {
		s.WriteString("| " + title + " | " + strings.Join(mapRes(res, f), " | ") + " |\n")
	}
	row("distinct files published (bytes)", func(r farmResult) string {
		return fmt.Sprintf("%s (%s)", thousands(r.Stored), formatBytes(r.StoredBytes))
	})
	row("storm: every push done (s)", func(r farmResult) string { return fmt.Sprintf("%.1f", r.Storm.Seconds()) })
	row("objects recorded per second", func(r farmResult) string {
		return fmt.Sprintf("%.0f", float64(r.Stored)/r.Storm.Seconds())
	})
	row("journal segments written (per build)", func(r farmResult) string {
		return fmt.Sprintf("%s (%.1f)", thousands(r.Segments), float64(r.Segments)/float64(r.W))
	})
	row("journal bytes", func(r farmResult) string { return formatBytes(r.SegmentBytes) })
	row("new mount ready during the storm: median / worst (s; mounts)", func(r farmResult) string {
		m, w := durs(r.ReadyDuring)
		return fmt.Sprintf("%.2f / %.2f (%d)", m, w, len(r.ReadyDuring))
	})
	row("new mount ready after the storm (s)", func(r farmResult) string { return fmt.Sprintf("%.2f", r.ReadyAfter.Seconds()) })
	row("its requests until ready", func(r farmResult) string { return thousands(int(r.StartAfter.Total())) })
	row("index load after the storm, in-process (s)", func(r farmResult) string { return fmt.Sprintf("%.2f", r.LoadAfter.Seconds()) })
	row("refresh, nothing changed: requests, ms", func(r farmResult) string {
		return fmt.Sprintf("%d, %.0f", r.RefreshSame.Reqs.Total(), ms(r.RefreshSame.Took))
	})
	row("refresh after one more push of N files: N, requests, ms", func(r farmResult) string {
		return fmt.Sprintf("%d, %d, %.0f", r.SmallPush, r.RefreshSmall.Reqs.Total(), ms(r.RefreshSmall.Took))
	})
	row("compaction (s)", func(r farmResult) string { return fmt.Sprintf("%.2f", r.Compact.Seconds()) })
	row("snapshot size", func(r farmResult) string { return formatBytes(r.Snapshot) })
	row("load of the compacted index, in-process (s)", func(r farmResult) string { return fmt.Sprintf("%.2f", r.LoadCompacted.Seconds()) })
	row("new mount ready after compaction (s)", func(r farmResult) string { return fmt.Sprintf("%.2f", r.ReadyCompact.Seconds()) })
	row("its requests until ready", func(r farmResult) string { return thousands(int(r.StartCompact.Total())) })
	for _, k := range []string{netem.KindPUT, netem.KindGET, netem.KindHEAD, netem.KindLIST, netem.KindPOST, netem.KindDELETE} {
		row("writers: "+k+" per published file", func(r farmResult) string { return perObject(r.Writer, k, r.Stored) })
	}
	row("writers: requests per build", func(r farmResult) string {
		return thousands(int(r.Writer.Total() / int64(r.W)))
	})
	for _, k := range []string{netem.KindGET, netem.KindHEAD, netem.KindLIST} {
		row("mounts: "+k+" per restored object", func(r farmResult) string { return perObject(r.Reader, k, r.Restored) })
	}
	row("index check: published files found exactly once", func(r farmResult) string { return thousands(r.Checked) })
	s.WriteString("\nThe writers' requests include each push's start (its listing of the store's index); the mounts' include their start (the index load) and the objects' reads. Refresh: one `index.Live` refresh in-process through the proxy.\n\n")
	return s.String()
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func mapRes(res []farmResult, f func(farmResult) string) []string {
	out := make([]string, len(res))
	for i, r := range res {
		out[i] = f(r)
	}
	return out
}

// costModel prices one build's publishing and one full restore, from the
// largest W measured.
func costModel(res []farmResult) string {
	r := res[len(res)-1]
	perBuild := netem.Counts{Requests: map[string]int64{}}
	for k, v := range r.Writer.Requests {
		perBuild.Requests[k] = v / int64(r.W)
	}
	perBuild.Up, perBuild.Down = r.Writer.Up/int64(r.W), r.Writer.Down/int64(r.W)
	objects := int64(r.BuildObjects / 2)
	// A restore is a mount's start plus one GET per object (what the
	// build-time view measures: nothing else goes to the store once the
	// index is loaded). The storm's per-object figures are not used: there
	// a few lookups share the cost of each start.
	restore := func(start netem.Counts) netem.Counts {
		c := netem.Counts{Requests: map[string]int64{}, Down: start.Down + r.ObjectBytes}
		for k, v := range start.Requests {
			c.Requests[k] = v
		}
		c.Requests[netem.KindGET] += objects
		return c
	}
	before, after := restore(r.StartAfter), restore(r.StartCompact)
	uniqueGB := float64(r.StoredBytes) / float64(r.W) / 1e9
	var s strings.Builder
	fmt.Fprintf(&s, "### Cost model (W = %d, at published S3 Standard us-east-1 prices: PUT/POST/LIST $0.005 per 1,000, GET/HEAD $0.0004 per 1,000, storage $0.023/GB-month; DELETE free)\n\n", r.W)
	s.WriteString("| per build | requests | by kind | bytes up | bytes down | request cost |\n|---|---:|---|---:|---:|---:|\n")
	fmt.Fprintf(&s, "| publish (a push of the build) | %s | %s | %s | %s | $%.4f |\n", thousands(int(perBuild.Total())), kinds(perBuild), formatBytes(perBuild.Up), formatBytes(perBuild.Down), requestCost(perBuild))
	for _, x := range []struct {
		when string
		c    netem.Counts
	}{{"after the storm, before compaction", before}, {"after compaction", after}} {
		fmt.Fprintf(&s, "| restore of the whole build through a new mount, %s (its start as measured + 1 GET per object) | %s | %s | – | ~%s | $%.4f |\n",
			x.when, thousands(int(x.c.Total())), kinds(x.c), formatBytes(x.c.Down), requestCost(x.c))
	}
	fmt.Fprintf(&s, "\nStorage: the bucket holds %s for %d builds (%.3f GB a build, shared objects counted once): $%.4f per build-month.\n\n", formatBytes(r.StoredBytes), r.W, uniqueGB, uniqueGB*priceStorage)
	return s.String()
}

func kinds(c netem.Counts) string {
	var ks []string
	for k := range c.Requests {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	var parts []string
	for _, k := range ks {
		if c.Requests[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %s", k, thousands(int(c.Requests[k]))))
		}
	}
	return strings.Join(parts, ", ")
}
