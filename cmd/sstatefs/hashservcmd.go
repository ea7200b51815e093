package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/hashimport"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/access"
	"github.com/sstatefs/sstatefs/internal/config"
	"github.com/sstatefs/sstatefs/internal/mount"
	"github.com/sstatefs/sstatefs/view"
)

func cmdHashserv(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, "Usage: sstatefs hashserv serve|import [flags]\n")
		return 2
	}
	switch args[0] {
	case "serve":
		return cmdHashservServe(args[1:])
	case "import":
		return cmdHashservImport(args[1:])
	default:
		fmt.Fprintf(os.Stderr, "sstatefs hashserv: unknown command %q (want serve or import)\n", args[0])
		return 2
	}
}

func cmdHashservServe(args []string) int {
	c := newCommand("hashserv serve", `Usage: sstatefs hashserv serve [flags]

Serves bitbake's hash equivalence protocol (OEHASHEQUIV 1.1) from the equivalence records in a
store's index, and records reports into the store, so bitbake can use sstatefs as
BB_HASHSERVE or as the BB_HASHSERVE_UPSTREAM of its local server. No database server to run.
(sstatefs mount --hashserv ADDR does the same inside a mount, from every store.) A read-only
store's server answers reports without recording them.
`+storeChoiceDoc(readsStore),
		"store", "log", "hashserv", "index.refresh_interval", "index.max_age", "publish.writer_id")
	c.choosesStore(readsStore)
	listen := c.flags.String("listen", "", "where to serve: unix:///path/to.sock or 127.0.0.1:PORT, as in BB_HASHSERVE (default: hashserv.listen, else unix:///run/sstatefs/hashserv.sock)")
	readOnly := c.flags.Bool("read-only", false, "answer reports without recording them, like bitbake's --read-only server (for BB_HASHSERVE_UPSTREAM)")
	if !c.parse(args, 0, -1, nil) {
		return 2
	}
	cfg := c.cfg
	if *listen == "" {
		*listen = cfg.Hashserv.Listen
	}
	if *listen == "" {
		*listen = "unix:///run/sstatefs/hashserv.sock"
	}
	log := c.logger()
	ctx, stop, store, err := c.open()
	defer stop()
	if err != nil {
		return c.fail(err)
	}
	live := index.NewLive(store, index.LiveOptions{Interval: cfg.Index.RefreshInterval.Duration, MaxAge: cfg.Index.MaxAge.Duration, Logger: log})
	if err := live.LoadOnce(ctx); err != nil && !errors.Is(err, index.ErrNoIndex) {
		log.Warn("index not loaded yet", "error", err)
	}
	go live.Run(ctx)
	if len(cfg.Stores) > 1 {
		log.Info("serving the equivalence records of one store (a mount's --hashserv serves every store's)", "store", config.StoreName(c.sc))
	}
	ro := *readOnly || cfg.Hashserv.ReadOnly || !c.sc.Writable() || backend.IsReadOnly(store)
	journal := index.NewJournal(store, index.JournalOptions{Writer: cfg.Publish.WriterID, Logger: log})
	journal.OnWrite(live.Apply)
	go journal.Run(ctx)
	// without a mount, the socket and the right to record are the
	// invoking user's (and root's)
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	owner, err := mount.HashservSocket(cfg.Hashserv, uid, gid)
	if err != nil {
		c.report(err)
		return 2
	}
	_, addr, err := mount.StartHashserv(ctx, *listen, mount.NewEquivBackend(view.New(view.Options{Store: store, Index: live}), journal), ro, owner, access.Rule{UID: uid, GID: gid}, log)
	if err != nil {
		return c.fail(err)
	}
	log.Info("serving hash equivalence", "addr", addr, "store", storeLabel(c.sc), "equivalences", live.Current().NumEquivalences(), "read_only", ro)
	<-ctx.Done()
	fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	journal.Flush(fctx)
	return 0
}

func cmdHashservImport(args []string) int {
	c := newCommand("hashserv import", `Usage: sstatefs hashserv import [flags]

Imports hash equivalence records into a store's index: every record of a bitbake-hashserv
sqlite database (--sqlite), or the records of the given pairs from a running server (--server with
--pairs). Records are written as journal segments; the first report for a taskhash wins, so an
import never overrides what the index already says.
`+storeChoiceDoc(writesStore), "store", "log", "publish.writer_id")
	c.choosesStore(writesStore)
	db := c.flags.String("sqlite", "", "a bitbake-hashserv database file (its -d option); read-only")
	server := c.flags.String("server", "", "a running hash equivalence server (unix:///path or host:port)")
	pairs := c.flags.String("pairs", "", "with --server: file of 'METHOD TASKHASH' lines to import (the protocol cannot list a server's records)")
	if !c.parse(args, 0, -1, func() error {
		if (*db == "") == (*server == "") {
			return errors.New("give exactly one of --sqlite and --server")
		}
		if *server != "" && *pairs == "" {
			return errors.New("--server needs --pairs: the hash equivalence protocol cannot list a server's records (to import everything, read its database file with --sqlite)")
		}
		return nil
	}) {
		return 2
	}
	cfg := c.cfg
	log := c.logger()
	ctx, stop, store, err := c.open()
	defer stop()
	if err == nil && backend.IsReadOnly(store) {
		err = fmt.Errorf("store %s is read-only: import into an s3:// or file:// store", storeLabel(c.sc))
	}
	if err != nil {
		return c.fail(err)
	}
	journal := index.NewJournal(store, index.JournalOptions{Writer: cfg.Publish.WriterID, Logger: log, MaxBatch: 10000})
	var batch []index.Equivalence
	flush := func() error {
		// Reported batches concurrent callers into one segment: report a
		// batch concurrently and wait for all.
		errs := make(chan error, len(batch))
		for _, e := range batch {
			go func() { errs <- journal.Reported(ctx, e) }()
		}
		var first error
		for range batch {
			if err := <-errs; err != nil && first == nil {
				first = err
			}
		}
		batch = batch[:0]
		return first
	}
	imported := 0
	add := func(e index.Equivalence) error {
		batch = append(batch, e)
		imported++
		if len(batch) >= 2000 {
			return flush()
		}
		return nil
	}
	var res hashimport.Result
	if *db != "" {
		res, err = hashimport.FromSQLite(ctx, *db, add)
	} else {
		var ps []hashimport.MethodTaskhash
		ps, err = readPairs(*pairs)
		if err == nil {
			res, err = hashimport.FromServer(ctx, *server, hashimport.ServerOptions{Pairs: ps}, add)
		}
	}
	if err == nil {
		err = flush()
	}
	fmt.Printf("imported %d equivalence records into %s (%d read, %d skipped)\n", imported, storeLabel(c.sc), res.Read, res.Skipped)
	for _, p := range res.Problems {
		fmt.Fprintf(os.Stderr, "skipped: %s\n", p)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sstatefs hashserv import: %v\n", err)
		return 1
	}
	return 0
}

func readPairs(path string) ([]hashimport.MethodTaskhash, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []hashimport.MethodTaskhash
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			return nil, fmt.Errorf("%s:%d: want 'METHOD TASKHASH', got %q", path, n, line)
		}
		out = append(out, hashimport.MethodTaskhash{Method: fields[0], Taskhash: fields[1]})
	}
	return out, sc.Err()
}
