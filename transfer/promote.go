package transfer

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/publish"
	"github.com/sstatefs/sstatefs/sstate"
)

var (
	// ErrNoSourceIndex: the selection needs the source's index (every
	// object, or those accessed since a time) and the source has none.
	ErrNoSourceIndex = errors.New("the source store has no index")
	// ErrSameStore: source and destination are the same store.
	ErrSameStore = errors.New("source and destination are the same store")
	// ErrDigestMismatch: the bytes read from a store are not those its
	// index records: nothing was created at a promote's destination, and
	// nothing is signed.
	ErrDigestMismatch = errors.New("bytes do not match the index")
)

// PromoteRecorder records in the destination's index journal
// (index.Journal): the objects promoted and the equivalence records that
// name them.
type PromoteRecorder interface {
	Recorder
	Reported(ctx context.Context, e index.Equivalence) error
}

// PromoteOptions configure Promote.
type PromoteOptions struct {
	From backend.Store
	To   backend.Store
	// FromIndex is the source's index: its objects, their digests, access
	// records and equivalences. nil: the source has none, and Keys must
	// name the objects, which are then copied unverified.
	FromIndex *index.Index
	// ToIndex is what the destination is known to hold (may be nil):
	// objects it has with the source's digest are not copied again.
	ToIndex *index.Index
	// Recorder is the destination's journal; unused by a dry run.
	Recorder PromoteRecorder
	// Keys selects the objects by store key or bare sstate file name;
	// empty: every object of FromIndex, or those accessed since
	// AccessedSince when it is set.
	Keys          []string
	AccessedSince time.Time
	// DryRun decides what would be copied and copies nothing.
	DryRun bool
	// TempDir holds each object between its download and its verified
	// create; "" means os.TempDir().
	TempDir  string
	Jobs     int
	Progress Progress
	Logger   *slog.Logger
}

// PromoteResult counts what Promote did (or, in a dry run, would do).
type PromoteResult struct {
	// Promoted objects were created at the destination; Existing ones it
	// had already with the same bytes; Conflicts it holds with other bytes
	// (kept: first writer wins).
	Promoted, Existing int
	Conflicts          []string
	PromotedBytes      int64
	// Unverified were copied without a source digest to check them
	// against (the source has no index, or no digest for them).
	Unverified []string
	Missing    []string // listed names the source does not have
	// Equivalences were written into the destination's journal;
	// EquivalencesKnown it had already; EquivalenceConflicts it has with
	// another unihash for the same method and taskhash (its own stays in
	// force, so they are not written).
	Equivalences, EquivalencesKnown, EquivalenceConflicts int
	// Planned is what a dry run would copy, by key.
	Planned []index.Object
	Failed  []error
}

