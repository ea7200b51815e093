package hashserv

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"slices"
	"time"
	"unicode"

	"github.com/sstatefs/sstatefs/hashserv/wire"
	"github.com/sstatefs/sstatefs/index"
)

// command is one command of the protocol. Exactly one of run (normal
// mode: one answer) and stream (a stream mode) is set.
type command struct {
	name string
	run  func(ctx context.Context, c *conn, arg json.RawMessage) (any, error)
	// stream checks the argument and returns the answer to one query
	// line of the mode.
	stream func(c *conn, arg json.RawMessage) (func(line string) (string, error), error)
}

// commandTable lists the commands in the order bitbake's ServerClient
// registers them, which is the order it dispatches in. A read-only server
// does not know the commands that write (bitbake registers them only when
// it is not read-only): a message naming one of them closes the
// connection.
func commandTable(readOnly bool) []command {
	cmds := []command{
		{name: "ping", run: cmdPing},
		{name: "get", run: cmdGet},
		{name: "get-outhash", run: cmdGetOuthash},
		{name: "get-stream", stream: streamGet},
		{name: "exists-stream", stream: streamExists},
		{name: "get-stats", run: cmdGetStats},
		{name: "get-db-usage", run: unsupported("get-db-usage")},
		{name: "get-db-query-columns", run: cmdGetDBQueryColumns},
		{name: "report", run: cmdReport},
		{name: "auth", run: cmdAuth},
		{name: "get-user", run: userAdmin},
		{name: "get-all-users", run: userAdmin},
		{name: "become-user", run: userAdmin},
	}
	if readOnly {
		return cmds
	}
	return append(cmds,
		command{name: "report-equiv", run: cmdReportEquiv},
		command{name: "reset-stats", run: cmdResetStats},
		command{name: "backfill-wait", run: cmdBackfillWait},
		command{name: "remove", run: unsupported("remove")},
		command{name: "gc-mark", run: unsupported("gc-mark")},
		command{name: "gc-mark-stream", stream: unsupportedStream("gc-mark-stream")},
		command{name: "gc-sweep", run: unsupported("gc-sweep")},
		command{name: "gc-status", run: unsupported("gc-status")},
		command{name: "clean-unused", run: unsupported("clean-unused")},
		command{name: "refresh-token", run: userAdmin},
		command{name: "set-user-perms", run: userAdmin},
		command{name: "new-user", run: userAdmin},
		command{name: "delete-user", run: userAdmin},
	)
}

// maxField bounds the strings a report stores (bitbake sets no bound;
// its values are hashes, recipe names and versions).
const maxField = 1024

// errInvalidUnihash is bitbake's answer to a unihash that is not 64
// lowercase hex characters.
var errInvalidUnihash = &invokeError{msg: "Invalid unihash"}

// validUnihash is bitbake's is_valid_unihash: 64 lowercase hex
// characters. bitbake aborts the build when a server answers anything
// else, so records whose unihash fails it are never answered.
func validUnihash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// args are the arguments of a command, a JSON object.
type args map[string]json.RawMessage

// objectArgs decodes a command's argument, which must be an object
// (bitbake's handlers index it; anything else ends the connection).
func objectArgs(name string, arg json.RawMessage) (args, error) {
	var a args
	if err := json.Unmarshal(arg, &a); err != nil || a == nil {
		return nil, protoErrorf("%s: the argument must be an object", name)
	}
	return a, nil
}

// str returns a required string argument.
func (a args) str(name, key string) (string, error) {
	raw, ok := a[key]
	if !ok {
		return "", protoErrorf("%s: missing %q", name, key)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", protoErrorf("%s: %q must be a string", name, key)
	}
	return s, nil
}

// optStr returns an optional string argument; null is absent.
func (a args) optStr(name, key string) (string, error) {
	raw, ok := a[key]
	if !ok || string(bytes.TrimSpace(raw)) == "null" {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", protoErrorf("%s: %q must be a string or null", name, key)
	}
	return s, nil
}

// flag returns a boolean argument with Python's truthiness (null, false,
// 0, "", [] and {} are false), def when absent.
func (a args) flag(key string, def bool) bool {
	raw, ok := a[key]
	if !ok {
		return def
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return def
	}
	switch v := v.(type) {
	case nil:
		return false
	case bool:
		return v
	case float64:
		return v != 0
	case string:
		return v != ""
	case []any:
		return len(v) > 0
	case map[string]any:
		return len(v) > 0
	}
	return true
}

