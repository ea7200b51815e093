package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/config"
	"github.com/sstatefs/sstatefs/internal/stores"
	"github.com/sstatefs/sstatefs/internal/units"
	"github.com/sstatefs/sstatefs/transfer"
)

func cmdPromote(args []string) int { return promote(args, os.Stdout, os.Stderr) }

// promote is the promote command writing its results to stdout and its
// problems to stderr.
func promote(args []string, stdout, stderr io.Writer) int {
	c := newCommand("promote", `Usage: sstatefs promote --from NAME --to NAME [--list FILE | --accessed-since D] [flags]

Copies objects from one configured store into another, writable one, normally from a less
trusted store into a more trusted one (a project's artifacts becoming the company's), with
their .siginfo and .sig companions and the hash equivalence records whose unihash names them.
Every object is verified against the source's index before it is created at the destination;
an existing object is never replaced (other bytes under the name are reported as a conflict).
Running it again after an interruption copies only what is missing.

Objects: every object of the source's index, or those listed in --list (store keys or bare
sstate file names, one a line; # comments), or those bitbake used since --accessed-since (a
date 2026-11-01, a time 2026-11-01T08:00:00Z, or a duration ago such as 720h).
Exit status: 0 done, 1 something failed or a listed object is missing, 2 refused.`, "store", "log", "publish.writer_id")
	from := c.flags.String("from", "", "name of the store to copy from (see [[store]] name)")
	to := c.flags.String("to", "", "name of the writable store to copy into")
	list := c.flags.String("list", "", "file with the objects to promote, one store key or sstate file name a line (- for stdin)")
	since := c.flags.String("accessed-since", "", "promote the objects used since this date, time or duration ago")
	dryRun := c.flags.Bool("dry-run", false, "list what would be copied; copy nothing")
	jobs := c.flags.Int("jobs", 8, "objects copied at once")
	quiet := c.flags.Bool("quiet", false, "no progress bar")
	if !c.parse(args, 0, 0, checkJobs(jobs)) {
		return 2
	}
	// Refusals and failures go to stderr (c.report writes to os.Stderr),
	// every problem of the command line at once.
	refuse := func(err error) int {
		fmt.Fprintf(stderr, "sstatefs promote: %v\n", err)
		return 2
	}
	var errs []error
	if *from == "" || *to == "" {
		errs = append(errs, errors.New("--from and --to name the stores"))
	}
	if *list != "" && *since != "" {
		errs = append(errs, errors.New("--list and --accessed-since select differently: give one"))
	}
	var sinceT time.Time
	if *since != "" {
		var err error
		if sinceT, err = parseSince(*since, time.Now()); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return refuse(errors.Join(errs...))
	}
	cfg := c.cfg
	fi, fromErr := cfg.StoreNamed(*from)
	ti, toErr := cfg.StoreNamed(*to)
	if err := errors.Join(namedErr("--from", fromErr), namedErr("--to", toErr)); err != nil {
		return refuse(err)
	}
	fromSC, toSC := cfg.Stores[fi], cfg.Stores[ti]
	fromName, toName := describeStore(fromSC), describeStore(toSC)
	switch {
	case fi == ti:
		return refuse(fmt.Errorf("--from and --to are the same store, %s", fromName))
	case !toSC.Writable():
		return refuse(fmt.Errorf("--to %s is read-only (an http(s) mirror, or read_only = true): promote into a writable s3:// or file:// store", toName))
	case ti > fi:
		fmt.Fprintf(stderr, "sstatefs promote: warning: %s is less trusted than %s (later in the store list): this copies trusted objects into a less trusted store\n", toName, fromName)
	}
	var keys []string
	badLines := 0
	if *list != "" {
		var bad []string
		var err error
		if keys, bad, err = readList(*list); err != nil {
			return refuse(fmt.Errorf("--list: %w", err))
		}
		for _, b := range bad {
			fmt.Fprintf(stderr, "sstatefs promote: --list %s\n", b)
		}
		badLines = len(bad)
		if len(keys) == 0 {
			return refuse(fmt.Errorf("--list %s: no object named (%d bad lines)", *list, badLines))
		}
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "sstatefs promote: %v\n", err)
		return 1
	}
	log := c.logger()
	ctx, stop := c.signalContext()
	defer stop()
	src, err := stores.Open(ctx, fromSC)
	if err != nil {
		return fail(fmt.Errorf("--from %s: %w", fromName, err))
	}
	dst, err := stores.Open(ctx, toSC)
	if err != nil {
		return fail(fmt.Errorf("--to %s: %w", toName, err))
	}
	fromIx, err := indexOf(ctx, src)
	if err != nil {
		return fail(fmt.Errorf("--from %s: %w", fromName, err))
	}
	if fromIx == nil {
		fmt.Fprintf(stderr, "sstatefs promote: %s has no index: its objects cannot be verified against a digest (only compared with a copy the destination already has)\n", fromName)
	}
	toIx, err := indexOf(ctx, dst)
	if err != nil {
		return fail(fmt.Errorf("--to %s: %w", toName, err))
	}
	var journal *index.Journal
	if !*dryRun {
		journal = index.NewJournal(dst, index.JournalOptions{Writer: cfg.Publish.WriterID, Logger: log})
	}
	progress, finish := bytesBar(progressOut(*quiet || *dryRun), "promoting")
	start := time.Now()
	res, err := transfer.Promote(ctx, transfer.PromoteOptions{
		From: src, To: dst, FromIndex: fromIx, ToIndex: toIx, Recorder: journal,
		Keys: keys, AccessedSince: sinceT, DryRun: *dryRun, Jobs: *jobs, Progress: progress, Logger: log,
	})
	finish()
	if journal != nil {
		// Records are durable once Added and Reported return; this writes
		// what a call cancelled by a signal left in its batch (its object
		// is in the store), so on a context of its own.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		ferr := journal.Flush(fctx)
		cancel()
		if ferr != nil && err == nil {
			err = fmt.Errorf("writing the index journal of %s: %w", toName, ferr)
		}
	}
	printPromoted(stdout, stderr, res, fromName, toName, *dryRun, time.Since(start))
	status := 0
	switch {
	case ctx.Err() != nil:
		fmt.Fprintf(stderr, "sstatefs promote: interrupted (run it again to finish: what is at %s is not copied again)\n", toName)
		status = 1
	case err != nil:
		fmt.Fprintf(stderr, "sstatefs promote: %v (run it again to retry)\n", err)
		status = 1
	}
	if len(res.Missing) > 0 {
		fmt.Fprintf(stderr, "sstatefs promote: %d listed objects are not in %s\n", len(res.Missing), fromName)
		status = 1
	}
	if badLines > 0 {
		fmt.Fprintf(stderr, "sstatefs promote: %d bad lines in %s were skipped (fix them; running it again does not help)\n", badLines, *list)
		status = 1
	}
	return status
}

