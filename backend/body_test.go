package backend_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/sstatefs/sstatefs/backend"
)

func TestBody(t *testing.T) {
	cut := errors.New("connection reset")
	for _, tc := range []struct {
		name    string
		src     io.Reader
		left    int64
		atMost  bool
		want    string
		wantErr error  // nil: a clean EOF
		msg     string // in the error
	}{
		{name: "exact", src: strings.NewReader("abcdef"), left: 6, want: "abcdef"},
		{name: "longer body is cut at left", src: strings.NewReader("abcdef"), left: 4, want: "abcd"},
		{name: "unknown length", src: strings.NewReader("abcdef"), left: -1, want: "abcdef"},
		{name: "short body", src: strings.NewReader("abc"), left: 5, want: "abc", wantErr: io.ErrUnexpectedEOF, msg: "GET x: body ended 2 bytes short"},
		{name: "short body, at most", src: strings.NewReader("abc"), left: 5, atMost: true, want: "abc"},
		{name: "read error", src: io.MultiReader(strings.NewReader("ab"), iotest.ErrReader(cut)), left: 5, want: "ab", wantErr: cut, msg: "GET x: connection reset"},
		{name: "cancelled", src: iotest.ErrReader(context.Canceled), left: 5, wantErr: context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &backend.Body{RC: io.NopCloser(tc.src), What: "GET x", Left: tc.left, AtMost: tc.atMost}
			got, err := io.ReadAll(iotest.OneByteReader(b))
			if string(got) != tc.want {
				t.Errorf("read %q, want %q", got, tc.want)
			}
			switch {
			case tc.wantErr == nil && err != nil:
				t.Errorf("error %v, want a clean end", err)
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Errorf("error %v, want %v", err, tc.wantErr)
			case tc.msg != "" && (err == nil || !strings.Contains(err.Error(), tc.msg)):
				t.Errorf("error %v, want it to say %q", err, tc.msg)
			}
			if n, err := b.Read(make([]byte, 4)); n != 0 || err == nil {
				t.Errorf("read after the end: %d, %v", n, err)
			}
		})
	}
}
