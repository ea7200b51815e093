// Package hashserv is a server for bitbake's hash equivalence protocol
// (OEHASHEQUIV 1.1, the protocol of bitbake-hashserv), so that an
// unchanged bitbake can use sstatefs as BB_HASHSERVE or as the
// BB_HASHSERVE_UPSTREAM of its own local server. It answers from a Backend
// and records what bitbake reports through it; the package owns the wire
// protocol and bitbake's equivalence rules, not the storage.
//
// The behaviour follows bitbake's own server (lib/hashserv/server.py and
// lib/bb/asyncrpc, bitbake 2.19) and the bytes of
// compat/hashserv-transcript.txt: the handshake, framing and chunking
// (package hashserv/wire, which the hashimport client shares), replies
// spelled as Python's json.dumps (pyjson.go), normal and stream modes
// (conn.go), and every command with bitbake's answer (commands.go). It differs where the store or safety
// asks for it, each documented at its place:
//
//   - exists-stream answers whether the sstate object exists, not
//     whether the unihash was ever reported;
//   - get with all answers a stable hash as "id" and null as
//     "outhash_siginfo", which is not kept;
//   - remove, gc-*, clean-unused and get-db-usage answer an invoke-error
//     (the index is managed by sstatefs); backfill-wait answers 0 tasks;
//   - there are no users: auth fails, user administration is refused, as
//     bitbake answers an anonymous user;
//   - limits bitbake lacks: MaxMessage, IdleTimeout, 1024-byte report
//     fields without control characters, and records whose unihash is
//     not 64 lowercase hex characters are never answered (bitbake aborts
//     the build on one).
package hashserv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/unixsock"
)

// Backend stores equivalences. Implementations are safe for concurrent use.
//
// The server keeps bitbake's rules on top of it: the first unihash
// recorded for a (method, taskhash) is the one every later answer gives,
// and a report whose outhash matches an earlier record of another
// taskhash gets that record's unihash. A taskhash may therefore be
// recorded more than once, with different outhashes (a task that does not
// build reproducibly, rerun): every such record carries the unihash the
// taskhash already has, and each makes its outhash match later reports,
// as bitbake's outhashes_v2 rows do.
type Backend interface {
	// Get returns the first record of (method, taskhash).
	Get(method, taskhash string) (index.Equivalence, bool)
	// GetByOuthash returns the first-reported record with this
	// (method, outhash); outhash is never empty.
	GetByOuthash(method, outhash string) (index.Equivalence, bool)
	// ObjectExists reports whether an sstate object named by this unihash
	// is present. exists-stream answers true only for those, so that
	// bitbake asks for nothing it cannot restore.
	ObjectExists(unihash string) bool
	// Record stores a new report durably; it is called only when the
	// server decided a record must be written, and returns once Get and
	// GetByOuthash show it. Calls for unrelated taskhashes and outhashes
	// run concurrently; calls concerning one taskhash or one outhash
	// come one at a time. A record for a (method, taskhash, outhash)
	// already stored must leave the stored one as it is (first writer
	// wins); the server avoids such calls where the Backend's answers let
	// it tell. An error wrapping ErrInvalidRecord says the Backend refuses
	// the record itself (a field it cannot store): the report is then
	// bad input, not a failure of the Backend.
	Record(ctx context.Context, e index.Equivalence) error
}

// ErrInvalidRecord is wrapped by a Backend's Record error for a record it
// refuses as malformed. Either way the report gets no answer and the
// connection is closed; the difference is in the log and the statistics.
var ErrInvalidRecord = errors.New("invalid equivalence record")

// Defaults of Options.
const (
	// DefaultMaxMessage bounds a chunked message. bitbake sets no bound;
	// its largest messages are reports carrying outhash_siginfo
	// (SSTATE_HASHEQUIV_REPORT_TASKDATA = "1"), the list of every output
	// file of a task, a few MiB for the largest recipes.
	DefaultMaxMessage = 16 << 20
	// DefaultIdleTimeout disconnects a client that sends no line for this
	// long. bitbake's client reconnects by itself when it finds its
	// connection closed, so closing idle connections costs it nothing.
	DefaultIdleTimeout = 5 * time.Minute
	// DefaultRecordTimeout bounds one Backend.Record.
	DefaultRecordTimeout = 30 * time.Second
)

// Options configure a Server. The zero value is usable.
type Options struct {
	// Logger receives connection errors (Info) and backend failures
	// (Error); nil discards.
	Logger *slog.Logger
	// ReadOnly makes the server behave like `bitbake-hashserv --read-only`:
	// report is answered (with the unihash of an equivalent outhash, else
	// the reported one) but nothing is recorded, and report-equiv and the
	// administration commands are unknown (the connection is closed).
	ReadOnly bool
	// MayRecord, when set, is asked once per accepted connection, before
	// the handshake, whether its client may record; a connection it
	// refuses is served as ReadOnly. It sees the raw connection, so that
	// it can ask who is at the other end (SO_PEERCRED): everyone who can
	// reach the listener may ask, not everyone may change the store.
	MayRecord func(nc net.Conn) bool
	// MaxMessage is the largest chunked message accepted, in bytes
	// (default DefaultMaxMessage). A single line is at most MaxLine bytes
	// whatever this says, as in bitbake.
	MaxMessage int
	// IdleTimeout is how long the server waits for the next line of a
	// client, and for the whole handshake, before it disconnects it; it
	// also bounds each write (default DefaultIdleTimeout).
	IdleTimeout time.Duration
	// RecordTimeout bounds one Backend.Record (default
	// DefaultRecordTimeout). A report whose record fails or times out is
	// not answered: the connection is closed, as bitbake's server does on
	// a database error, and bitbake's client retries, then warns.
	RecordTimeout time.Duration
	// Now stamps the Created time of new records (default time.Now).
	Now func() time.Time
}