// printPromoted prints what Promote did: the summary line on stdout (a dry
// run lists the objects first), what needs attention on stderr.
func printPromoted(stdout, stderr io.Writer, res transfer.PromoteResult, from, to string, dryRun bool, took time.Duration) {
	if dryRun {
		var size int64
		for _, o := range res.Planned {
			fmt.Fprintf(stdout, "%s\t%s\n", o.Key, units.Bytes(o.Size))
			size += o.Size
		}
		fmt.Fprintf(stdout, "would promote %d objects (%s) and %d equivalence records from %s to %s; %d already there, %d conflicts, %d missing\n",
			len(res.Planned), units.Bytes(size), res.Equivalences, from, to, res.Existing, len(res.Conflicts), len(res.Missing))
	} else {
		fmt.Fprintf(stdout, "promoted %d objects (%s) and %d equivalence records from %s to %s in %s; %d already there, %d conflicts, %d missing, %d failed\n",
			res.Promoted, units.Bytes(res.PromotedBytes), res.Equivalences, from, to, took.Round(time.Millisecond),
			res.Existing, len(res.Conflicts), len(res.Missing), len(res.Failed))
	}
	for _, k := range res.Conflicts {
		fmt.Fprintf(stderr, "conflict (kept the destination's other bytes; the .siginfo and .sig stay behind too): %s\n", k)
	}
	if res.EquivalenceConflicts > 0 {
		fmt.Fprintf(stderr, "sstatefs promote: %d equivalence records not promoted: %s maps their taskhash to another unihash (see the warnings)\n", res.EquivalenceConflicts, to)
	}
	for _, k := range res.Missing {
		fmt.Fprintf(stderr, "not in the source: %s\n", k)
	}
	for _, k := range res.Unverified {
		fmt.Fprintf(stderr, "copied unverified (no digest in the source index): %s\n", k)
	}
}

// parseSince reads --accessed-since: a date (midnight UTC), an RFC 3339
// time, or a duration meaning that long before now.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("--accessed-since %q: a duration ago cannot be negative", s)
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("--accessed-since %q: want a date (2026-11-01), an RFC 3339 time (2026-11-01T08:00:00Z) or a duration ago (720h)", s)
}

// namedErr names the flag a store lookup failed for.
func namedErr(flag string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", flag, err)
}

// describeStore names a store in messages: its name and URL.
func describeStore(sc config.StoreConfig) string {
	return config.StoreName(sc) + " (" + stores.Name(sc) + ")"
}
