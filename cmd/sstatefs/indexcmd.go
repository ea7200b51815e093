package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/config"
	"github.com/sstatefs/sstatefs/internal/stores"
	"github.com/sstatefs/sstatefs/internal/units"
)

func cmdIndex(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, "Usage: sstatefs index build|show|compact [flags]\n")
		return 2
	}
	switch args[0] {
	case "build":
		return cmdIndexBuild(args[1:])
	case "show":
		return cmdIndexShow(args[1:])
	case "compact":
		return cmdIndexCompact(args[1:])
	default:
		fmt.Fprintf(os.Stderr, "sstatefs index: unknown command %q (want build, show or compact)\n", args[0])
		return 2
	}
}

func cmdIndexBuild(args []string) int {
	c := newCommand("index build", "Usage: sstatefs index build [flags]\n\nScans a store, hashes every object and writes the index into the store under .sstatefs/.\nDigests of objects unchanged since the previous index are reused.\n"+storeChoiceDoc(writesStore), "store")
	c.choosesStore(writesStore)
	concurrency := c.flags.Int("concurrency", 8, "objects hashed in parallel")
	full := c.flags.Bool("full", false, "hash every object again instead of reusing the digests of unchanged objects")
	quiet := c.flags.Bool("quiet", false, "no progress bar")
	if !c.parse(args, 0, -1, func() error {
		if *concurrency < 1 {
			return errors.New("--concurrency must be at least 1")
		}
		return nil
	}) {
		return 2
	}
	ctx, stop := c.signalContext()
	defer stop()
	c.announce()
	if err := indexBuild(ctx, c.sc, *concurrency, *full, progressOut(*quiet), os.Stdout); err != nil {
		return c.fail(err)
	}
	return 0
}

// progressOut is where progress bars go: stderr when it is a terminal or
// when asked for, nowhere with --quiet.
func progressOut(quiet bool) io.Writer {
	if quiet {
		return io.Discard
	}
	return os.Stderr
}

func indexBuild(ctx context.Context, sc config.StoreConfig, concurrency int, full bool, progress, out io.Writer) error {
	log := slog.New(slog.NewTextHandler(progress, &slog.HandlerOptions{Level: slog.LevelWarn}))
	store, err := stores.Open(ctx, sc)
	if err != nil {
		return err
	}
	var prev *index.Index
	if !full {
		prev, err = index.Load(ctx, store)
		if err != nil && !errors.Is(err, index.ErrNoIndex) {
			fmt.Fprintf(progress, "previous index unusable, hashing everything: %v\n", err)
			prev = nil
		}
	}
	start := time.Now()
	var bar *progressbar.ProgressBar
	ix, err := index.Build(ctx, store, index.BuildOptions{
		Logger:      log,
		Concurrency: concurrency,
		Previous:    prev,
		Progress: func(done, total int, bytes int64) {
			if bar == nil {
				bar = progressbar.NewOptions(total,
					progressbar.OptionSetWriter(progress),
					progressbar.OptionSetDescription("hashing objects"),
					progressbar.OptionShowCount(),
					progressbar.OptionSetItsString("objects"),
					progressbar.OptionShowIts(),
					progressbar.OptionThrottle(200*time.Millisecond),
					progressbar.OptionOnCompletion(func() { fmt.Fprintln(progress) }),
				)
			}
			bar.Set(done)
		},
	})
	if err != nil {
		return err
	}
	if bar != nil {
		bar.Finish()
	}
	if err := index.Save(ctx, store, ix); err != nil {
		return err
	}
	fmt.Fprintf(out, "indexed %d objects (%s) of %s in %s\n", ix.Len(), units.Bytes(ix.TotalSize()), storeLabel(sc), time.Since(start).Round(time.Millisecond))
	return nil
}

func cmdIndexShow(args []string) int {
	c := newCommand("index show", "Usage: sstatefs index show [flags]\n\nPrints a summary of a store's index.\n"+storeChoiceDoc(readsStore), "store")
	c.choosesStore(readsStore)
	if !c.parse(args, 0, -1, nil) {
		return 2
	}
	ctx, stop := c.signalContext()
	defer stop()
	c.announce()
	if err := indexShow(ctx, c.sc, os.Stdout); err != nil {
		return c.fail(err)
	}
	return 0
}

