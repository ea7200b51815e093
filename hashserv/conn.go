package hashserv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"time"

	"github.com/sstatefs/sstatefs/hashserv/wire"
)

// conn is one client connection. It is used by one goroutine.
type conn struct {
	srv *Server
	// readOnly: this client's reports are answered, not recorded
	// (Options.ReadOnly, or Options.MayRecord refused it).
	readOnly bool
	commands []command // the table for readOnly
	nc       net.Conn
	r        *wire.LineReader
	dec      decoder
	w        *bufio.Writer
	log      *slog.Logger
}

// invokeError is answered as {"invoke-error": {"message": ...}}, after
// which the connection is closed (bitbake's InvokeError).
type invokeError struct{ msg string }

func (e *invokeError) Error() string { return e.msg }

// backendError is a failure of the Backend: the connection is closed
// without an answer, as bitbake's server does on a database error.
type backendError struct{ err error }

func (e *backendError) Error() string { return e.err.Error() }
func (e *backendError) Unwrap() error { return e.err }

func (s *Server) serveConn(ctx context.Context, nc net.Conn) {
	id := s.connSeq.Add(1)
	s.connections.Add(1)
	s.active.Add(1)
	defer s.active.Add(-1)
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	defer nc.Close()

	remote := "unix"
	if a := nc.RemoteAddr(); a != nil && a.String() != "" && a.String() != "@" {
		remote = a.String()
	}
	c := &conn{
		srv: s,
		nc:  nc,
		r:   wire.NewLineReader(nc, MaxLine),
		w:   bufio.NewWriterSize(nc, 4096),
		log: s.log.With(slog.Uint64("conn", id), slog.String("client", remote)),
	}
	c.dec = decoder{r: c.r, maxMessage: s.opt.MaxMessage}
	c.readOnly = s.opt.ReadOnly || (s.opt.MayRecord != nil && !s.opt.MayRecord(nc))
	c.commands = s.commands
	if c.readOnly {
		c.commands = s.roCommands
	}

	defer func() {
		// A panic (a Backend's, say) ends this connection, not the
		// server.
		if p := recover(); p != nil {
			s.errorsN.Add(1)
			c.log.Error("hashserv: panic serving client", slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
		}
	}()

	err := c.run(ctx)
	var ie *invokeError
	var be *backendError
	switch {
	case err == nil, errors.Is(err, io.EOF), ctx.Err() != nil:
		c.log.Debug("hashserv: client disconnected")
	case errors.As(err, &ie):
		s.errorsN.Add(1)
		c.log.Info("hashserv: closing connection after invoke-error", slog.String("message", ie.msg))
	case errors.As(err, &be):
		s.errorsN.Add(1)
		c.log.Error("hashserv: backend failed, closing connection", slog.Any("err", be.err))
	case errors.Is(err, os.ErrDeadlineExceeded):
		s.errorsN.Add(1)
		c.log.Info("hashserv: closing idle connection", slog.Duration("idle_timeout", s.opt.IdleTimeout))
	case errors.Is(err, net.ErrClosed):
		c.log.Debug("hashserv: connection closed")
	default:
		s.errorsN.Add(1)
		c.log.Info("hashserv: closing connection", slog.Any("err", err))
	}
}

// run serves the connection until the client leaves or an error ends it.
func (c *conn) run(ctx context.Context) error {
	if err := c.handshake(); err != nil {
		return err
	}
	for {
		c.readDeadline()
		m, err := c.dec.readMessage()
		if err != nil {
			return err
		}
		if err := c.dispatch(ctx, m); err != nil {
			var ie *invokeError
			if errors.As(err, &ie) {
				reply := object{{"invoke-error", object{{"message", ie.msg}}}}
				if werr := c.reply(reply); werr != nil {
					return werr
				}
				if werr := c.flush(); werr != nil {
					return werr
				}
			}
			return err
		}
	}
}

// handshake reads "OEHASHEQUIV 1.1", header lines and an empty line
// (wire.ReadHandshake), and answers the empty
// header block when the client sends needs-headers: true. Anything else
// closes the connection without an answer. The whole handshake must
// arrive within IdleTimeout.
func (c *conn) handshake() error {
	if c.srv.opt.IdleTimeout > 0 {
		c.nc.SetReadDeadline(time.Now().Add(c.srv.opt.IdleTimeout))
	}
	headers, err := wire.ReadHandshake(c.r)
	if err != nil {
		return err
	}
	if headers["needs-headers"] == "true" {
		// bitbake's hash equivalence server has no headers to send: the
		// block is the empty line that ends it.
		if err := c.writeRaw([]byte("\n")); err != nil {
			return err
		}
		return c.flush()
	}
	return nil
}

// dispatch runs the first command of bitbake's order that the message
// names and writes its answer.
func (c *conn) dispatch(ctx context.Context, m message) error {
	for _, cmd := range c.commands {
		raw, ok := m[cmd.name]
		if !ok {
			continue
		}
		c.srv.byCommand[cmd.name].Add(1)
		if cmd.stream != nil {
			// Stream commands are not timed themselves; their lines are.
			return c.stream(cmd, raw)
		}
		start := time.Now()
		reply, err := cmd.run(ctx, c, raw)
		c.srv.sample(start)
		if err != nil {
			return err
		}
		if err := c.reply(reply); err != nil {
			return err
		}
		return c.flushIfIdle()
	}
	c.srv.byCommand[unrecognized].Add(1)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	return protoErrorf("unrecognized command %q", keys)
}

// stream runs a stream mode (bitbake's _stream_handler): "ok", then one
// answer line per query line, until END or an empty line, then a raw ok.
func (c *conn) stream(cmd command, raw []byte) error {
	answer, err := cmd.stream(c, raw)
	if err != nil {
		return err
	}
	if err := c.reply("ok"); err != nil {
		return err
	}
	if err := c.flush(); err != nil {
		return err
	}
	for {
		c.readDeadline()
		line, err := c.r.ReadText()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return io.EOF
			}
			return err
		}
		if line == "" {
			break
		}
		start := time.Now()
		if line == "END" {
			c.srv.sample(start)
			break
		}
		c.srv.streamLines.Add(1)
		out, err := answer(line)
		c.srv.sample(start)
		if err != nil {
			return err
		}
		if err := c.writeRaw(append([]byte(out), '\n')); err != nil {
			return err
		}
		if err := c.flushIfIdle(); err != nil {
			return err
		}
	}
	if err := c.writeRaw([]byte("ok\n")); err != nil {
		return err
	}
	return c.flushIfIdle()
}

func (c *conn) readDeadline() {
	if c.srv.opt.IdleTimeout > 0 {
		c.nc.SetReadDeadline(time.Now().Add(c.srv.opt.IdleTimeout))
	}
}

func (c *conn) writeDeadline() {
	if c.srv.opt.IdleTimeout > 0 {
		c.nc.SetWriteDeadline(time.Now().Add(c.srv.opt.IdleTimeout))
	}
}

// reply writes a normal-mode message.
func (c *conn) reply(v any) error { return c.writeRaw(encodeMessage(v)) }

func (c *conn) writeRaw(b []byte) error {
	c.writeDeadline()
	if _, err := c.w.Write(b); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

func (c *conn) flush() error {
	c.writeDeadline()
	if err := c.w.Flush(); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

// flushIfIdle sends buffered answers unless the next request is already
// buffered, so that pipelined stream queries (bitbake sends them in
// batches) are answered in few writes.
func (c *conn) flushIfIdle() error {
	if c.r.LineBuffered() {
		return nil
	}
	return c.flush()
}
