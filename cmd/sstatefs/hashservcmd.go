package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/hashimport"
	"github.com/sstatefs/sstatefs/hashserv"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/access"
	"github.com/sstatefs/sstatefs/internal/unixsock"
	"github.com/sstatefs/sstatefs/sstate"
)

// equivBackend serves bitbake's hash equivalence protocol from the index:
// reads from the live merged index, reports recorded into the store
// through the journal (and applied to the live index at once).
type equivBackend struct {
	live    *index.Live
	journal *index.Journal
}

var _ hashserv.Backend = (*equivBackend)(nil)

func (b *equivBackend) Get(method, taskhash string) (index.Equivalence, bool) {
	return b.live.Current().Equivalence(method, taskhash)
}

func (b *equivBackend) GetByOuthash(method, outhash string) (index.Equivalence, bool) {
	return b.live.Current().ByOuthash(method, outhash)
}

// ObjectExists: bitbake asks only for objects that exist, so this answers
// from the index whether an sstate object named by the unihash is present,
// at the top level or under any NATIVELSBSTRING directory.
func (b *equivBackend) ObjectExists(unihash string) bool {
	ix := b.live.Current()
	if len(unihash) < 4 || !sstate.IsHash(unihash) {
		return false
	}
	sub := unihash[0:2] + "/" + unihash[2:4]
	dirs := []string{sub}
	for _, e := range ix.Children("") {
		if e.IsDir && sstate.IsNativeDir(e.Name) {
			dirs = append(dirs, e.Name+"/"+sub)
		}
	}
	needle := ":" + unihash + "_"
	for _, d := range dirs {
		for _, e := range ix.Children(d) {
			if !e.IsDir && strings.Contains(e.Name, needle) {
				return true
			}
		}
	}
	return false
}

func (b *equivBackend) Record(ctx context.Context, e index.Equivalence) error {
	err := b.journal.Reported(ctx, e)
	if errors.Is(err, index.ErrInvalidEquivalence) {
		// the client's fault, not the store's: bitbake gets an error answer
		return fmt.Errorf("%w: %w", hashserv.ErrInvalidRecord, err)
	}
	return err
}

// startHashserv listens on addr and serves the protocol until ctx ends.
// A unix socket gets owner's uid, gid and mode; every connection (unix or
// loopback TCP) whose peer the rule does not allow is served read-only.
func startHashserv(ctx context.Context, addr string, b hashserv.Backend, readOnly bool, owner unixsock.Owner, rule access.Rule, log *slog.Logger) (*hashserv.Server, string, error) {
	ln, err := hashserv.ListenAs(addr, owner)
	if err != nil {
		return nil, "", fmt.Errorf("hash equivalence server on %s: %w", addr, err)
	}
	gate := &recordGate{rule: rule, log: log, warned: map[uint32]bool{}}
	srv := hashserv.New(b, hashserv.Options{Logger: log, ReadOnly: readOnly, MayRecord: gate.mayRecord})
	go func() {
		if err := srv.Serve(ctx, ln); err != nil && ctx.Err() == nil {
			log.Error("hash equivalence server stopped", "addr", addr, "error", err)
		}
	}()
	return srv, ln.Addr().String(), nil
}

// hashservSocket is the owner and mode of the hash equivalence socket:
// uid:gid (the mount owner, or the user running `hashserv serve`), mode
// 0600; with hashserv.group, that group and mode 0660.
func hashservSocket(hc HashservConfig, uid, gid uint32) (unixsock.Owner, error) {
	o := unixsock.Owner{UID: int(uid), GID: int(gid), Mode: 0o600}
	if hc.Group != "" {
		g, err := lookupGroup(hc.Group)
		if err != nil {
			return o, fmt.Errorf("hashserv.group (--hashserv-group): %w", err)
		}
		o.GID, o.Mode = g, 0o660
	}
	return o, nil
}

// recordGate decides per connection whether the client may record: those
// the publish rule allows (by SO_PEERCRED, or the uid of a loopback TCP
// client's socket); everyone else who can connect gets the read-only
// behaviour, and each such uid is logged once.
type recordGate struct {
	rule access.Rule
	log  *slog.Logger

	mu      sync.Mutex      // protects warned, unknown
	warned  map[uint32]bool // uids already logged
	unknown bool            // an unidentified client was logged
}