// Server serves bitbake's hash equivalence protocol from a Backend. It is
// safe for concurrent use; Serve may run on several listeners at once
// (a unix socket and a TCP port, say), sharing statistics.
type Server struct {
	backend Backend
	opt     Options
	log     *slog.Logger

	// commands are the commands this server knows, in bitbake's dispatch
	// order (a message naming two commands runs the earlier one);
	// roCommands those of a read-only connection.
	commands, roCommands []command

	locks *hashLocks // serialise reports per taskhash and per outhash

	// authDelay is how long auth waits before it fails, as bitbake's
	// does to slow down guessing (a variable for tests).
	authDelay time.Duration

	connSeq     atomic.Uint64
	connections atomic.Uint64
	active      atomic.Int64
	requests    atomic.Uint64
	errorsN     atomic.Uint64
	records     atomic.Uint64
	streamLines atomic.Uint64
	hits        atomic.Uint64
	misses      atomic.Uint64
	byCommand   map[string]*atomic.Uint64 // fixed keys, set in New

	reqMu    sync.Mutex
	reqStats requestStats // guarded by reqMu
}

// New returns a server answering from b.
func New(b Backend, opt Options) *Server {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.MaxMessage <= 0 {
		opt.MaxMessage = DefaultMaxMessage
	}
	if opt.IdleTimeout <= 0 {
		opt.IdleTimeout = DefaultIdleTimeout
	}
	if opt.RecordTimeout <= 0 {
		opt.RecordTimeout = DefaultRecordTimeout
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	s := &Server{
		backend:    b,
		opt:        opt,
		log:        opt.Logger,
		commands:   commandTable(opt.ReadOnly),
		roCommands: commandTable(true),
		locks:      newHashLocks(),
		authDelay:  time.Second,
		byCommand:  make(map[string]*atomic.Uint64),
	}
	for _, c := range commandTable(false) {
		s.byCommand[c.name] = new(atomic.Uint64)
	}
	s.byCommand[unrecognized] = new(atomic.Uint64)
	return s
}

// unrecognized is the Stats.ByCommand key of messages naming no command
// the server knows.
const unrecognized = "unrecognized"

// Serve accepts connections on ln and serves each in its own goroutine
// until ctx is done; it then closes ln and every connection it accepted,
// waits for their goroutines and returns nil. It returns an error if ln
// fails otherwise.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	var wg sync.WaitGroup
	var err error
	var delay time.Duration
	for {
		nc, aerr := ln.Accept()
		if aerr != nil {
			if ctx.Err() != nil {
				break
			}
			if temporaryAccept(aerr) {
				// Out of file descriptors or the like: wait and retry,
				// as net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.LogAttrs(ctx, slog.LevelWarn, "hashserv: accept", slog.String("listener", ln.Addr().String()), slog.Any("err", aerr))
				select {
				case <-time.After(delay):
				case <-ctx.Done():
				}
				continue
			}
			err = fmt.Errorf("hashserv: accept on %s: %w", ln.Addr(), aerr)
			break
		}
		delay = 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, nc)
		}()
	}
	cancel()
	ln.Close()
	wg.Wait()
	return err
}