// Promote copies objects, with their .siginfo and .sig companions and the
// equivalence records whose unihash names them, from a less trusted store
// into a more trusted writable one. Every object is downloaded to a temp
// file and checked against the source index's SHA-256 before anything is
// created at the destination, then put by the upload rules (publish.Put:
// conditional create, an existing object with other bytes is a conflict
// and is kept, recorded in the destination's journal only once there).
// Objects the destination's index already holds with the same digest are
// not copied again, so running it again after an interruption copies only
// what is missing.
func Promote(ctx context.Context, opt PromoteOptions) (PromoteResult, error) {
	var res PromoteResult
	opt.Jobs, opt.Logger = orDefaults(opt.Jobs, opt.Logger)
	if backend.IsReadOnly(opt.To) {
		return res, fmt.Errorf("promote to %s: %w", opt.To.Location(), backend.ErrReadOnly)
	}
	if opt.From.Location() == opt.To.Location() {
		return res, fmt.Errorf("promote from %s to %s: %w", opt.From.Location(), opt.To.Location(), ErrSameStore)
	}
	objs, err := promoteSet(ctx, opt, &res)
	if err != nil {
		return res, err
	}
	groups := groupCompanions(objs)
	// there: the objects (not companions) the destination holds, or will,
	// with the source's bytes; the equivalence records naming their
	// unihash go along.
	there := map[string]bool{}
	var todo []group
	for _, g := range groups {
		switch known(opt.ToIndex, g.main) {
		case publish.AlreadyThere:
			res.Existing++
			g.mainThere = true
		case publish.Conflict:
			conflict(opt, &res, g.main.Key)
			continue
		}
		var cs []index.Object
		for _, c := range g.companions {
			switch known(opt.ToIndex, c) {
			case publish.AlreadyThere:
				res.Existing++
			case publish.Conflict:
				conflict(opt, &res, c.Key)
			default:
				cs = append(cs, c)
			}
		}
		g.companions = cs
		if g.mainThere {
			there[g.main.Key] = true
		}
		if !g.mainThere || len(cs) > 0 {
			todo = append(todo, g)
		}
	}
	if opt.DryRun {
		for _, g := range todo {
			if !g.mainThere {
				res.Planned = append(res.Planned, g.main)
				there[g.main.Key] = true
			}
			res.Planned = append(res.Planned, g.companions...)
		}
		sort.Slice(res.Planned, func(i, j int) bool { return res.Planned[i].Key < res.Planned[j].Key })
		carryEquivalences(ctx, opt, there, &res)
		return res, nil
	}
	dir := opt.TempDir
	if dir == "" {
		dir = os.TempDir()
	}
	err = each(ctx, opt.Jobs, todo, group.size, opt.Progress,
		func(ctx context.Context, g group) []promoted { return promoteGroup(ctx, opt, dir, g) },
		func(g group, ps []promoted) {
			for _, p := range ps {
				switch p.out {
				case publish.Failed:
					if ctx.Err() != nil {
						continue // interrupted, not failed: the next run does it
					}
					res.Failed = append(res.Failed, fmt.Errorf("%s: %w", p.obj.Key, p.err))
					opt.Logger.Error("promote failed", "object", p.obj.Key, "error", p.err)
					continue
				case publish.Created:
					res.Promoted++
					res.PromotedBytes += p.obj.Size
				case publish.AlreadyThere:
					res.Existing++
				case publish.Conflict:
					conflict(opt, &res, p.obj.Key)
					continue
				}
				if p.obj.Key == g.main.Key {
					there[g.main.Key] = true
				}
				if !p.verified {
					res.Unverified = append(res.Unverified, p.obj.Key)
				}
			}
		})
	if err != nil {
		return res, err
	}
	carryEquivalences(ctx, opt, there, &res)
	sort.Strings(res.Conflicts)
	sort.Strings(res.Unverified)
	if len(res.Failed) > 0 {
		return res, fmt.Errorf("%d objects or records failed, first: %w", len(res.Failed), res.Failed[0])
	}
	return res, ctx.Err()
}

// group is an object with the companions promoted with it. They go only
// where it went: a destination that keeps other bytes under the object's
// name must not get this build's .siginfo beside them.
type group struct {
	main       index.Object
	companions []index.Object
	mainThere  bool // the destination has main already: only companions to copy
}

// size is the bytes to copy.
func (g group) size() int64 {
	var n int64
	if !g.mainThere {
		n = g.main.Size
	}
	for _, c := range g.companions {
		n += c.Size
	}
	return n
}

// groupCompanions groups sorted objects: a .siginfo or .sig joins its
// object when that is promoted too, else it stands alone.
func groupCompanions(objs []index.Object) []group {
	at := map[string]int{}
	var groups []group
	var lone []index.Object
	for _, o := range objs {
		if companion(o.Key) == "" {
			at[o.Key] = len(groups)
			groups = append(groups, group{main: o})
		}
	}
	for _, o := range objs {
		c := companion(o.Key)
		if c == "" {
			continue
		}
		if i, ok := at[strings.TrimSuffix(o.Key, c)]; ok {
			groups[i].companions = append(groups[i].companions, o)
		} else {
			lone = append(lone, o)
		}
	}
	for _, o := range lone {
		groups = append(groups, group{main: o})
	}
	return groups
}

// companion is the companion suffix of key (".siginfo", ".sig"), "" for an
// object or a name outside the sstate grammar.
func companion(key string) string {
	n, err := sstate.ParseFile(path.Base(key))
	if err != nil {
		return ""
	}
	return n.Companion
}

// known tells from the destination's index whether it has o with the
// source's bytes (AlreadyThere), other bytes (Conflict), or cannot tell
// (Failed: the object must go through the conditional create).
func known(ix *index.Index, o index.Object) publish.Outcome {
	d, ok := ix.Lookup(o.Key)
	switch {
	case !ok || o.SHA256 == [32]byte{} || d.SHA256 == [32]byte{}:
		return publish.Failed
	case d.SHA256 == o.SHA256:
		return publish.AlreadyThere
	}
	return publish.Conflict
}

func conflict(opt PromoteOptions, res *PromoteResult, key string) {
	res.Conflicts = append(res.Conflicts, key)
	opt.Logger.Warn("not promoted: the destination has other content under this name (first writer wins); its companions stay behind too",
		"object", key, "to", opt.To.Location())
}

// promoted is what became of one object of a group.
type promoted struct {
	obj      index.Object
	out      publish.Outcome
	verified bool
	err      error
}

