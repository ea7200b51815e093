package hashimport

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/sstatefs/sstatefs/hashserv/wire"
)

// The client side of bitbake's hash equivalence protocol, OEHASHEQUIV 1.1
// (bitbake's lib/bb/asyncrpc and lib/hashserv), as far as an import needs
// it; the framing is hashserv/wire's, which the server shares.
//
// After the handshake the client sends one JSON message per line,
// {"<command>": <args>}, and the server answers each with one. The stream
// commands (get-stream, exists-stream, gc-mark-stream) answer "ok" and then
// exchange raw text lines until the client sends END, which the server
// answers with a raw ok. A refused command is answered
// {"invoke-error": {"message": ...}}, after which the server closes the
// connection.
const (
	// maxMessage bounds what a misbehaving server can make the client
	// buffer for one chunked reply (lines are bounded by wire.MaxLine).
	maxMessage = 256 << 20
	// defaultTimeout is bitbake's client timeout.
	defaultTimeout = 30 * time.Second
)

// client is one connection to a hash equivalence server. It is used by one
// goroutine, except that pipeline runs one writer beside it.
type client struct {
	addr    string
	nc      net.Conn
	r       *wire.LineReader
	w       *bufio.Writer
	out     []byte // the writer's framing buffer
	timeout time.Duration
	stream  string // the stream command in effect, "" in normal mode
	stop    func() bool
}

// parseAddress turns a BB_HASHSERVE address into a network and address for
// net.Dial, as bitbake's parse_address does.
func parseAddress(addr string) (network, address string, err error) {
	switch {
	case strings.HasPrefix(addr, "unix://"):
		path := strings.TrimPrefix(addr, "unix://")
		if path == "" {
			return "", "", fmt.Errorf("hash equivalence server address %q: empty socket path", addr)
		}
		// sun_path holds 108 bytes with the terminating NUL; bitbake works
		// around the limit with chdir, which a Go process cannot do safely.
		if len(path) > 107 {
			return "", "", fmt.Errorf("hash equivalence server address %q: socket path is %d bytes, longer than the 107 a unix socket allows", addr, len(path))
		}
		return "unix", path, nil
	case strings.HasPrefix(addr, "ws://"), strings.HasPrefix(addr, "wss://"):
		return "", "", fmt.Errorf("hash equivalence server address %q: websocket servers are not supported, use the server's unix or TCP address", addr)
	case addr == "auto" || addr == "":
		return "", "", fmt.Errorf("hash equivalence server address %q: want \"unix:///path\" or \"host:port\"", addr)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return "", "", fmt.Errorf("hash equivalence server address %q: want \"unix:///path\" or \"host:port\"", addr)
	}
	return "tcp", net.JoinHostPort(host, port), nil
}

// dial connects, makes the handshake and pings the server, so that an
// address that is no hash equivalence server fails here, clearly.
func dial(ctx context.Context, addr string, timeout time.Duration) (*client, error) {
	network, address, err := parseAddress(addr)
	if err != nil {
		return nil, err
	}
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	d := net.Dialer{Timeout: timeout}
	nc, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("hash equivalence server %s: %w", addr, err)
	}
	c := &client{
		addr:    addr,
		nc:      nc,
		r:       wire.NewLineReader(nc, wire.MaxLine),
		w:       bufio.NewWriterSize(nc, 64<<10),
		timeout: timeout,
		// Closing the connection is what interrupts a blocked read or write.
		stop: context.AfterFunc(ctx, func() { nc.Close() }),
	}
	// The server answers the headers only when asked (needs-headers: true).
	c.w.WriteString(wire.ClientHello)
	reply, err := c.invoke("ping", struct{}{})
	if err != nil {
		c.close()
		if errors.Is(err, ErrServerClosed) {
			return nil, fmt.Errorf("%w after the %s handshake: not a hash equivalence server, or one that does not speak this protocol version", err, wire.ProtocolLine)
		}
		return nil, err
	}
	var pong struct {
		Alive bool `json:"alive"`
	}
	if json.Unmarshal(reply, &pong) != nil || !pong.Alive {
		c.close()
		return nil, fmt.Errorf("hash equivalence server %s: %w: ping answered %s", addr, ErrProtocol, short(string(reply)))
	}
	return c, nil
}

func (c *client) close() error {
	c.stop()
	return c.nc.Close()
}

// invoke sends a command in normal mode and returns its reply.
func (c *client) invoke(command string, args any) (json.RawMessage, error) {
	if err := c.endStream(); err != nil {
		return nil, err
	}
	if err := c.writeMessage(map[string]any{command: args}); err != nil {
		return nil, err
	}
	if err := c.flush(); err != nil {
		return nil, err
	}
	return c.readMessage(command)
}

// startStream switches to the stream mode of command (e.g. "get-stream").
func (c *client) startStream(command string) error {
	if c.stream == command {
		return nil
	}
	reply, err := c.invoke(command, nil)
	if err != nil {
		return err
	}
	if string(reply) != `"ok"` {
		return fmt.Errorf("hash equivalence server %s: %w: %s answered %s, want \"ok\"", c.addr, ErrProtocol, command, short(string(reply)))
	}
	c.stream = command
	return nil
}