func temporaryAccept(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// ErrNotLoopback is returned by Listen for a TCP address other hosts could
// reach.
var ErrNotLoopback = errors.New("not a loopback address")

// Listen opens a listener for an address written as bitbake's
// BB_HASHSERVE is: "unix:///abs/path.sock" (or "unix://rel/path.sock",
// "unix:path.sock") for a unix socket, "HOST:PORT" or "[HOST]:PORT" for
// TCP. A stale socket file (one nobody accepts on) is replaced; a live
// one, or a file that is not a socket, is an error. A unix socket is
// created owner-only (0600, the process's uid and gid); see ListenAs.
//
// TCP is refused (ErrNotLoopback) unless HOST is a loopback address or
// "localhost": the protocol has no authentication here, and anyone who
// can report can make every builder restore the wrong object for a task.
// A deliberate network listener (a read-only upstream, say) is one
// net.Listen away for the caller who means it. Every local user can
// connect to a loopback port: give the server Options.MayRecord.
func Listen(addr string) (net.Listener, error) {
	return ListenAs(addr, unixsock.Owner{UID: -1, GID: -1, Mode: 0o600})
}

// ListenAs is Listen with the owner and mode of a unix socket (ignored for
// TCP). The socket has them from its first moment: it is never reachable
// with the umask's mode.
func ListenAs(addr string, owner unixsock.Owner) (net.Listener, error) {
	var path string
	switch {
	case strings.HasPrefix(addr, "unix://"):
		path = addr[len("unix://"):]
	case strings.HasPrefix(addr, "unix:"):
		path = addr[len("unix:"):]
	case strings.HasPrefix(addr, "ws://"), strings.HasPrefix(addr, "wss://"):
		return nil, fmt.Errorf("hashserv: listen on %q: websockets are not supported; use unix:// or HOST:PORT", addr)
	default:
		return listenTCP(addr)
	}
	if path == "" {
		return nil, fmt.Errorf("hashserv: listen on %q: empty socket path", addr)
	}
	if len(path) > unixsock.MaxPath {
		return nil, fmt.Errorf("hashserv: listen on %q: socket path is %d bytes, the limit is %d", addr, len(path), unixsock.MaxPath)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, fmt.Errorf("hashserv: listen on %q: %w", addr, err)
	}
	ln, err := unixsock.Listen(path, owner)
	if err != nil {
		return nil, fmt.Errorf("hashserv: listen on %q: %w", addr, err)
	}
	return ln, nil
}

func listenTCP(addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("hashserv: listen on %q: want unix://PATH or HOST:PORT: %w", addr, err)
	}
	if ip := net.ParseIP(host); !strings.EqualFold(host, "localhost") && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("hashserv: listen on %q: %w (use 127.0.0.1, [::1], localhost or a unix socket)", addr, ErrNotLoopback)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("hashserv: listen on %q: %w", addr, err)
	}
	return ln, nil
}

// removeStaleSocket removes a socket file left behind by a server that is
// gone, so that a restart after a crash does not fail with EADDRINUSE.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s is in use by a running server", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("checking whether %s is stale: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale socket: %w", err)
	}
	return nil
}

// Stats are counters since New, for metrics.
type Stats struct {
	Connections uint64 // connections accepted
	Active      int64  // connections open now
	// Requests counts what bitbake's get-stats counts: normal-mode
	// commands the server knows, and lines answered in stream mode
	// (including the END that leaves it).
	Requests uint64
	// Errors counts connections ended by bad input (malformed or
	// oversized messages, unknown commands, a client stuck past
	// IdleTimeout), an invoke-error answer or a backend failure.
	Errors  uint64
	Records uint64 // equivalences recorded through Backend.Record
	// Hits and Misses count unihash lookups by taskhash or outhash (get,
	// get-stream lines, get-outhash, outhash matching of report).
	Hits, Misses uint64
	// StreamLines counts the query lines answered in stream modes.
	StreamLines uint64
	// ByCommand counts normal-mode messages by command name ("get",
	// "report", "get-stream" for entering that mode, ...; "unrecognized"
	// for messages naming no command the server knows).
	ByCommand map[string]uint64
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Connections: s.connections.Load(),
		Active:      s.active.Load(),
		Requests:    s.requests.Load(),
		Errors:      s.errorsN.Load(),
		Records:     s.records.Load(),
		StreamLines: s.streamLines.Load(),
		Hits:        s.hits.Load(),
		Misses:      s.misses.Load(),
		ByCommand:   make(map[string]uint64, len(s.byCommand)),
	}
	for k, v := range s.byCommand {
		st.ByCommand[k] = v.Load()
	}
	return st
}

// requestStats is bitbake's Stats (server.py): request durations in
// seconds with a running mean and variance (Welford).
type requestStats struct {
	num              int64
	total, max, m, s float64
}

func (r *requestStats) add(elapsed float64) {
	r.num++
	if r.num == 1 {
		r.m, r.s = elapsed, 0
	} else {
		last := r.m
		r.m = last + (elapsed-last)/float64(r.num)
		r.s += (elapsed - last) * (elapsed - r.m)
	}
	r.total += elapsed
	r.max = max(r.max, elapsed)
}

// object is the "requests" value of get-stats, with Python's types: ints
// (0) where bitbake has not yet turned them into floats.
func (r *requestStats) object() object {
	var total, maxT, avg, stdev any = pyInt(0), pyInt(0), pyInt(0), pyInt(0)
	if r.num > 0 {
		total, avg = pyFloat(r.total), pyFloat(r.total/float64(r.num))
	}
	if r.max > 0 {
		maxT = pyFloat(r.max)
	}
	if r.num > 1 {
		stdev = pyFloat(math.Sqrt(r.s / float64(r.num-1)))
	}
	return object{{"num", pyInt(r.num)}, {"total_time", total}, {"max_time", maxT}, {"average", avg}, {"stdev", stdev}}
}

// sample records one request duration for get-stats.
func (s *Server) sample(start time.Time) {
	s.requests.Add(1)
	s.reqMu.Lock()
	s.reqStats.add(time.Since(start).Seconds())
	s.reqMu.Unlock()
}

func (s *Server) requestsObject(reset bool) object {
	s.reqMu.Lock()
	defer s.reqMu.Unlock()
	o := s.reqStats.object()
	if reset {
		s.reqStats = requestStats{}
	}
	return o
}
