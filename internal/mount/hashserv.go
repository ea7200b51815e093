package mount

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/sstatefs/sstatefs/hashserv"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/access"
	"github.com/sstatefs/sstatefs/internal/config"
	"github.com/sstatefs/sstatefs/internal/unixsock"
	"github.com/sstatefs/sstatefs/view"
)

// equivBackend serves bitbake's hash equivalence protocol from the stores'
// indexes: reads from the view's merged records under its trust rule (as
// bitbake's server with BB_HASHSERVE_UPSTREAM consults its upstream),
// reports recorded in the publish store through the journal (and applied
// to its live index once written). A mount's reports go through pending
// (durable locally, answered before their segment is written); without
// it (`hashserv serve`) each report waits for its segment.
type equivBackend struct {
	view    *view.View
	journal *index.Journal
	pending *pendingReports // nil: Record waits for the segment
}

var _ hashserv.Backend = (*equivBackend)(nil)

// NewEquivBackend serves the protocol from v and records reports through
// journal (the publish store's), each report waiting for its segment.
func NewEquivBackend(v *view.View, journal *index.Journal) hashserv.Backend {
	return &equivBackend{view: v, journal: journal}
}

// The view answers first: a report is pending only if the view had no
// record of its taskhash (or outhash) when it came, and a record the
// view has since read from a store came first (first writer wins).
func (b *equivBackend) Get(method, taskhash string) (index.Equivalence, bool) {
	if e, ok := b.view.Equivalence(method, taskhash); ok || b.pending == nil {
		return e, ok
	}
	return b.pending.Get(method, taskhash)
}

func (b *equivBackend) GetByOuthash(method, outhash string) (index.Equivalence, bool) {
	if e, ok := b.view.ByOuthash(method, outhash); ok || b.pending == nil {
		return e, ok
	}
	return b.pending.GetByOuthash(method, outhash)
}

// ObjectExists: bitbake asks only for objects that exist, so this answers
// from the indexes whether an sstate object named by the unihash is
// present, at the top level or under any NATIVELSBSTRING directory.
func (b *equivBackend) ObjectExists(unihash string) bool {
	return b.view.HasObjectOfHash(unihash)
}

func (b *equivBackend) Record(ctx context.Context, e index.Equivalence) error {
	var err error
	if b.pending != nil {
		err = b.pending.Record(ctx, e)
	} else {
		err = b.journal.Reported(ctx, e)
	}
	if errors.Is(err, index.ErrInvalidEquivalence) {
		// the client's fault, not the store's: bitbake gets an error answer
		return fmt.Errorf("%w: %w", hashserv.ErrInvalidRecord, err)
	}
	return err
}

// StartHashserv listens on addr and serves the protocol until ctx ends.
// A unix socket gets owner's uid, gid and mode; every connection (unix or
// loopback TCP) whose peer the rule does not allow is served read-only.
func StartHashserv(ctx context.Context, addr string, b hashserv.Backend, readOnly bool, owner unixsock.Owner, rule access.Rule, log *slog.Logger) (*hashserv.Server, string, error) {
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

// HashservSocket is the owner and mode of the hash equivalence socket:
// uid:gid (the mount owner, or the user running `hashserv serve`), mode
// 0600; with hashserv.group, that group and mode 0660.
func HashservSocket(hc config.HashservConfig, uid, gid uint32) (unixsock.Owner, error) {
	o := unixsock.Owner{UID: int(uid), GID: int(gid), Mode: 0o600}
	if hc.Group != "" {
		g, err := config.LookupGroup(hc.Group)
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