// unihash returns the reported unihash, or bitbake's invoke-error when it
// is missing or invalid (checked before anything else, as bitbake does).
func (a args) unihash() (string, error) {
	var s string
	if raw, ok := a["unihash"]; !ok || json.Unmarshal(raw, &s) != nil || !validUnihash(s) {
		return "", errInvalidUnihash
	}
	return s, nil
}

// lookup returns the record of (method, taskhash) if it has a valid
// unihash.
func (c *conn) lookup(method, taskhash string) (index.Equivalence, bool) {
	e, ok := c.srv.backend.Get(method, taskhash)
	return c.checked(e, ok, "taskhash", taskhash)
}

// lookupOuthash returns the first record of (method, outhash) if it has a
// valid unihash.
func (c *conn) lookupOuthash(method, outhash string) (index.Equivalence, bool) {
	if outhash == "" {
		c.srv.misses.Add(1)
		return index.Equivalence{}, false
	}
	e, ok := c.srv.backend.GetByOuthash(method, outhash)
	return c.checked(e, ok, "outhash", outhash)
}

func (c *conn) checked(e index.Equivalence, ok bool, kind, hash string) (index.Equivalence, bool) {
	if ok && !validUnihash(e.Unihash) {
		c.log.Warn("hashserv: ignoring a record whose unihash is not 64 lowercase hex characters",
			slog.String("method", e.Method), slog.String(kind, hash), slog.String("unihash", e.Unihash))
		ok = false
	}
	if ok {
		c.srv.hits.Add(1)
	} else {
		c.srv.misses.Add(1)
	}
	return e, ok
}

// short is the answer of get (all false), report and report-equiv.
func short(taskhash, method, unihash string) object {
	return object{{"taskhash", taskhash}, {"method", method}, {"unihash", unihash}}
}

// row is the answer of get with all, and of get-outhash: bitbake's
// outhashes_v2 row, joined with unihashes_v3 (unihash, gc_mark) when
// withUnihash.
//
// id is bitbake's row number, which an index shared by many hosts has
// not: it is the first 53 bits of SHA-256(method NUL taskhash NUL
// outhash) plus one, stable across servers and restarts and exact in
// every JSON reader. outhash_siginfo is not kept (index.Equivalence has no
// field for it) and is always null; empty PN, PV, PR, task and owner are
// null, as absent ones are in bitbake.
func row(e index.Equivalence, withUnihash bool) object {
	h := sha256.Sum256([]byte(e.Method + "\x00" + e.Taskhash + "\x00" + e.Outhash))
	id := binary.BigEndian.Uint64(h[:8])>>11 + 1
	o := object{
		{"id", pyInt(id)},
		{"method", e.Method},
		{"taskhash", e.Taskhash},
		{"outhash", e.Outhash},
		{"created", pyTime(e.Created)},
		{"owner", nullable(e.Owner)},
		{"PN", nullable(e.PN)},
		{"PV", nullable(e.PV)},
		{"PR", nullable(e.PR)},
		{"task", nullable(e.Task)},
		{"outhash_siginfo", nil},
	}
	if withUnihash {
		o = append(o, field{"unihash", e.Unihash}, field{"gc_mark", ""})
	}
	return o
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// pyTime writes a time as bitbake's server does (UTC, Python's
// isoformat: microseconds unless zero, "+00:00"); the zero time is null.
func pyTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	s := t.Format("2006-01-02T15:04:05")
	if us := t.Nanosecond() / 1000; us != 0 {
		s += fmt.Sprintf(".%06d", us)
	}
	return s + "+00:00"
}

// ping answers {"alive": true}.
func cmdPing(context.Context, *conn, json.RawMessage) (any, error) {
	return object{{"alive", true}}, nil
}

// get {"method", "taskhash", "all"} answers {"taskhash", "method",
// "unihash"}, or with all the full row (null when the taskhash has no
// outhash, as bitbake's join gives for report-equiv), or null.
func cmdGet(_ context.Context, c *conn, arg json.RawMessage) (any, error) {
	a, err := objectArgs("get", arg)
	if err != nil {
		return nil, err
	}
	method, err := a.str("get", "method")
	if err != nil {
		return nil, err
	}
	taskhash, err := a.str("get", "taskhash")
	if err != nil {
		return nil, err
	}
	all := a.flag("all", false)
	e, ok := c.lookup(method, taskhash)
	switch {
	case !ok:
		return nil, nil
	case all && e.Outhash == "":
		return nil, nil
	case all:
		return row(e, true), nil
	}
	return short(e.Taskhash, e.Method, e.Unihash), nil
}

