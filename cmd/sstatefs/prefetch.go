package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/mount"
	"github.com/sstatefs/sstatefs/internal/mountinfo"
	"github.com/sstatefs/sstatefs/internal/units"
	"github.com/sstatefs/sstatefs/sstate"
)

func cmdPrefetch(args []string) int {
	c := newCommand("prefetch", `Usage: sstatefs prefetch [flags] [MOUNTPOINT]

Fetches objects into the disk cache of a running mount ahead of a build, in parallel, so that the
restore reads from local disk. MOUNTPOINT names the mount; without it, the mount using
--cache-dir. Objects come from --list and/or --accessed-since.`, "store", "cache.dir")
	list := c.flags.String("list", "", "file naming the objects (- for stdin): object paths, `find` output, or bitbake's `--setscene-only -DD` log; every sstate path found in it counts")
	since := c.flags.Duration("accessed-since", 0, "also every object the index records as used within this long (e.g. 168h: what last week's builds used)")
	jobs := c.flags.Int("jobs", 8, "objects fetched at once")
	quiet := c.flags.Bool("quiet", false, "no progress bar")
	if !c.parse(args, 0, -1, func() error {
		if *list == "" && *since <= 0 {
			return errors.New("nothing to prefetch: give --list and/or --accessed-since")
		}
		if *jobs < 1 || c.flags.NArg() > 1 {
			return errors.New("--jobs must be at least 1, and at most one MOUNTPOINT")
		}
		return nil
	}) {
		return 2
	}
	cacheDir := c.cfg.Cache.Dir
	if c.flags.NArg() == 1 {
		mp, _ := filepath.Abs(c.arg(0))
		_, source, ok := mountinfo.At(mp)
		if !ok {
			fmt.Fprintf(os.Stderr, "sstatefs prefetch: %s is not a mount\n", mp)
			return 1
		}
		cacheDir = source
	}
	ctx, stop := c.signalContext()
	defer stop()
	keys := map[string]bool{}
	if *list != "" {
		r := io.Reader(os.Stdin)
		if *list != "-" {
			f, err := os.Open(*list)
			if err != nil {
				fmt.Fprintf(os.Stderr, "sstatefs prefetch: --list: %v\n", err)
				return 2
			}
			defer f.Close()
			r = f
		}
		found, err := objectPaths(r)
		if err != nil {
			fmt.Fprintf(os.Stderr, "sstatefs prefetch: --list: %v\n", err)
			return 2
		}
		for _, k := range found {
			keys[k] = true
		}
	}
	if *since > 0 {
		store, err := c.store(ctx)
		if err == nil {
			var ix *index.Index
			ix, err = index.Load(ctx, store)
			cutoff := time.Now().Add(-*since)
			ix.Objects(func(o index.Object) bool {
				if !o.Accessed.IsZero() && o.Accessed.After(cutoff) {
					keys[o.Key] = true
				}
				return true
			})
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "sstatefs prefetch: --accessed-since: %v\n", err)
			return 1
		}
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	res, err := prefetchViaMount(ctx, cacheDir, sorted, *jobs, progressOut(*quiet))
	fmt.Printf("prefetched %d objects (%s), %d were cached already, %d not in the store, %d failed\n",
		res.Fetched, units.Bytes(res.Bytes), res.Cached, len(res.Missing), len(res.Failed))
	for _, f := range res.Failed {
		fmt.Fprintf(os.Stderr, "failed: %s\n", f)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sstatefs prefetch: %v\n", err)
		return 1
	}
	if len(res.Failed) > 0 {
		return 1
	}
	return 0
}

// objectPathRE finds sstate object paths in any text: lists, find output,
// bitbake debug logs ("SState: Found valid sstate file /…/ab/cd/sstate:…").
var objectPathRE = regexp.MustCompile(`(?:[A-Za-z0-9._-]+/)?[0-9a-f]{2}/[0-9a-f]{2}/sstate:[^\s'"]+`)

// objectPaths returns the sstate object keys mentioned in r, each once, in
// order of appearance.
func objectPaths(r io.Reader) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		for _, m := range objectPathRE.FindAllString(sc.Text(), -1) {
			key := m
			if _, err := sstate.Parse(key); err != nil {
				// a directory that is not a NATIVELSBSTRING (sstate-cache/): drop it
				if i := bytes.IndexByte([]byte(key), '/'); i >= 0 {
					key = key[i+1:]
				}
				if _, err := sstate.Parse(key); err != nil {
					continue
				}
			}
			if !seen[key] {
				seen[key] = true
				out = append(out, key)
			}
		}
	}
	return out, sc.Err()
}

// prefetchViaMount sends the keys to the running mount in batches.
func prefetchViaMount(ctx context.Context, cacheDir string, keys []string, jobs int, progress io.Writer) (mount.PrefetchResult, error) {
	var total mount.PrefetchResult
	sock := mount.ControlSocket(cacheDir)
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	bar := progressbar.NewOptions(len(keys), progressbar.OptionSetWriter(progress), progressbar.OptionSetDescription("prefetching"),
		progressbar.OptionShowCount(), progressbar.OptionThrottle(200*time.Millisecond), progressbar.OptionOnCompletion(func() { fmt.Fprintln(progress) }))
	batch := max(jobs*4, 16)
	for i := 0; i < len(keys); i += batch {
		part := keys[i:min(i+batch, len(keys))]
		body, _ := json.Marshal(mount.PrefetchRequest{Keys: part, Jobs: jobs})
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://sstatefs/prefetch", bytes.NewReader(body))
		resp, err := client.Do(req)
		if err != nil {
			return total, fmt.Errorf("no sstatefs mount answers on %s (is one running with --cache-dir %s?): %w", sock, cacheDir, err)
		}
		var res mount.PrefetchResult
		err = json.NewDecoder(resp.Body).Decode(&res)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			return total, fmt.Errorf("mount answered %s: %v", resp.Status, err)
		}
		total.Fetched += res.Fetched
		total.Cached += res.Cached
		total.Bytes += res.Bytes
		total.Missing = append(total.Missing, res.Missing...)
		total.Failed = append(total.Failed, res.Failed...)
		bar.Add(len(part))
	}
	bar.Finish()
	return total, nil
}