func (g *recordGate) mayRecord(nc net.Conn) bool {
	p, err := access.PeerOf(nc)
	if err == nil && g.rule.AllowsPeer(p) {
		return true
	}
	g.mu.Lock()
	first := false
	if err != nil {
		first, g.unknown = !g.unknown, true
	} else {
		first, g.warned[p.UID] = !g.warned[p.UID], true
	}
	g.mu.Unlock()
	if first {
		if err != nil {
			g.log.Warn("hash equivalence client not identified: its reports are answered, not recorded (logged once)", "client", nc.RemoteAddr().String(), "error", err)
		} else {
			g.log.Warn("hash equivalence client may not record: its reports are answered, not recorded (logged once per uid)", "peer", p.String(), "may_record", g.rule.String())
		}
	}
	return false
}

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
	fset := flag.NewFlagSet("hashserv serve", flag.ContinueOnError)
	cf := newConfigFlags(fset)
	listen := fset.String("listen", "", "where to serve: unix:///path/to.sock or 127.0.0.1:PORT, as in BB_HASHSERVE (default: hashserv.listen, else unix:///run/sstatefs/hashserv.sock)")
	readOnly := fset.Bool("read-only", false, "answer reports without recording them, like bitbake's --read-only server (for BB_HASHSERVE_UPSTREAM)")
	fset.Usage = func() {
		fmt.Fprintf(fset.Output(), `Usage: sstatefs hashserv serve [flags]

Serves bitbake's hash equivalence protocol (OEHASHEQUIV 1.1) from the equivalence records in the
(first) store's index, and records reports into the store, so bitbake can use sstatefs as
BB_HASHSERVE or as the BB_HASHSERVE_UPSTREAM of its local server. No database server to run.
(sstatefs mount --hashserv ADDR does the same inside a mount.)

Flags:
`)
		fset.PrintDefaults()
	}
	if err := fset.Parse(args); err != nil {
		return 2
	}
	cfg, err := cf.load()
	if err != nil {
		fmt.Fprintf(os.Stderr, "sstatefs hashserv serve: %v\n", err)
		return 2
	}
	if *listen == "" {
		*listen = cfg.Hashserv.Listen
	}
	if *listen == "" {
		*listen = "unix:///run/sstatefs/hashserv.sock"
	}
	log := newLogger(cfg.Log)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	store, err := openStore(ctx, cfg.Stores[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "sstatefs hashserv serve: %v\n", err)
		return 1
	}
	live := index.NewLive(store, index.LiveOptions{Interval: cfg.Index.RefreshInterval.Duration, MaxAge: cfg.Index.MaxAge.Duration, Logger: log})
	if err := live.LoadOnce(ctx); err != nil && !errors.Is(err, index.ErrNoIndex) {
		log.Warn("index not loaded yet", "error", err)
	}
	go live.Run(ctx)
	ro := *readOnly || cfg.Hashserv.ReadOnly || backend.IsReadOnly(store)
	journal := index.NewJournal(store, index.JournalOptions{Writer: cfg.Publish.WriterID, Logger: log})
	journal.OnWrite(live.Apply)
	go journal.Run(ctx)
	// without a mount, the socket and the right to record are the
	// invoking user's (and root's)
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	owner, err := hashservSocket(cfg.Hashserv, uid, gid)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sstatefs hashserv serve: %v\n", err)
		return 2
	}
	_, addr, err := startHashserv(ctx, *listen, &equivBackend{live: live, journal: journal}, ro, owner, access.Rule{UID: uid, GID: gid}, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sstatefs hashserv serve: %v\n", err)
		return 1
	}
	log.Info("serving hash equivalence", "addr", addr, "store", store.Location(), "equivalences", live.Current().NumEquivalences(), "read_only", ro)
	<-ctx.Done()
	fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	journal.Flush(fctx)
	return 0
}

func cmdHashservImport(args []string) int {
	fset := flag.NewFlagSet("hashserv import", flag.ContinueOnError)
	cf := newConfigFlags(fset)
	db := fset.String("sqlite", "", "a bitbake-hashserv database file (its -d option); read-only")
	server := fset.String("server", "", "a running hash equivalence server (unix:///path or host:port)")
	pairs := fset.String("pairs", "", "with --server: file of 'METHOD TASKHASH' lines to import (the protocol cannot list a server's records)")
	fset.Usage = func() {
		fmt.Fprintf(fset.Output(), `Usage: sstatefs hashserv import [flags]

Imports hash equivalence records into the (first) store's index: every record of a bitbake-hashserv
sqlite database (--sqlite), or the records of the given pairs from a running server (--server with
--pairs). Records are written as journal segments; the first report for a taskhash wins, so an
import never overrides what the index already says.

Flags:
`)
		fset.PrintDefaults()
	}
	if err := fset.Parse(args); err != nil {
		return 2
	}
	cfg, err := cf.load()
	if err == nil && (*db == "") == (*server == "") {
		err = errors.New("give exactly one of --sqlite and --server")
	}
	if err == nil && *server != "" && *pairs == "" {
		err = errors.New("--server needs --pairs: the hash equivalence protocol cannot list a server's records (to import everything, read its database file with --sqlite)")
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sstatefs hashserv import: %v\n", err)
		return 2
	}
	log := newLogger(cfg.Log)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	store, err := openStore(ctx, cfg.Stores[0])
	if err == nil && backend.IsReadOnly(store) {
		err = fmt.Errorf("%s is read-only: import into an s3:// or file:// store", store.Location())
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sstatefs hashserv import: %v\n", err)
		return 1
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
	fmt.Printf("imported %d equivalence records into %s (%d read, %d skipped)\n", imported, store.Location(), res.Read, res.Skipped)
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