// get-outhash {"method", "outhash", "taskhash", "with_unihash"} answers
// the first row reported with this outhash (with unihash and gc_mark
// unless with_unihash is false), or null.
func cmdGetOuthash(_ context.Context, c *conn, arg json.RawMessage) (any, error) {
	a, err := objectArgs("get-outhash", arg)
	if err != nil {
		return nil, err
	}
	method, err := a.str("get-outhash", "method")
	if err != nil {
		return nil, err
	}
	outhash, err := a.str("get-outhash", "outhash")
	if err != nil {
		return nil, err
	}
	if _, err := a.str("get-outhash", "taskhash"); err != nil {
		return nil, err
	}
	e, ok := c.lookupOuthash(method, outhash)
	if !ok {
		return nil, nil
	}
	return row(e, a.flag("with_unihash", true)), nil
}

// get-stream: each line "METHOD TASKHASH" is answered with the unihash or
// an empty line. A line that is not two words closes the connection.
func streamGet(c *conn, _ json.RawMessage) (func(string) (string, error), error) {
	return func(line string) (string, error) {
		f := wire.Fields(line)
		if len(f) != 2 {
			return "", protoErrorf("get-stream: want \"METHOD TASKHASH\", got %q", line)
		}
		if e, ok := c.lookup(f[0], f[1]); ok {
			return e.Unihash, nil
		}
		return "", nil
	}, nil
}

// exists-stream: each line, a unihash, is answered "true" when an sstate
// object of that unihash is present, else "false". bitbake's server
// answers true for any unihash it has a record of; bitbake asks to learn
// whether it can restore the task, which only the object tells.
func streamExists(c *conn, _ json.RawMessage) (func(string) (string, error), error) {
	return func(line string) (string, error) {
		if validUnihash(line) && c.srv.backend.ObjectExists(line) {
			return "true", nil
		}
		return "false", nil
	}, nil
}

// get-stats answers {"requests": {"num", "total_time", "max_time",
// "average", "stdev"}}, bitbake's request timings in seconds.
func cmdGetStats(_ context.Context, c *conn, _ json.RawMessage) (any, error) {
	return object{{"requests", c.srv.requestsObject(false)}}, nil
}

// reset-stats answers like get-stats, then starts the timings afresh.
func cmdResetStats(_ context.Context, c *conn, _ json.RawMessage) (any, error) {
	return object{{"requests", c.srv.requestsObject(true)}}, nil
}

// backfill-wait answers {"tasks": 0}: the server has no upstream, so
// nothing is ever queued for backfill. (bitbake's server without an
// upstream fails on it and closes the connection.)
func cmdBackfillWait(context.Context, *conn, json.RawMessage) (any, error) {
	return object{{"tasks", pyInt(0)}}, nil
}

// get-db-query-columns answers the columns bitbake's remove and gc-mark
// accept in a condition (its TEXT columns), sorted.
func cmdGetDBQueryColumns(context.Context, *conn, json.RawMessage) (any, error) {
	return object{{"columns", []string{"PN", "PR", "PV", "gc_mark", "method", "outhash", "outhash_siginfo", "owner", "task", "taskhash", "unihash"}}}, nil
}

// unsupported answers an invoke-error for bitbake's database
// administration (remove, gc-*, clean-unused, get-db-usage): the
// equivalences live in the store's index, shared by every builder and
// managed by sstatefs, not by hash equivalence clients.
func unsupported(name string) func(context.Context, *conn, json.RawMessage) (any, error) {
	return func(context.Context, *conn, json.RawMessage) (any, error) {
		return nil, unsupportedError(name)
	}
}

func unsupportedStream(name string) func(*conn, json.RawMessage) (func(string) (string, error), error) {
	return func(*conn, json.RawMessage) (func(string) (string, error), error) {
		return nil, unsupportedError(name)
	}
}

func unsupportedError(name string) error {
	return &invokeError{msg: name + " is not supported by the sstatefs hash equivalence server: its equivalences are kept in the sstate store's index"}
}

// userAdmin answers what bitbake answers an anonymous user for the user
// administration commands: there are no users here, so nobody has
// @user-admin.
func userAdmin(context.Context, *conn, json.RawMessage) (any, error) {
	return nil, &invokeError{msg: "Anonymous user is not allowed to access permissions(s) @user-admin"}
}

