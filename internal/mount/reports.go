package mount

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/sstatefs/sstatefs/index"
)

// ReportsFile is the mount's write-ahead file of hash equivalence
// reports, in <cache-dir>/state.
const ReportsFile = "hashserv-reports.wal"

const (
	// maxPendingReports: beyond this many reports not yet in the store
	// (the store is down), Record waits for its segment as `hashserv
	// serve` does, so that memory and the file stay bounded.
	maxPendingReports = 10_000
	// maxReportsBytes: the file is rewritten with only the pending
	// reports when it grows past this (it is emptied whenever none is
	// pending, which under a steady stream of reports may be rare).
	maxReportsBytes = 1 << 20
	// maxReportEntry bounds one entry: a record's fields are at most 1 KiB
	// each (hashserv), so a larger length is corruption.
	maxReportEntry = 64 << 10
	// reportRetry: how long a report whose segment failed waits before it
	// joins a batch again.
	reportRetry = 5 * time.Second
	// reportHeader: an entry is its length and CRC-32C (big endian), then
	// the record as JSON.
	reportHeader = 8
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errReportsClosed: a report came while the mount was closing.
var errReportsClosed = errors.New("hash equivalence reports: the mount is closing")

// laterReporter adds a record to the journal's open batch without waiting
// for its segment (index.Journal.ReportedLater).
type laterReporter interface {
	ReportedLater(ctx context.Context, e index.Equivalence) (wait func(context.Context) error, err error)
}

// pendingReports makes the mount's hash equivalence reports durable
// locally so that bitbake's answer does not wait for a segment of its own:
// a report is appended to a write-ahead file (fsync'd), kept in memory
// where Get and GetByOuthash find it, and added to the journal's open
// batch, which the build's objects fill (publish.record_interval). Once
// the segment holding it is in the store (and so in the live index), it
// leaves memory, and the file is emptied when nothing is pending. At
// start the reports a killed mount left in the file are recorded again: a
// record written twice does no harm, the first one stays in force.
// Measured on the bitbake harness: a populate wrote 8 segments, 7 of them
// holding one report each, before.
type pendingReports struct {
	journal laterReporter
	path    string
	log     *slog.Logger
	now     func() time.Time
	// after is the retry delay's timer (tests move it by hand)
	after func(time.Duration) <-chan time.Time

	ctx    context.Context // ends at close: retries stop
	cancel context.CancelFunc
	wg     sync.WaitGroup // the goroutines waiting for segments
	// closeOnce: Start's failure paths and Mount.Close both close
	closeOnce sync.Once

	// fileMu guards f and size, and orders appends, truncation and
	// rewrites of the file. Taken before mu.
	fileMu  sync.Mutex
	f       *os.File // nil once closed
	size    int64
	limit   int64 // size past which the file is rewritten
	closing bool  // Record refuses new reports

	mu      sync.Mutex // guards pending, next; never held during I/O
	pending map[uint64]index.Equivalence
	next    uint64 // id of the next report; ids order reports
}

// openReports opens (or creates) the file at path and records again the
// reports it holds. An entry cut short or damaged (a crash while it was
// appended) ends the file: what came before is read, the rest dropped and
// logged.
func openReports(path string, j laterReporter, log *slog.Logger) (*pendingReports, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("hash equivalence reports file: %w", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("hash equivalence reports file %s: %w", path, err)
	}
	es, good, bad := decodeReports(data)
	if bad != nil {
		log.Warn("hash equivalence reports file ends in a damaged entry (a crash while writing it?): reports up to it are recorded, the rest dropped",
			"file", path, "offset", good, "dropped_bytes", len(data)-good, "error", bad)
		if err := f.Truncate(int64(good)); err != nil {
			f.Close()
			return nil, fmt.Errorf("hash equivalence reports file %s: %w", path, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &pendingReports{
		journal: j, path: path, log: log, now: time.Now, after: time.After,
		ctx: ctx, cancel: cancel, f: f, size: int64(good), limit: max(maxReportsBytes, 2*int64(good)),
		pending: map[uint64]index.Equivalence{},
	}
	if len(es) > 0 {
		log.Info("hash equivalence reports of an earlier run not yet in the store: recording them again", "reports", len(es), "file", path)
	}
	p.fileMu.Lock()
	defer p.fileMu.Unlock()
	for _, e := range es {
		p.addLocked(e)
	}
	if len(es) == 0 && p.size > 0 {
		p.emptyLocked()
	}
	return p, nil
}

// decodeReports reads the entries of data up to the first damaged one:
// good is the offset where it starts (len(data) if none), bad why it is
// damaged.
func decodeReports(data []byte) (es []index.Equivalence, good int, bad error) {
	for off := 0; off < len(data); {
		rest := data[off:]
		if len(rest) < reportHeader {
			return es, off, fmt.Errorf("%d bytes left, an entry header takes %d", len(rest), reportHeader)
		}
		n := binary.BigEndian.Uint32(rest)
		if n == 0 || n > maxReportEntry {
			return es, off, fmt.Errorf("entry length %d out of range", n)
		}
		if int(n) > len(rest)-reportHeader {
			return es, off, fmt.Errorf("entry of %d bytes cut short at %d", n, len(rest)-reportHeader)
		}
		payload := rest[reportHeader : reportHeader+int(n)]
		if crc32.Checksum(payload, castagnoli) != binary.BigEndian.Uint32(rest[4:]) {
			return es, off, errors.New("entry checksum mismatch")
		}
		var e index.Equivalence
		if err := json.Unmarshal(payload, &e); err != nil {
			return es, off, fmt.Errorf("entry: %w", err)
		}
		if err := e.Validate(); err != nil {
			return es, off, fmt.Errorf("entry: %w", err)
		}
		es = append(es, e)
		off += reportHeader + int(n)
	}
	return es, len(data), nil
}

// encodeReport is the file entry of e.
func encodeReport(e index.Equivalence) ([]byte, error) {
	payload, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, reportHeader, reportHeader+len(payload))
	binary.BigEndian.PutUint32(buf, uint32(len(payload)))
	binary.BigEndian.PutUint32(buf[4:], crc32.Checksum(payload, castagnoli))
	return append(buf, payload...), nil
}

// Record makes e durable in the file and visible to Get and GetByOuthash,
// adds it to the journal's open batch and returns without waiting for the
// segment (unless too many reports already wait for the store).
func (p *pendingReports) Record(ctx context.Context, e index.Equivalence) error {
	if e.Created.IsZero() {
		e.Created = p.now().UTC()
	}
	if err := e.Validate(); err != nil {
		return fmt.Errorf("hash equivalence report not recorded: %w", err)
	}
	entry, err := encodeReport(e)
	if err != nil {
		return fmt.Errorf("hash equivalence report of %s %s: %w", e.Method, e.Taskhash, err)
	}
	p.fileMu.Lock()
	if p.closing {
		p.fileMu.Unlock()
		return errReportsClosed
	}
	if p.size+int64(len(entry)) > p.limit {
		if err := p.rewriteLocked(); err != nil {
			p.fileMu.Unlock()
			return err
		}
	}
	if _, err := p.f.Write(entry); err != nil {
		p.f.Truncate(p.size) // no partial entry before the next one
		p.fileMu.Unlock()
		return fmt.Errorf("hash equivalence reports file %s: %w", p.path, err)
	}
	if err := p.f.Sync(); err != nil {
		p.fileMu.Unlock()
		return fmt.Errorf("hash equivalence reports file %s: %w", p.path, err)
	}
	p.size += int64(len(entry))
	wait, crowded := p.addLocked(e)
	p.fileMu.Unlock()
	if crowded && wait != nil {
		return wait(ctx)
	}
	return nil
}

// addLocked keeps e pending and adds it to the journal's batch; wait
// returns once its segment is written. crowded: too many reports wait
// for the store (p.fileMu held: Close waits for what it starts).
func (p *pendingReports) addLocked(e index.Equivalence) (wait func(context.Context) error, crowded bool) {
	p.mu.Lock()
	id := p.next
	p.next++
	p.pending[id] = e
	crowded = len(p.pending) > maxPendingReports
	p.mu.Unlock()
	wait, err := p.journal.ReportedLater(p.ctx, e)
	if err != nil {
		// refused before: only a journal that changed its rules gets here
		p.log.Error("hash equivalence report not recorded", "method", e.Method, "taskhash", e.Taskhash, "error", err)
		p.mu.Lock()
		delete(p.pending, id)
		p.mu.Unlock()
		return nil, crowded
	}
	p.wg.Add(1)
	go p.await(id, e, wait)
	return wait, crowded
}

// await waits until report id is in the store, adding it again after a
// failed segment, and then lets it go; at close it stops and leaves the
// report in the file for the next start.
func (p *pendingReports) await(id uint64, e index.Equivalence, wait func(context.Context) error) {
	defer p.wg.Done()
	for failed := false; ; {
		err := wait(p.ctx)
		if err == nil {
			if failed {
				p.log.Info("hash equivalence report recorded after a failure", "method", e.Method, "taskhash", e.Taskhash)
			}
			p.written(id)
			return
		}
		if p.ctx.Err() != nil {
			return
		}
		if !failed {
			p.log.Warn("hash equivalence report not yet in the store; kept in the reports file and retried", "method", e.Method, "taskhash", e.Taskhash, "retry", reportRetry, "error", err)
		}
		failed = true
		select {
		case <-p.after(reportRetry):
		case <-p.ctx.Done():
			return
		}
		if wait, err = p.journal.ReportedLater(p.ctx, e); err != nil {
			p.log.Error("hash equivalence report not recorded", "method", e.Method, "taskhash", e.Taskhash, "error", err)
			return
		}
	}
}

// written lets report id go: its segment is in the store. The file is
// emptied when no report is pending any more.
func (p *pendingReports) written(id uint64) {
	p.fileMu.Lock()
	defer p.fileMu.Unlock()
	p.mu.Lock()
	delete(p.pending, id)
	empty := len(p.pending) == 0
	p.mu.Unlock()
	if empty && p.f != nil && p.size > 0 {
		p.emptyLocked()
	}
}

// emptyLocked truncates the file (p.fileMu held). A failure only leaves
// reports to be recorded again at the next start.
func (p *pendingReports) emptyLocked() {
	if err := p.f.Truncate(0); err != nil {
		p.log.Warn("hash equivalence reports file not emptied: its reports are recorded again at the next start", "file", p.path, "error", err)
		return
	}
	p.f.Sync()
	p.size, p.limit = 0, maxReportsBytes
}

// rewriteLocked replaces the file by one holding only the pending reports
// (p.fileMu held), atomically: a crash leaves the old file or the new.
func (p *pendingReports) rewriteLocked() error {
	p.mu.Lock()
	ids := make([]uint64, 0, len(p.pending))
	for id := range p.pending {
		ids = append(ids, id)
	}
	es := make([]index.Equivalence, 0, len(ids))
	slices.Sort(ids)
	for _, id := range ids {
		es = append(es, p.pending[id])
	}
	p.mu.Unlock()
	var buf []byte
	for _, e := range es {
		entry, err := encodeReport(e)
		if err != nil {
			return fmt.Errorf("hash equivalence reports file %s: %w", p.path, err)
		}
		buf = append(buf, entry...)
	}
	tmp := p.path + ".tmp"
	if err := writeSynced(tmp, buf); err != nil {
		return fmt.Errorf("hash equivalence reports file %s: %w", p.path, err)
	}
	if err := os.Rename(tmp, p.path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("hash equivalence reports file %s: %w", p.path, err)
	}
	if d, err := os.Open(filepath.Dir(p.path)); err == nil {
		d.Sync()
		d.Close()
	}
	f, err := os.OpenFile(p.path, os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("hash equivalence reports file %s: %w", p.path, err)
	}
	p.f.Close()
	p.f, p.size = f, int64(len(buf))
	// many reports wait (the store is down): the next rewrite only once
	// the file doubled, so that appends stay cheap
	p.limit = max(maxReportsBytes, 2*p.size)
	return nil
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Get is the first pending report of (method, taskhash). The scan is
// linear: few reports are pending at a time (those of one record
// interval), and at most maxPendingReports.
func (p *pendingReports) Get(method, taskhash string) (index.Equivalence, bool) {
	return p.first(func(e index.Equivalence) bool { return e.Method == method && e.Taskhash == taskhash })
}

// GetByOuthash is the first pending report of (method, outhash).
func (p *pendingReports) GetByOuthash(method, outhash string) (index.Equivalence, bool) {
	return p.first(func(e index.Equivalence) bool { return e.Method == method && e.Outhash == outhash })
}

func (p *pendingReports) first(match func(index.Equivalence) bool) (index.Equivalence, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var (
		best   index.Equivalence
		bestID uint64
		found  bool
	)
	for id, e := range p.pending {
		if match(e) && (!found || id < bestID) {
			best, bestID, found = e, id, true
		}
	}
	return best, found
}

// Len is how many reports are not yet in the store.
func (p *pendingReports) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending)
}

// Close stops the retries and closes the file; the reports still pending
// stay in it and are recorded at the next start. Call it after the
// journal's last Flush: what that wrote has left the file.
func (p *pendingReports) Close() { p.closeOnce.Do(p.close) }

func (p *pendingReports) close() {
	p.fileMu.Lock()
	p.closing = true
	p.fileMu.Unlock()
	p.cancel()
	p.wg.Wait() // the written ones leave the file meanwhile
	if n := p.Len(); n > 0 {
		p.log.Warn("hash equivalence reports not yet in the store: kept in the reports file and recorded at the next start", "reports", n, "file", p.path)
	}
	p.fileMu.Lock()
	defer p.fileMu.Unlock()
	if p.f == nil {
		return
	}
	switch {
	case p.Len() == 0:
		p.emptyLocked()
	case p.size > 0:
		// the next start records only what is still waiting
		if err := p.rewriteLocked(); err != nil {
			p.log.Warn("hash equivalence reports file not rewritten: the next start records some reports again", "file", p.path, "error", err)
		}
	}
	p.f.Close()
	p.f = nil
}