// endStream returns to normal mode.
func (c *client) endStream() error {
	if c.stream == "" {
		return nil
	}
	if err := c.writeLine("END"); err != nil {
		return err
	}
	if err := c.flush(); err != nil {
		return err
	}
	line, err := c.readLine()
	if err != nil {
		return err
	}
	if line != "ok" {
		return fmt.Errorf("hash equivalence server %s: %w: END of %s answered %q, want ok", c.addr, ErrProtocol, c.stream, short(line))
	}
	c.stream = ""
	return nil
}

// pipeline sends n requests from a second goroutine while it reads the n
// replies, so that a batch costs about one round trip instead of n. Both
// sides must run together: a server whose replies are not read stops
// reading requests.
func (c *client) pipeline(n int, send func(i int) error, recv func(i int) error) error {
	errc := make(chan error, 1)
	go func() {
		var err error
		for i := 0; i < n && err == nil; i++ {
			err = send(i)
		}
		if err == nil {
			err = c.flush()
		}
		if err != nil {
			c.nc.Close() // unblocks the reader; the connection is lost anyway
		}
		errc <- err
	}()
	var rerr error
	for i := 0; i < n && rerr == nil; i++ {
		rerr = recv(i)
	}
	if rerr != nil {
		c.nc.Close() // unblocks the writer
	}
	werr := <-errc
	// The reader's error says more (an invoke-error, the server closing).
	if rerr != nil {
		return rerr
	}
	return werr
}

// writeMessage writes one JSON message, chunked as bitbake does when it is
// 32 KiB characters or longer. It does not flush.
func (c *client) writeMessage(msg any) error {
	b, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	if err := c.nc.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
		return c.ioError(err)
	}
	c.out = wire.AppendMessage(c.out[:0], b)
	_, err = c.w.Write(c.out)
	return c.ioError(err)
}

func (c *client) writeLine(line string) error {
	if err := c.nc.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
		return c.ioError(err)
	}
	c.w.WriteString(line)
	return c.ioError(c.w.WriteByte('\n'))
}

func (c *client) flush() error {
	if err := c.nc.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
		return c.ioError(err)
	}
	return c.ioError(c.w.Flush())
}

// readMessage reads one JSON reply to command, joining a chunked one, and
// turns an invoke-error into *InvokeError.
func (c *client) readMessage(command string) (json.RawMessage, error) {
	if err := c.nc.SetReadDeadline(time.Now().Add(c.timeout)); err != nil {
		return nil, c.ioError(err)
	}
	msg, err := wire.ReadMessage(c.r, maxMessage)
	if err != nil {
		return nil, c.readError(err)
	}
	if !json.Valid(msg) {
		return nil, fmt.Errorf("hash equivalence server %s: %w: reply to %s is not JSON: %q", c.addr, ErrProtocol, command, short(string(msg)))
	}
	if bytes.HasPrefix(bytes.TrimSpace(msg), []byte("{")) {
		var ie struct {
			InvokeError *struct {
				Message string `json:"message"`
			} `json:"invoke-error"`
		}
		if json.Unmarshal(msg, &ie) == nil && ie.InvokeError != nil {
			return nil, fmt.Errorf("hash equivalence server %s: %w", c.addr, &InvokeError{Command: command, Message: ie.InvokeError.Message})
		}
	}
	return msg, nil
}

// readLine reads one raw line (stream mode), as bitbake's client does:
// without its newline and trailing whitespace.
func (c *client) readLine() (string, error) {
	if err := c.nc.SetReadDeadline(time.Now().Add(c.timeout)); err != nil {
		return "", c.ioError(err)
	}
	line, err := c.r.ReadText()
	if err != nil {
		return "", c.readError(err)
	}
	return line, nil
}

// readError sorts a read's error: a server breaking the framing or its
// limits is ErrProtocol, one closing in the middle of a line or message
// ErrServerClosed, the rest network errors.
func (c *client) readError(err error) error {
	switch {
	case errors.Is(err, wire.ErrLineTooLong), errors.Is(err, wire.ErrMessageTooLong), errors.Is(err, wire.ErrInvalidUTF8):
		return fmt.Errorf("hash equivalence server %s: %w: %w", c.addr, ErrProtocol, err)
	case errors.Is(err, wire.ErrPartialLine), errors.Is(err, wire.ErrPartialMessage):
		return fmt.Errorf("hash equivalence server %s: %w: %w", c.addr, ErrServerClosed, err)
	}
	return c.ioError(err)
}

// ioError names the server in a network error and marks the server's
// closing of the connection.
func (c *client) ioError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, io.EOF):
		return fmt.Errorf("hash equivalence server %s: %w", c.addr, ErrServerClosed)
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return fmt.Errorf("hash equivalence server %s: %w (%v)", c.addr, ErrServerClosed, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("hash equivalence server %s: no answer within %v: %w", c.addr, c.timeout, err)
	}
	return fmt.Errorf("hash equivalence server %s: %w", c.addr, err)
}
