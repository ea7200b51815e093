package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/config"
	"github.com/sstatefs/sstatefs/internal/stores"
	"github.com/sstatefs/sstatefs/internal/units"
	"github.com/sstatefs/sstatefs/transfer"
)

// bytesBar returns a Progress that draws a byte-count progress bar on w.
func bytesBar(w io.Writer, what string) (transfer.Progress, func()) {
	var bar *progressbar.ProgressBar
	progress := func(done, total int, doneBytes, totalBytes int64) {
		if bar == nil {
			bar = progressbar.NewOptions64(totalBytes,
				progressbar.OptionSetWriter(w),
				progressbar.OptionSetDescription(fmt.Sprintf("%s %d objects", what, total)),
				progressbar.OptionShowBytes(true),
				progressbar.OptionThrottle(200*time.Millisecond),
				progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
			)
		}
		bar.Describe(fmt.Sprintf("%s %d/%d objects", what, done, total))
		bar.Set64(doneBytes)
	}
	finish := func() {
		if bar != nil {
			bar.Finish()
		}
	}
	return progress, finish
}

func cmdPush(args []string) int {
	c := newCommand("push", `Usage: sstatefs push [flags] DIR

Uploads the sstate objects of a local SSTATE_DIR (an existing sstate-cache) to the store, in
parallel. Objects the store already has are skipped (never replaced); running it again after an
interruption finishes the job. Uploaded objects are recorded in the index. Files that are not
sstate objects (temp files, locks) are ignored. Symbolic links are never followed (each is
warned about), nor are names with control characters pushed.
`+storeChoiceDoc(publishStore), "store", "log", "publish.writer_id")
	c.choosesStore(publishStore)
	jobs := c.flags.Int("jobs", 8, "objects uploaded at once")
	quiet := c.flags.Bool("quiet", false, "no progress bar")
	if !c.parse(args, 1, 1, checkJobs(jobs)) {
		return 2
	}
	cfg := c.cfg
	dir := c.arg(0)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		fmt.Fprintf(os.Stderr, "sstatefs push: %s is not a directory\n", dir)
		return 2
	}
	log := c.logger()
	ctx, stop, store, err := c.open()
	defer stop()
	if err != nil {
		return c.fail(err)
	}
	if backend.IsReadOnly(store) { // a store the configuration does not know as read-only
		fmt.Fprintf(os.Stderr, "sstatefs push: store %s is read-only; push to an s3:// or file:// store\n", storeLabel(c.sc))
		return 1
	}
	known, err := indexOf(ctx, store)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sstatefs push: %v\n", err)
		return 1
	}
	// records are written in batches of up to 1,000 (Push flushes the last)
	journal := index.NewJournal(store, index.JournalOptions{Writer: cfg.Publish.WriterID, Logger: log, Window: cfg.Publish.RecordInterval.Duration})
	progress, finish := bytesBar(progressOut(*quiet), "pushing")
	start := time.Now()
	res, err := transfer.Push(ctx, transfer.PushOptions{
		Dir: dir, Store: store, Recorder: journal.Later(), Known: known, Jobs: *jobs, Progress: progress, Logger: log,
	})
	finish()
	fmt.Printf("pushed %d objects (%s) to %s in %s; %d already known, %d already in the store, %d kept by the store (other content), %d files ignored\n",
		res.Uploaded, units.Bytes(res.UploadedBytes), storeLabel(c.sc), time.Since(start).Round(time.Millisecond),
		res.Skipped, res.Existing, res.Conflicts, res.Ignored)
	if res.Symlinks > 0 {
		fmt.Fprintf(os.Stderr, "sstatefs push: %d symbolic links under sstate names not pushed (links are never followed; bitbake links objects it got from a file:// SSTATE_MIRRORS into SSTATE_DIR: push that mirror directory itself)\n", res.Symlinks)
	}
	if res.BadNames > 0 {
		fmt.Fprintf(os.Stderr, "sstatefs push: %d files with control characters in their names not pushed (see the warnings)\n", res.BadNames)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sstatefs push: %v (run it again to retry)\n", err)
		return 1
	}
	return 0
}

