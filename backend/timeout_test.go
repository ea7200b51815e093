package backend_test

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/file"
	"github.com/sstatefs/sstatefs/backend/storetest"
)

// TestTimeoutConsumerPause checks that the minimum-progress rule counts
// only the time a Read waits for the store: a consumer that stops between
// Reads for longer than the timeout (a reader of the mount that pauses) is
// not cut off. The trickling store is in backend/httpstore's tests.
func TestTimeoutConsumerPause(t *testing.T) {
	fs, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("x"), 256<<10)
	if err := fs.Create(context.Background(), "ab/cd/x", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	const d = 100 * time.Millisecond
	s := &backend.Timeout{Store: fs, D: d}
	rc, err := s.Open(context.Background(), "ab/cd/x", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	buf := make([]byte, 10)
	if _, err := io.ReadFull(rc, buf); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * d) // the consumer's pause: the scenario, not synchronisation
	rest, err := io.ReadAll(rc)
	if err != nil || len(rest) != len(data)-len(buf) {
		t.Fatalf("after a pause of the consumer: %d bytes, %v", len(rest), err)
	}
}

// TestTimeoutConformance: a file store behind Timeout passes the suite,
// including a listing after a key by the store's own ListAfter.
func TestTimeoutConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) backend.Store {
		s, err := file.New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return &backend.Timeout{Store: s, D: time.Minute}
	}, storetest.Options{})
}