// auth fails as bitbake's does for a user that does not exist, after the
// same one-second delay.
func cmdAuth(ctx context.Context, c *conn, arg json.RawMessage) (any, error) {
	a, err := objectArgs("auth", arg)
	if err != nil {
		return nil, err
	}
	user, ok := a["username"]
	if !ok {
		return nil, protoErrorf("auth: missing \"username\"")
	}
	if _, ok := a["token"]; !ok {
		return nil, protoErrorf("auth: missing \"token\"")
	}
	t := time.NewTimer(c.srv.authDelay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return nil, &invokeError{msg: "Unable to authenticate as " + pyStr(user)}
}

// pyStr is Python's str() of a decoded JSON value, for messages.
func pyStr(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	switch v := string(bytes.TrimSpace(raw)); v {
	case "null":
		return "None"
	case "true":
		return "True"
	case "false":
		return "False"
	default:
		return v
	}
}

// checkField vets a string a report stores in the index, shared by every
// builder: at most maxField bytes, no control characters, and for a hash
// or method (word) one non-empty word, since get-stream could never ask
// for anything else. bitbake stores whatever it is sent.
func checkField(name, key, v string, word bool) error {
	if len(v) > maxField {
		return protoErrorf("%s: %q is %d bytes, more than %d", name, key, len(v), maxField)
	}
	if word && v == "" {
		return protoErrorf("%s: %q is empty", name, key)
	}
	for _, r := range v {
		if unicode.IsControl(r) || word && wire.IsSpace(r) {
			return protoErrorf("%s: %q has a control or space character: %q", name, key, v)
		}
	}
	return nil
}

// reportArgs decodes the arguments of report in bitbake's order: the
// unihash first (invoke-error), then method, outhash and taskhash.
func reportArgs(arg json.RawMessage) (index.Equivalence, error) {
	const name = "report"
	a, err := objectArgs(name, arg)
	if err != nil {
		return index.Equivalence{}, err
	}
	var e index.Equivalence
	if e.Unihash, err = a.unihash(); err != nil {
		return e, err
	}
	for _, f := range []struct {
		key string
		dst *string
		opt bool
	}{
		{"method", &e.Method, false},
		{"outhash", &e.Outhash, false},
		{"taskhash", &e.Taskhash, false},
		{"owner", &e.Owner, true},
		{"PN", &e.PN, true},
		{"PV", &e.PV, true},
		{"PR", &e.PR, true},
		{"task", &e.Task, true},
	} {
		var v string
		if f.opt {
			v, err = a.optStr(name, f.key)
		} else {
			v, err = a.str(name, f.key)
		}
		if err == nil {
			err = checkField(name, f.key, v, !f.opt)
		}
		if err != nil {
			return e, err
		}
		*f.dst = v
	}
	// outhash_siginfo, the text the outhash was computed from, has no
	// place in an index.Equivalence and is dropped.
	return e, nil
}

// report {"taskhash", "method", "outhash", "unihash", owner, PN, PV, PR,
// task, outhash_siginfo} answers {"taskhash", "method", "unihash"}: the
// unihash the taskhash already has (the first report wins), else that of
// the first record with the same outhash (outhash matching), else the
// reported one; a new (taskhash, outhash) is recorded. A read-only server
// answers the outhash's unihash, else the reported one, and records
// nothing, as bitbake's does.
func cmdReport(ctx context.Context, c *conn, arg json.RawMessage) (any, error) {
	e, err := reportArgs(arg)
	if err != nil {
		return nil, err
	}
	if c.readOnly {
		if m, ok := c.lookupOuthash(e.Method, e.Outhash); ok {
			return short(e.Taskhash, e.Method, m.Unihash), nil
		}
		return short(e.Taskhash, e.Method, e.Unihash), nil
	}
	e.Created = c.srv.opt.Now()

	unlock, err := c.srv.locks.lock(ctx, e.Method+"\x00t"+e.Taskhash, e.Method+"\x00o"+e.Outhash)
	if err != nil {
		return nil, err
	}
	defer unlock()

	if cur, ok := c.lookup(e.Method, e.Taskhash); ok {
		// The taskhash keeps its unihash. A new outhash of it is recorded
		// all the same (with that unihash), so that later reports with
		// this outhash match it, as bitbake's outhashes_v2 row does.
		if cur.Outhash != e.Outhash && !c.srv.outhashRecorded(e.Method, e.Taskhash, e.Outhash) {
			r := e
			r.Unihash = cur.Unihash
			if err := c.srv.record(ctx, r); err != nil {
				return nil, err
			}
		}
		return short(e.Taskhash, e.Method, cur.Unihash), nil
	}
	if m, ok := c.lookupOuthash(e.Method, e.Outhash); ok && m.Taskhash != e.Taskhash {
		e.Unihash = m.Unihash
	}
	if err := c.srv.record(ctx, e); err != nil {
		return nil, err
	}
	return short(e.Taskhash, e.Method, c.srv.settled(e)), nil
}

// report-equiv {"taskhash", "method", "unihash"} makes the taskhash
// equivalent to the unihash unless it already has one, and answers
// {"taskhash", "method", "unihash"} with the unihash it has now. The
// record has no outhash.
func cmdReportEquiv(ctx context.Context, c *conn, arg json.RawMessage) (any, error) {
	const name = "report-equiv"
	a, err := objectArgs(name, arg)
	if err != nil {
		return nil, err
	}
	var e index.Equivalence
	if e.Unihash, err = a.unihash(); err != nil {
		return nil, err
	}
	if e.Method, err = a.str(name, "method"); err != nil {
		return nil, err
	}
	if e.Taskhash, err = a.str(name, "taskhash"); err != nil {
		return nil, err
	}
	if err := checkField(name, "method", e.Method, true); err != nil {
		return nil, err
	}
	if err := checkField(name, "taskhash", e.Taskhash, true); err != nil {
		return nil, err
	}
	e.Created = c.srv.opt.Now()

	unlock, err := c.srv.locks.lock(ctx, e.Method+"\x00t"+e.Taskhash)
	if err != nil {
		return nil, err
	}
	defer unlock()

	if cur, ok := c.lookup(e.Method, e.Taskhash); ok {
		return short(cur.Taskhash, cur.Method, cur.Unihash), nil
	}
	if err := c.srv.record(ctx, e); err != nil {
		return nil, err
	}
	return short(e.Taskhash, e.Method, c.srv.settled(e)), nil
}

// hashLocks serialise the decide-then-Record sequences of report and
// report-equiv that concern one taskhash or one outhash, so that two
// equivalent outputs reported at once cannot both become first, and a
// taskhash's outhashes all carry its unihash (bitbake's server is single
// threaded). Unrelated reports run concurrently, so a Backend that
// commits in groups gets groups. A key maps to one of a fixed set of
// stripes; stripes are taken in index order, so two reports never wait
// for each other both ways.
type hashLocks struct {
	seed    maphash.Seed
	stripes [256]chan struct{}
}

func newHashLocks() *hashLocks {
	l := &hashLocks{seed: maphash.MakeSeed()}
	for i := range l.stripes {
		l.stripes[i] = make(chan struct{}, 1)
	}
	return l
}

// lock takes the stripes of keys, waiting until ctx is done at most.
func (l *hashLocks) lock(ctx context.Context, keys ...string) (unlock func(), err error) {
	idx := make([]int, 0, len(keys))
	for _, k := range keys {
		idx = append(idx, int(maphash.String(l.seed, k)%uint64(len(l.stripes))))
	}
	slices.Sort(idx)
	idx = slices.Compact(idx)
	unlock = func() {
		for _, i := range idx {
			<-l.stripes[i]
		}
	}
	for n, i := range idx {
		select {
		case l.stripes[i] <- struct{}{}:
		case <-ctx.Done():
			for _, j := range idx[:n] {
				<-l.stripes[j]
			}
			return nil, ctx.Err()
		}
	}
	return unlock, nil
}

// outhashRecorded reports whether the Backend shows a record of
// (method, taskhash, outhash): only the first record of an outhash is
// visible, so false may be wrong, which Record tolerates.
func (s *Server) outhashRecorded(method, taskhash, outhash string) bool {
	m, ok := s.backend.GetByOuthash(method, outhash)
	return ok && m.Taskhash == taskhash
}

// record writes e through the Backend within RecordTimeout.
func (s *Server) record(ctx context.Context, e index.Equivalence) error {
	ctx, cancel := context.WithTimeout(ctx, s.opt.RecordTimeout)
	defer cancel()
	if err := s.backend.Record(ctx, e); err != nil {
		if errors.Is(err, ErrInvalidRecord) {
			return protoErrorf("report of %s %s refused: %v", e.Method, e.Taskhash, err)
		}
		return &backendError{fmt.Errorf("record %s %s: %w", e.Method, e.Taskhash, err)}
	}
	s.records.Add(1)
	return nil
}

// settled is the unihash of e's taskhash after recording e: the stored
// one, as bitbake reads it back, in case another writer of the same
// store got there first; e's own if the Backend does not show it yet.
func (s *Server) settled(e index.Equivalence) string {
	if cur, ok := s.backend.Get(e.Method, e.Taskhash); ok && validUnihash(cur.Unihash) {
		return cur.Unihash
	}
	return e.Unihash
}
