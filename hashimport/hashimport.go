// Package hashimport reads hash equivalence records out of bitbake-hashserv's
// world, its sqlite database file or a running server, so that
// `sstatefs hashserv import` can put them into the sstatefs index.
//
// It only reads: it opens databases read-only and sends a server nothing but
// queries (ping, get, get-stream, get-db-usage), never a report.
package hashimport

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/sstatefs/sstatefs/index"
)

// MethodTaskhash names one record on a hash equivalence server.
type MethodTaskhash struct {
	Method, Taskhash string
}

// Result counts what an import read.
type Result struct {
	Read    int // records passed to fn
	Skipped int // invalid records and, for FromServer, pairs the server does not know
	// Problems holds the reasons of the first few skips, each naming its row.
	Problems []string
}

// maxProblems bounds Result.Problems: a broken database should not fill
// memory with messages; the count is in Skipped.
const maxProblems = 20

func (r *Result) skip(format string, args ...any) {
	r.Skipped++
	if len(r.Problems) < maxProblems {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

var (
	// ErrNotSQLite means a file is not a sqlite database.
	ErrNotSQLite = errors.New("not a sqlite database")
	// ErrSchema means a sqlite database lacks a table or column of
	// bitbake-hashserv's schema.
	ErrSchema = errors.New("not a bitbake-hashserv database")
	// ErrChanged means a database file changed while it was read, e.g.
	// because a server started on it; read it again.
	ErrChanged = errors.New("database file changed during the read")
	// ErrNoEnumeration means FromServer was given no pairs: the protocol
	// (OEHASHEQUIV 1.1) has no command that lists a server's records.
	ErrNoEnumeration = errors.New("the hash equivalence protocol cannot list a server's records")
	// ErrServerClosed means the server closed the connection, e.g. because
	// it rejected the handshake.
	ErrServerClosed = errors.New("server closed the connection")
	// ErrProtocol means the server answered something the protocol does not allow.
	ErrProtocol = errors.New("protocol error")
)

// InvokeError is the server's refusal of a command ({"invoke-error": ...}),
// e.g. for missing permissions. The server closes the connection after it.
type InvokeError struct {
	Command string
	Message string
}

func (e *InvokeError) Error() string {
	return fmt.Sprintf("server refused %q: %s", e.Command, e.Message)
}

// check returns why e cannot be imported, or "".
func check(e *index.Equivalence) string {
	if reason := checkMethod(e.Method); reason != "" {
		return reason
	}
	if !isHex(e.Taskhash, 1, maxHashLen) {
		return fmt.Sprintf("taskhash %q is not lowercase hex", short(e.Taskhash))
	}
	if !isHex(e.Unihash, 64, 64) {
		// bitbake itself rejects such unihashes since 2.8; they also
		// cannot name an sstate object.
		return fmt.Sprintf("unihash %q is not 64 lowercase hex characters", short(e.Unihash))
	}
	if e.Outhash != "" && !isHex(e.Outhash, 1, maxHashLen) {
		return fmt.Sprintf("outhash %q is not lowercase hex", short(e.Outhash))
	}
	return ""
}

// maxHashLen is generous: bitbake's task and output hashes are sha256 (64).
const maxHashLen = 128

// checkMethod returns why m cannot be a method, or "". The stream protocol
// separates method and taskhash by white space, so a method cannot hold any.
func checkMethod(m string) string {
	if m == "" {
		return "empty method"
	}
	if strings.IndexFunc(m, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return fmt.Sprintf("method %q contains white space or control characters", short(m))
	}
	return ""
}

func isHex(s string, minLen, maxLen int) bool {
	if len(s) < minLen || len(s) > maxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// short cuts a value for a problem message.
func short(s string) string {
	const max = 80
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}

// createdLayouts are the forms bitbake has stored outhashes_v2.created in:
// datetime.isoformat() of an aware UTC time (current releases), of a naive
// time with a space separator (Python's old default sqlite adapter and
// SQLAlchemy), with or without fractional seconds, which time.Parse accepts
// without them being in the layout.
var createdLayouts = []string{
	"2006-01-02T15:04:05Z07:00",
	"2006-01-02 15:04:05Z07:00",
	"2006-01-02T15:04:05",
	"2006-01-02 15:04:05",
	"2006-01-02T15:04",
	"2006-01-02 15:04",
	"2006-01-02",
}

// parseCreated parses a created value; "" is the zero time.
func parseCreated(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	for _, layout := range createdLayouts {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("created %q is not an ISO 8601 time", short(s))
}
