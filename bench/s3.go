package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/sync/errgroup"

	"github.com/sstatefs/sstatefs/internal/testutil"
)

// S3Server is a versitygw serving a directory on 127.0.0.1.
type S3Server struct {
	Endpoint  string // http://127.0.0.1:PORT, direct (setup and polling only)
	AccessKey string
	SecretKey string
	Region    string
	Dir       string // posix root: each directory below it is a bucket
	Version   string
	proc      *Proc
}

// errNoVersitygw says how to get the S3 server.
var errNoVersitygw = errors.New("versitygw not found on PATH or in $(go env GOPATH)/bin; install it with: " + testutil.VersitygwInstall)

// StartS3Server starts versitygw on a free port of 127.0.0.1 over dir, with
// --keep-alive (without it every response closes its connection, which
// doubles each round trip through the proxy), and waits until it answers.
// accessLog, if not "", is where versitygw logs every request; events, if
// not "", where it posts an event for every object stored.
func StartS3Server(ctx context.Context, bin, dir, logFile, accessLog, events string) (*S3Server, error) {
	addr, err := testutil.FreeAddr()
	if err != nil {
		return nil, err
	}
	s := &S3Server{
		Endpoint:  "http://" + addr,
		AccessKey: "sstatefs-bench-access",
		SecretKey: fmt.Sprintf("sstatefs-bench-secret-%d", time.Now().UnixNano()),
		Region:    "us-east-1",
		Dir:       dir,
	}
	s.Version = binaryVersion(bin)
	args := []string{bin, "--port", addr, "--access", s.AccessKey, "--secret", s.SecretKey,
		"--region", s.Region, "--keep-alive", "--quiet"}
	if accessLog != "" {
		args = append(args, "--access-log", accessLog)
	}
	if events != "" {
		args = append(args, "--event-webhook-url", events)
	}
	s.proc, err = StartProc("versitygw", logFile, nil, append(args, "posix", dir)...)
	if err != nil {
		return nil, err
	}
	probe := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := probe.Get(s.Endpoint + "/")
		if err == nil {
			resp.Body.Close()
			return s, nil
		}
		if s.proc.Exited() {
			return nil, fmt.Errorf("versitygw exited before answering: %s", s.proc.Tail())
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.proc.Stop(time.Second)
			return nil, fmt.Errorf("versitygw did not answer on %s: %v; %s", addr, err, s.proc.Tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops the server. Its posix store writes objects atomically, so a
// kill after a short grace loses nothing; the grace is short because its
// graceful shutdown waits for idle keep-alive connections.
func (s *S3Server) Stop() { s.proc.Stop(time.Second) }

// binaryVersion names a Go binary by its module version ("versitygw
// v1.8.0"), which go install records in it.
func binaryVersion(bin string) string {
	name := filepath.Base(bin)
	out, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		return name
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "mod" {
			return name + " " + f[2]
		}
	}
	return name
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}

// Client returns an S3 client for endpoint (the server, or the proxy in
// front of it) with conns connections kept open. Every client has its own
// connection pool, so a new one starts cold.
//
// The SDK's BuildableClient is kept (not an http.Client of our own): with
// AWS_CA_BUNDLE in the environment, as on these machines, the SDK fails
// with "unable to load custom CA bundle" on any other client.
func (s *S3Server) Client(endpoint string, conns int) *s3.Client {
	httpClient := awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		tr.MaxIdleConnsPerHost = conns
		tr.MaxIdleConns = max(tr.MaxIdleConns, conns)
		tr.Proxy = nil // 127.0.0.1 only, whatever HTTP_PROXY says
	})
	return s3.New(s3.Options{
		Region:       s.Region,
		Credentials:  credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
		BaseEndpoint: aws.String(endpoint),
		UsePathStyle: true,
		HTTPClient:   httpClient,
		// A plain client: no checksums beyond what S3 requires, like a
		// tool that just copies bytes.
		RequestChecksumCalculation:                aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation:                aws.ResponseChecksumValidationWhenRequired,
		DisableLogOutputChecksumValidationSkipped: true,
	})
}

// CreateBucket creates a bucket.
func CreateBucket(ctx context.Context, c *s3.Client, bucket string) error {
	_, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)})
	if err != nil {
		return fmt.Errorf("create bucket %s: %w", bucket, err)
	}
	return nil
}

// Upload puts the present objects and their .siginfo from the local copy
// in dir into the bucket, conc at a time.
func Upload(ctx context.Context, c *s3.Client, bucket, dir string, objs []Object, conc int) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(conc)
	for _, o := range objs {
		if !o.Present {
			continue
		}
		for _, key := range []string{o.Key, o.Key + ".siginfo"} {
			g.Go(func() error {
				f, err := os.Open(filepath.Join(dir, key))
				if err != nil {
					return err
				}
				defer f.Close()
				fi, err := f.Stat()
				if err != nil {
					return err
				}
				_, err = c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: f, ContentLength: aws.Int64(fi.Size())})
				if err != nil {
					return fmt.Errorf("upload %s: %w", key, err)
				}
				return nil
			})
		}
	}
	return g.Wait()
}

// PutBytes puts one object.
func PutBytes(ctx context.Context, c *s3.Client, bucket, key string, data []byte) error {
	_, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data)))})
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// objectSize returns the size of an object in the bucket, or -1 if it is
// not there.
func objectSize(ctx context.Context, c *s3.Client, bucket, key string) (int64, error) {
	out, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		var re interface{ HTTPStatusCode() int }
		if errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound {
			return -1, nil
		}
		return 0, fmt.Errorf("head %s: %w", key, err)
	}
	return aws.ToInt64(out.ContentLength), nil
}

// WaitInBucket polls the bucket until every key is there with its size.
// It asks directly (not through the latency proxy), 8 keys at a time, every
// 5 ms. The populate workload times uploads by versitygw's events
// (Arrivals) and uses this only to check the bucket afterwards: polling
// this hard takes CPU from the uploads being measured.
func WaitInBucket(ctx context.Context, c *s3.Client, bucket string, want map[string]int64, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pending := make(map[string]int64, len(want))
	for k, v := range want {
		pending[k] = v
	}
	for {
		var mu sync.Mutex
		var firstErr error
		g := errgroup.Group{}
		g.SetLimit(8)
		type item struct {
			key  string
			size int64
		}
		items := make([]item, 0, len(pending))
		for k, size := range pending {
			items = append(items, item{k, size})
		}
		for _, it := range items {
			k, size := it.key, it.size
			g.Go(func() error {
				got, err := objectSize(ctx, c, bucket, k)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil:
					if ctx.Err() == nil && firstErr == nil {
						firstErr = err
					}
				case got == size:
					delete(pending, k)
				case got >= 0 && firstErr == nil:
					firstErr = fmt.Errorf("%s is in the bucket with %d bytes, want %d", k, got, size)
				}
				return nil
			})
		}
		g.Wait()
		if firstErr != nil {
			return firstErr
		}
		if len(pending) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d objects not in the bucket after %v", len(pending), len(want), timeout)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// s3Open opens an object for reading with GetObject.
func s3Open(ctx context.Context, c *s3.Client, bucket, key string) (io.ReadCloser, error) {
	out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	return out.Body, nil
}