func indexShow(ctx context.Context, sc config.StoreConfig, out io.Writer) error {
	store, err := stores.Open(ctx, sc)
	if err != nil {
		return err
	}
	ix, err := index.Load(ctx, store)
	if err != nil {
		if errors.Is(err, index.ErrNoIndex) {
			return fmt.Errorf("%w: %s (create one with: sstatefs index build --store %s)", err, store.Location(), config.StoreName(sc))
		}
		return err
	}
	s := index.Summarize(ix)
	fmt.Fprintf(out, "store:    %s\n", storeLabel(sc))
	fmt.Fprintf(out, "created:  %s (%s ago)\n", s.Created.UTC().Format(time.RFC3339), time.Since(s.Created).Round(time.Second))
	fmt.Fprintf(out, "objects:  %d (%s)\n", s.Objects, units.Bytes(s.Bytes))
	fmt.Fprintf(out, "kinds:    %d packages, %d .siginfo, %d .sig\n", s.Packages, s.Siginfo, s.Sig)
	fmt.Fprintf(out, "equivalences: %d hash equivalence records\n", s.Equivalences)
	src := s.Sources
	fmt.Fprintf(out, "sources:  snapshot %v (complete: %v); %d journal segments included, %d of them applied on top of the snapshot\n", src.Snapshot, src.Complete, src.Covered, src.Applied)
	for _, err := range src.Skipped {
		fmt.Fprintf(out, "          skipped: %v\n", err)
	}
	if s.Accessed > 0 {
		fmt.Fprintf(out, "accessed: %d objects have access records, last %s\n", s.Accessed, s.LastAccess.UTC().Format(time.RFC3339))
	}
	sg := countSignatures(ix)
	fmt.Fprintf(out, "signed:   %d packages with a .sig, %d with sign-offs (%d with both), %d unsigned\n", sg.withSig, sg.withSignoffs, sg.withBoth, sg.unsigned)
	if len(sg.byKey) > 0 {
		fmt.Fprintf(out, "sign-offs: %d by %d keys (not verified here: sstatefs verify checks them)\n", sg.signoffs, len(sg.byKey))
	}
	printCounts(out, "sign-offs by key fingerprint", sg.byKey, nil)
	printCounts(out, "by prefix", s.ByPrefix, map[string]string{"": "(top level)"})
	printCounts(out, "by task", s.ByTask, nil)
	return nil
}

// signatureCounts counts the packages of an index by what vouches for
// them: a stored .sig beside them, sign-offs over their bytes, both or
// neither; and the sign-offs by key.
type signatureCounts struct {
	withSig, withSignoffs, withBoth, unsigned, signoffs int
	byKey                                               map[string]int
}

func countSignatures(ix *index.Index) signatureCounts {
	c := signatureCounts{byKey: map[string]int{}}
	ix.Objects(func(o index.Object) bool {
		if !strings.HasSuffix(o.Key, ".tar.zst") && !strings.HasSuffix(o.Key, ".tgz") {
			return true
		}
		_, sig := ix.Lookup(o.Key + ".sig")
		offs := len(ix.Signoffs(o.Key)) > 0
		switch {
		case sig && offs:
			c.withBoth++
		case !sig && !offs:
			c.unsigned++
		}
		if sig {
			c.withSig++
		}
		if offs {
			c.withSignoffs++
		}
		return true
	})
	ix.EachSignoff(func(s index.Signoff) bool {
		c.signoffs++
		c.byKey[s.Fingerprint]++
		return true
	})
	return c
}

func printCounts(out io.Writer, title string, m map[string]int, rename map[string]string) {
	if len(m) == 0 {
		return
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i] < keys[j]
	})
	fmt.Fprintf(out, "%s:\n", title)
	for _, k := range keys {
		name := k
		if r, ok := rename[k]; ok {
			name = r
		}
		fmt.Fprintf(out, "  %-28s %d\n", name, m[k])
	}
}

func cmdIndexCompact(args []string) int {
	c := newCommand("index compact", "Usage: sstatefs index compact [flags]\n\nFolds the journal segments that mounts wrote into a store's new index snapshot, then deletes folded\nsegments older than --grace. Safe while mounts keep writing; one compaction runs at a time.\n"+storeChoiceDoc(writesStore), "store", "log")
	c.choosesStore(writesStore)
	grace := c.flags.Duration("grace", index.DefaultGrace, "journal segments younger than this are kept after folding (readers may be loading them)")
	if !c.parse(args, 0, -1, func() error {
		if *grace < 0 {
			return errors.New("--grace must not be negative")
		}
		return nil
	}) {
		return 2
	}
	ctx, stop, store, err := c.open()
	defer stop()
	if err != nil {
		return c.fail(err)
	}
	start := time.Now()
	res, err := index.Compact(ctx, store, index.CompactOptions{Grace: *grace, Logger: c.logger()})
	if err != nil {
		return c.fail(err)
	}
	fmt.Printf("compacted %s: %d segments folded, %d deleted, %d objects in the snapshot, in %s\n",
		storeLabel(c.sc), res.Folded, res.Deleted, res.Objects, time.Since(start).Round(time.Millisecond))
	return 0
}
