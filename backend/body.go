package backend

import (
	"fmt"
	"io"
)

// Body is the body of a store's answer of which Left bytes are owed (-1:
// whatever it holds). It never reads past Left, and a body that ends
// before Left is an error wrapping io.ErrUnexpectedEOF, never a clean EOF,
// so a cut connection cannot pass for the end of an object; unless
// AtMost: then Left is only the most wanted and an early end is the
// object's end (an HTTP server that did not say the size). Read errors
// are prefixed with What, which names the request without secrets
// ("GET https://mirror/…", "s3 read KEY").
type Body struct {
	RC     io.ReadCloser
	What   string
	Left   int64
	AtMost bool
}

func (b *Body) Read(p []byte) (int, error) {
	if b.Left == 0 {
		return 0, io.EOF
	}
	if b.Left > 0 && int64(len(p)) > b.Left {
		p = p[:b.Left]
	}
	n, err := b.RC.Read(p)
	if b.Left > 0 {
		b.Left -= int64(n)
	}
	switch {
	case err == nil:
	case err == io.EOF && b.Left > 0 && !b.AtMost:
		return n, fmt.Errorf("%s: body ended %d bytes short: %w", b.What, b.Left, io.ErrUnexpectedEOF)
	case err == io.EOF:
		b.Left = 0
	default:
		err = fmt.Errorf("%s: %w", b.What, err)
	}
	return n, err
}

// Close closes the body. One read to its end has reported EOF to net/http
// already (it returns EOF with the last bytes), so its connection is
// reused; one closed early is dropped.
func (b *Body) Close() error { return b.RC.Close() }