func cmdExport(args []string) int {
	c := newCommand("export", `Usage: sstatefs export [flags] DIR

Writes a plain SSTATE_DIR copy of the stores, or of the objects in --list, into DIR (for
air-gapped sites, SDKs and backups). Several stores are merged in trust order: each name is
taken from the most trusted store that has it, as the mount serves it; a store without an
index that cannot be listed (a plain HTTP mirror) is left out of a whole export, with a
warning. Objects already in DIR with the right size are skipped; every object is verified
against its store's index before it is renamed into place.
`+storeChoiceDoc(allStores), "store", "log")
	c.choosesStore(allStores)
	jobs := c.flags.Int("jobs", 8, "objects downloaded at once")
	list := c.flags.String("list", "", "file with the object paths to export, one per line (- for stdin); their .siginfo/.sig come along")
	quiet := c.flags.Bool("quiet", false, "no progress bar")
	if !c.parse(args, 1, 1, checkJobs(jobs)) {
		return 2
	}
	var keys []string
	var err error
	badLines := 0
	if *list != "" {
		var bad []string
		keys, bad, err = readList(*list)
		if err != nil {
			fmt.Fprintf(os.Stderr, "sstatefs export: --list: %v\n", err)
			return 2
		}
		// A bad line is reported and the good ones are exported.
		for _, b := range bad {
			fmt.Fprintf(os.Stderr, "sstatefs export: --list %s\n", b)
		}
		badLines = len(bad)
		if len(keys) == 0 && badLines > 0 {
			fmt.Fprintf(os.Stderr, "sstatefs export: --list %s: no valid object path (%d bad lines)\n", *list, badLines)
			return 2
		}
	}
	log := c.logger()
	ctx, stop := c.signalContext()
	defer stop()
	scs := c.cfg.Stores
	if c.storeName != "" {
		scs = []config.StoreConfig{c.sc}
	}
	sources, err := exportSources(ctx, scs)
	if err != nil {
		return c.fail(err)
	}
	progress, finish := bytesBar(progressOut(*quiet), "exporting")
	start := time.Now()
	res, err := transfer.Export(ctx, transfer.ExportOptions{
		Dir: c.arg(0), Sources: sources, Keys: keys, Jobs: *jobs, Progress: progress, Logger: log,
	})
	finish()
	from := storeLabel(scs[0])
	if len(scs) > 1 {
		from = fmt.Sprintf("%d stores", len(scs))
	}
	fmt.Printf("exported %d objects (%s) from %s to %s in %s; %d already there\n",
		res.Written, units.Bytes(res.WrittenBytes), from, c.arg(0), time.Since(start).Round(time.Millisecond), res.Skipped)
	if len(scs) > 1 {
		for i, n := range res.BySource {
			fmt.Printf("  %s: %d objects (%s), %d already there\n", storeLabel(scs[i]), n.Written, units.Bytes(n.WrittenBytes), n.Skipped)
		}
	}
	if len(res.Unlisted) > 0 {
		fmt.Fprintf(os.Stderr, "sstatefs export: not exported: %s: no index, and the store cannot be listed (export its objects with --store NAME --list FILE)\n", strings.Join(res.Unlisted, ", "))
	}
	for _, k := range res.Missing {
		fmt.Fprintf(os.Stderr, "not in the store%s: %s\n", plural(len(scs), "", "s"), k)
	}
	for _, e := range res.Invalid {
		fmt.Fprintf(os.Stderr, "sstatefs export: not exported: %v\n", e)
	}
	status := 0
	if err != nil {
		fmt.Fprintf(os.Stderr, "sstatefs export: %v (run it again to retry those)\n", err)
		status = 1
	}
	if len(res.Missing) > 0 {
		fmt.Fprintf(os.Stderr, "sstatefs export: %d listed objects are not in the store%s\n", len(res.Missing), plural(len(scs), "", "s"))
		status = 1
	}
	if badLines > 0 {
		fmt.Fprintf(os.Stderr, "sstatefs export: %d bad lines in %s were skipped (fix them; running it again does not help)\n", badLines, *list)
		status = 1
	}
	return status
}

// readList reads object paths, one per line; blank lines and # comments
// are skipped. A line that is not a valid object path (a control
// character, "..", an empty element) goes into bad as "FILE:LINE: %q: why",
// so that one typo does not stop the others.
func readList(path string) (keys, bad []string, err error) {
	var r io.Reader = os.Stdin
	name := "stdin"
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, nil, err
		}
		defer f.Close()
		r, name = f, path
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		raw := sc.Text()
		line := strings.TrimSpace(raw)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key := strings.TrimPrefix(line, "/")
		if err := backend.CheckKey(key); err != nil {
			why := "not a valid object path"
			if strings.ContainsFunc(key, func(c rune) bool { return c < 0x20 || c == 0x7f }) {
				why += " (control character)"
			}
			bad = append(bad, fmt.Sprintf("%s:%d: %q: %s", name, n, raw, why))
			continue
		}
		keys = append(keys, key)
	}
	return keys, bad, sc.Err()
}

// checkJobs is the rule of --jobs.
func checkJobs(jobs *int) func() error {
	return func() error {
		if *jobs < 1 {
			return errors.New("--jobs must be at least 1")
		}
		return nil
	}
}

// exportSources opens the stores and loads their indexes, in trust order.
// A store whose index cannot be read stops the export: exporting without
// it would take a less trusted store's bytes for the names it has.
func exportSources(ctx context.Context, scs []config.StoreConfig) ([]transfer.Source, error) {
	var sources []transfer.Source
	for _, sc := range scs {
		fmt.Fprintf(os.Stderr, "sstatefs export: store %s\n", storeLabel(sc))
		store, err := stores.Open(ctx, sc)
		if err != nil {
			return nil, fmt.Errorf("store %s: %w", config.StoreName(sc), err)
		}
		ix, err := indexOf(ctx, store)
		if err != nil && len(scs) > 1 {
			return nil, fmt.Errorf("store %s: %w (to export the other stores, name each with --store NAME)", config.StoreName(sc), err)
		}
		if err != nil {
			return nil, fmt.Errorf("store %s: %w", config.StoreName(sc), err)
		}
		sources = append(sources, transfer.Source{Name: config.StoreName(sc), Store: store, Index: ix})
	}
	return sources, nil
}

// plural is one when n is 1, else many.
func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// indexOf loads the store's index; a store without one gives nil.
func indexOf(ctx context.Context, store backend.Store) (*index.Index, error) {
	ix, err := index.Load(ctx, store)
	if errors.Is(err, index.ErrNoIndex) {
		return nil, nil
	}
	return ix, err
}
