package hashimport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/sstatefs/sstatefs/index"
)

// ServerOptions configures FromServer.
type ServerOptions struct {
	// Pairs are the records to read. The protocol cannot list a server's
	// records, so FromServer needs them; without, it fails with
	// ErrNoEnumeration.
	Pairs []MethodTaskhash
	// Timeout bounds connecting and each wait for the server; zero means
	// 30 seconds, as bitbake's client.
	Timeout time.Duration
}

// batchSize is how many pairs go to the server in one pipelined round trip.
const batchSize = 256

// FromServer reads records from a running hash equivalence server (addr as
// in BB_HASHSERVE: "unix:///path" or "host:port"; websocket addresses are
// not supported) and calls fn with each, in the order of opt.Pairs.
//
// OEHASHEQUIV 1.1 has no command that lists records: get, get-outhash and
// get-stream look up one taskhash or outhash, exists-stream one unihash,
// get-db-usage only counts rows and get-db-query-columns names columns. So
// FromServer reads the given pairs: {"get": {..., "all": true}} answers the
// joined row of the pair's oldest outhash; a pair without an outhash row is
// then looked up with get-stream, which answers its unihash alone (Outhash "",
// Created zero). To import a server's whole database, read its file with
// FromSQLite. Without pairs FromServer returns an error that wraps
// ErrNoEnumeration and tells how many rows the server holds, if it says.
//
// Invalid pairs, pairs the server does not know and invalid answers are
// counted and skipped; repeated pairs are read once. A refused command
// (*InvokeError), a closed connection and an error from fn are fatal.
func FromServer(ctx context.Context, addr string, opt ServerOptions, fn func(index.Equivalence) error) (Result, error) {
	var res Result
	c, err := dial(ctx, addr, opt.Timeout)
	if err != nil {
		return res, contextError(ctx, err)
	}
	defer c.close()
	if len(opt.Pairs) == 0 {
		return res, c.noEnumeration()
	}

	seen := make(map[MethodTaskhash]bool, len(opt.Pairs))
	batch := make([]MethodTaskhash, 0, batchSize)
	for _, p := range opt.Pairs {
		if reason := checkPair(p); reason != "" {
			res.skip("pair (%s %s): %s", short(p.Method), short(p.Taskhash), reason)
			continue
		}
		if seen[p] {
			continue
		}
		seen[p] = true
		batch = append(batch, p)
		if len(batch) == batchSize {
			if err := c.readBatch(batch, &res, fn); err != nil {
				return res, contextError(ctx, err)
			}
			batch = batch[:0]
		}
	}
	if err := c.readBatch(batch, &res, fn); err != nil {
		return res, contextError(ctx, err)
	}
	return res, nil
}

// contextError prefers the context's error: cancelling closes the
// connection, which fails whatever was under way with a less clear one.
func contextError(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	return err
}

func checkPair(p MethodTaskhash) string {
	if reason := checkMethod(p.Method); reason != "" {
		return reason
	}
	if !isHex(p.Taskhash, 1, maxHashLen) {
		return fmt.Sprintf("taskhash %q is not lowercase hex", short(p.Taskhash))
	}
	return ""
}

// getArgs is the argument of get, in the field order bitbake's client sends.
type getArgs struct {
	Taskhash string `json:"taskhash"`
	Method   string `json:"method"`
	All      bool   `json:"all"`
}

// fullRow is get's answer with all=true: the columns of outhashes_v2 and
// unihashes_v3 (also id, gc_mark and outhash_siginfo, not read here).
type fullRow struct {
	Method   string `json:"method"`
	Taskhash string `json:"taskhash"`
	Outhash  string `json:"outhash"`
	Unihash  string `json:"unihash"`
	Created  string `json:"created"`
	Owner    string `json:"owner"`
	PN       string `json:"PN"`
	PV       string `json:"PV"`
	PR       string `json:"PR"`
	Task     string `json:"task"`
}

