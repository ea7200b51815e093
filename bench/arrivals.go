package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Arrivals learns when objects appear in the bucket from versitygw's event
// webhook (--event-webhook-url): versitygw posts an S3 event as soon as a
// PUT or a completed multipart upload is stored. Waiting for the events
// costs the server nothing, where polling it with HEAD requests (hundreds
// a second) took CPU from the uploads being measured on a 2-core machine.
type Arrivals struct {
	URL string // where versitygw posts events

	srv *http.Server
	mu  sync.Mutex // protects seen and changed
	// seen is when each key's latest event arrived, with its size
	seen    map[string]arrival
	changed chan struct{} // closed and replaced on every event
}

type arrival struct {
	at   time.Time
	size int64
}

// s3Event is the part of an S3 event notification used here.
type s3Event struct {
	Records []struct {
		EventName string `json:"eventName"`
		S3        struct {
			Bucket struct {
				Name string `json:"name"`
			} `json:"bucket"`
			Object struct {
				Key  string `json:"key"`
				Size int64  `json:"size"`
			} `json:"object"`
		} `json:"s3"`
	}
}

// StartArrivals listens for events on a free port of 127.0.0.1.
func StartArrivals() (*Arrivals, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	a := &Arrivals{URL: "http://" + ln.Addr().String() + "/", seen: map[string]arrival{}, changed: make(chan struct{})}
	a.srv = &http.Server{Handler: http.HandlerFunc(a.serve), ReadHeaderTimeout: 5 * time.Second}
	go a.srv.Serve(ln)
	return a, nil
}

// Close stops listening.
func (a *Arrivals) Close() { a.srv.Close() }

func (a *Arrivals) serve(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	// versitygw does not close the responses it gets: end each connection
	w.Header().Set("Connection", "close")
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var ev s3Event
	if err := json.Unmarshal(body, &ev); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	for _, rec := range ev.Records {
		if !strings.HasPrefix(rec.EventName, "s3:ObjectCreated:") {
			continue
		}
		// versitygw sends the key as stored, not URL-encoded
		a.seen[rec.S3.Bucket.Name+"/"+rec.S3.Object.Key] = arrival{at: now, size: rec.S3.Object.Size}
	}
	close(a.changed)
	a.changed = make(chan struct{})
	a.mu.Unlock()
}

// Wait waits until an event has arrived for every key of want in bucket
// with its size (an object stored again with another size is an error) and
// returns when the last one arrived. Events from before the call count.
func (a *Arrivals) Wait(ctx context.Context, bucket string, want map[string]int64, timeout time.Duration) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		a.mu.Lock()
		var last time.Time
		missing := 0
		var bad error
		for k, size := range want {
			got, ok := a.seen[bucket+"/"+k]
			switch {
			case !ok:
				missing++
			case got.size != size:
				bad = fmt.Errorf("%s was stored with %d bytes, want %d", k, got.size, size)
			case got.at.After(last):
				last = got.at
			}
		}
		changed := a.changed
		a.mu.Unlock()
		if bad != nil {
			return time.Time{}, bad
		}
		if missing == 0 {
			return last, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("%d of %d objects not stored after %v (no event from the S3 server)", missing, len(want), timeout)
		}
	}
}