// promoteGroup promotes g's object, then, if the destination has it with
// the source's bytes, its companions.
func promoteGroup(ctx context.Context, opt PromoteOptions, dir string, g group) []promoted {
	var ps []promoted
	if ctx.Err() != nil {
		return nil // the run is interrupted: errgroup still hands out the rest
	}
	if !g.mainThere {
		out, verified, err := promoteOne(ctx, opt, dir, g.main)
		ps = append(ps, promoted{g.main, out, verified, err})
		if out != publish.Created && out != publish.AlreadyThere {
			return ps
		}
	}
	for _, c := range g.companions {
		out, verified, err := promoteOne(ctx, opt, dir, c)
		ps = append(ps, promoted{c, out, verified, err})
	}
	return ps
}

// orDefaults gives the settings every transfer shares their defaults:
// 8 objects at once, a logger that discards.
func orDefaults(jobs int, log *slog.Logger) (int, *slog.Logger) {
	if jobs <= 0 {
		jobs = 8
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return jobs, log
}

// promoteSet decides which objects of the source to promote, with their
// companions, sorted by key. Listed names the source lacks go into
// res.Missing; a listed name whose Stat fails, into res.Failed.
func promoteSet(ctx context.Context, opt PromoteOptions, res *PromoteResult) ([]index.Object, error) {
	seen := map[string]bool{}
	var objs []index.Object
	add := func(more ...index.Object) {
		for _, o := range more {
			if !seen[o.Key] {
				seen[o.Key] = true
				objs = append(objs, o)
			}
		}
	}
	switch {
	case len(opt.Keys) > 0:
		// Names the index does not know are probed, several at once: a
		// remote store without an index (an HTTP mirror) answers each
		// only after a round trip.
		type listed struct{ name, key string }
		var items []listed
		keys := resolveNames(opt.FromIndex, opt.Keys)
		for _, name := range opt.Keys {
			for _, k := range keys[name] {
				items = append(items, listed{name, k})
			}
		}
		err := each(ctx, opt.Jobs, items, func(listed) int64 { return 0 }, nil,
			func(ctx context.Context, it listed) probed { return probe(ctx, opt, it.key) },
			func(it listed, p probed) {
				add(p.objs...)
				res.Failed = append(res.Failed, p.failed...)
				if p.missing {
					res.Missing = append(res.Missing, it.name)
				}
			})
		if err != nil {
			return nil, err
		}
		sort.Strings(res.Missing)
	case opt.FromIndex == nil:
		return nil, fmt.Errorf("promote from %s: %w: name the objects in a list", opt.From.Location(), ErrNoSourceIndex)
	default:
		since := opt.AccessedSince
		opt.FromIndex.Objects(func(o index.Object) bool {
			if accessedSince(o, since) {
				add(o)
				add(indexedCompanions(opt.FromIndex, o.Key)...)
			}
			return true
		})
	}
	sort.Slice(objs, func(i, j int) bool { return objs[i].Key < objs[j].Key })
	return objs, nil
}

// probed is what the source has of one listed key: the object and its
// companions, or that it is missing, or the errors of asking.
type probed struct {
	objs    []index.Object
	missing bool
	failed  []error
}

// probe finds key and its companions in the source's index, else asks the
// source (Stat).
func probe(ctx context.Context, opt PromoteOptions, key string) probed {
	var p probed
	stat := func(k string) (index.Object, bool) {
		oi, err := opt.From.Stat(ctx, k)
		switch {
		case err == nil:
			return index.Object{Key: k, Size: oi.Size, ModTime: oi.ModTime}, true
		case !errors.Is(err, backend.ErrNotExist):
			p.failed = append(p.failed, fmt.Errorf("%s: %w", k, err))
		}
		return index.Object{}, false
	}
	o, indexed := opt.FromIndex.Lookup(key)
	if !indexed {
		var ok bool
		if o, ok = stat(key); !ok {
			p.missing = len(p.failed) == 0
			return p
		}
	}
	p.objs = append(p.objs, o)
	if indexed {
		p.objs = append(p.objs, indexedCompanions(opt.FromIndex, key)...)
		return p
	}
	if companion(key) == "" {
		for _, c := range companionSuffixes {
			if co, ok := stat(key + c); ok {
				p.objs = append(p.objs, co)
			}
		}
	}
	return p
}

// companionSuffixes are the files that go with an object.
var companionSuffixes = []string{".siginfo", ".sig"}

// indexedCompanions are the companions of key that ix has.
func indexedCompanions(ix *index.Index, key string) []index.Object {
	if companion(key) != "" {
		return nil
	}
	var cs []index.Object
	for _, c := range companionSuffixes {
		if o, ok := ix.Lookup(key + c); ok {
			cs = append(cs, o)
		}
	}
	return cs
}

// resolveNames maps each listed name to store keys: a key is itself; a bare
// sstate file name is every key of the index with that base name, else
// (no index, or not in it) its top-level key ab/cd/NAME, which is probed.
// A native object (under a NATIVELSBSTRING directory) of a store without
// an index is thus found only by its full key.
func resolveNames(ix *index.Index, names []string) map[string][]string {
	out := map[string][]string{}
	bare := map[string]bool{}
	for _, n := range names {
		if strings.Contains(n, "/") {
			out[n] = []string{n}
		} else {
			bare[n] = true
		}
	}
	if len(bare) == 0 {
		return out
	}
	ix.Objects(func(o index.Object) bool {
		if b := path.Base(o.Key); bare[b] {
			out[b] = append(out[b], o.Key)
		}
		return true
	})
	for b := range bare {
		if len(out[b]) > 0 {
			continue
		}
		if n, err := sstate.ParseFile(b); err == nil {
			out[b] = []string{n.String()}
		} else {
			out[b] = []string{b} // not an sstate name: probed as it is, reported missing
		}
	}
	return out
}

// promoteOne downloads o to a temp file, checks it against the source's
// digest (verified: there was one) and puts it at the destination.
func promoteOne(ctx context.Context, opt PromoteOptions, dir string, o index.Object) (out publish.Outcome, verified bool, err error) {
	tmp, err := os.CreateTemp(dir, ".sstatefs-promote-")
	if err != nil {
		return publish.Failed, false, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	rc, err := opt.From.Open(ctx, o.Key, 0, -1)
	if err != nil {
		return publish.Failed, false, fmt.Errorf("reading %s: %w", opt.From.Location(), err)
	}
	sum, chunks, n, err := index.Digest(io.TeeReader(rc, tmp))
	rc.Close()
	if err != nil {
		return publish.Failed, false, fmt.Errorf("reading %s: %w", opt.From.Location(), err)
	}
	verified = o.SHA256 != [32]byte{}
	if verified && (sum != o.SHA256 || n != o.Size) {
		return publish.Failed, verified, fmt.Errorf("%w of %s: got %d bytes, sha256 %s; the index records %d bytes, sha256 %s",
			ErrDigestMismatch, opt.From.Location(), n, hex.EncodeToString(sum[:]), o.Size, hex.EncodeToString(o.SHA256[:]))
	}
	out, err = publish.Put(ctx, opt.To, opt.Recorder, publish.Upload{Key: o.Key, Data: tmp, Size: n, SHA256: sum, Chunks: chunks}, nil)
	return out, verified, err
}

// carryEquivalences writes into the destination's journal the source's
// equivalence records in force whose unihash names an object the
// destination holds with the source's bytes (keys of there), unless the
// destination has a record of its own for their method and taskhash. A
// dry run only counts them.
func carryEquivalences(ctx context.Context, opt PromoteOptions, there map[string]bool, res *PromoteResult) {
	if ctx.Err() != nil {
		return
	}
	unihashes := map[string]bool{}
	for k := range there {
		if n, err := sstate.ParseFile(path.Base(k)); err == nil && n.Companion == "" {
			unihashes[n.Hash] = true
		}
	}
	var carry []index.Equivalence
	opt.FromIndex.Equivalences(func(e index.Equivalence) bool {
		if !unihashes[e.Unihash] {
			return true
		}
		switch d, ok := opt.ToIndex.Equivalence(e.Method, e.Taskhash); {
		case !ok:
			carry = append(carry, e)
		case d.Unihash == e.Unihash:
			res.EquivalencesKnown++
		default:
			res.EquivalenceConflicts++
			opt.Logger.Warn("equivalence not promoted: the destination maps this taskhash to another unihash (its own stays in force)",
				"method", e.Method, "taskhash", e.Taskhash, "unihash", e.Unihash, "destination_unihash", d.Unihash)
		}
		return true
	})
	if opt.DryRun {
		res.Equivalences = len(carry)
		return
	}
	// Many at once: the journal batches concurrent records into one
	// segment, where one at a time would write a segment each.
	each(ctx, 256, carry, func(index.Equivalence) int64 { return 0 }, nil,
		func(ctx context.Context, e index.Equivalence) error { return opt.Recorder.Reported(ctx, e) },
		func(e index.Equivalence, err error) {
			if err != nil {
				res.Failed = append(res.Failed, fmt.Errorf("equivalence %s %s: %w", e.Method, e.Taskhash, err))
				opt.Logger.Error("recording an equivalence failed", "method", e.Method, "taskhash", e.Taskhash, "error", err)
				return
			}
			res.Equivalences++
		})
}