// readBatch reads the records of pairs and passes them to fn in order.
func (c *client) readBatch(pairs []MethodTaskhash, res *Result, fn func(index.Equivalence) error) error {
	if len(pairs) == 0 {
		return nil
	}
	type outcome struct {
		e       index.Equivalence
		problem string // why the record is skipped
		miss    bool   // no outhash row: ask get-stream
	}
	out := make([]outcome, len(pairs))

	if err := c.endStream(); err != nil {
		return err
	}
	err := c.pipeline(len(pairs),
		func(i int) error {
			p := pairs[i]
			return c.writeMessage(map[string]getArgs{"get": {Taskhash: p.Taskhash, Method: p.Method, All: true}})
		},
		func(i int) error {
			reply, err := c.readMessage("get")
			if err != nil {
				return pairError(pairs[i], err)
			}
			if string(reply) == "null" {
				out[i].miss = true
				return nil
			}
			var row fullRow
			if err := json.Unmarshal(reply, &row); err != nil {
				if !isObject(reply) {
					return fmt.Errorf("hash equivalence server %s: %w: get %s %s answered %s", c.addr, ErrProtocol, pairs[i].Method, pairs[i].Taskhash, short(string(reply)))
				}
				out[i].problem = fmt.Sprintf("answer %s: %v", short(string(reply)), err)
				return nil
			}
			if row.Method != pairs[i].Method || row.Taskhash != pairs[i].Taskhash {
				return fmt.Errorf("hash equivalence server %s: %w: get %s %s answered the record of %s %s", c.addr, ErrProtocol, pairs[i].Method, pairs[i].Taskhash, short(row.Method), short(row.Taskhash))
			}
			out[i].e = index.Equivalence{
				Method: row.Method, Taskhash: row.Taskhash, Outhash: row.Outhash, Unihash: row.Unihash,
				PN: row.PN, PV: row.PV, PR: row.PR, Task: row.Task, Owner: row.Owner,
			}
			if row.Outhash == "" {
				out[i].problem = "answer has no outhash"
				return nil
			}
			if out[i].e.Created, err = parseCreated(row.Created); err != nil {
				out[i].problem = err.Error()
			}
			return nil
		})
	if err != nil {
		return err
	}

	var misses []int
	for i := range out {
		if out[i].miss {
			misses = append(misses, i)
		}
	}
	if len(misses) > 0 {
		if err := c.startStream("get-stream"); err != nil {
			return err
		}
		err := c.pipeline(len(misses),
			func(j int) error {
				p := pairs[misses[j]]
				return c.writeLine(p.Method + " " + p.Taskhash)
			},
			func(j int) error {
				i := misses[j]
				unihash, err := c.readLine()
				if err != nil {
					return pairError(pairs[i], err)
				}
				if unihash == "" {
					out[i].problem = "not known to the server"
					return nil
				}
				out[i].e = index.Equivalence{Method: pairs[i].Method, Taskhash: pairs[i].Taskhash, Unihash: unihash}
				return nil
			})
		if err != nil {
			return err
		}
	}

	for i, o := range out {
		row := fmt.Sprintf("pair (%s %s)", pairs[i].Method, pairs[i].Taskhash)
		if o.problem == "" {
			o.problem = check(&o.e)
		}
		if o.problem != "" {
			res.skip("%s: %s", row, o.problem)
			continue
		}
		if err := fn(o.e); err != nil {
			return fmt.Errorf("hashimport: %s: %w", row, err)
		}
		res.Read++
	}
	return nil
}

func pairError(p MethodTaskhash, err error) error {
	return fmt.Errorf("%w (reading pair %s %s)", err, p.Method, p.Taskhash)
}

func isObject(msg json.RawMessage) bool {
	var m map[string]json.RawMessage
	return json.Unmarshal(msg, &m) == nil
}

// noEnumeration builds FromServer's error for an empty pair list, with the
// server's row counts when it gives them (get-db-usage wants @db-admin,
// which anonymous users have by default).
func (c *client) noEnumeration() error {
	err := fmt.Errorf("hash equivalence server %s: %w; give (method, taskhash) pairs, or import the server's database file", c.addr, ErrNoEnumeration)
	reply, uerr := c.invoke("get-db-usage", struct{}{})
	if uerr != nil {
		var ie *InvokeError
		if errors.As(uerr, &ie) {
			return err
		}
		return errors.Join(err, uerr)
	}
	var usage struct {
		Usage map[string]struct {
			Rows int64 `json:"rows"`
		} `json:"usage"`
	}
	if json.Unmarshal(reply, &usage) != nil {
		return err
	}
	u, okU := usage.Usage["unihashes_v3"]
	o, okO := usage.Usage["outhashes_v2"]
	if !okU || !okO {
		return err
	}
	return fmt.Errorf("hash equivalence server %s holds %d unihash and %d outhash rows: %w; give (method, taskhash) pairs, or import the server's database file", c.addr, u.Rows, o.Rows, ErrNoEnumeration)
}
