package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/storetest"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

const systemCABundle = "/etc/ssl/certs/ca-certificates.crt"

// useCreds points the SDK's credential chain at env's keys and nowhere
// else (no shared files, no instance metadata).
func useCreds(t *testing.T, env testutil.S3Env) {
	t.Helper()
	t.Setenv("AWS_ACCESS_KEY_ID", env.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", env.SecretKey)
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
}

func envConfig(env testutil.S3Env, bucket, prefix string) Config {
	return Config{Bucket: bucket, Prefix: prefix, Endpoint: env.Endpoint, Region: env.Region, PathStyle: true}
}

func newStore(t *testing.T, cfg Config) *Store {
	t.Helper()
	s, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	env := testutil.S3Server(t)
	useCreds(t, env)
	for _, prefix := range []string{"", "sstate/debian"} {
		t.Run("prefix="+prefix, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) backend.Store {
				return newStore(t, envConfig(env, env.NewBucket(t), prefix))
			}, storetest.Options{})
		})
	}
}

func TestConformanceTLS(t *testing.T) {
	env := testutil.S3ServerTLS(t)
	useCreds(t, env)
	storetest.Run(t, func(t *testing.T) backend.Store {
		cfg := envConfig(env, env.NewBucket(t), "p")
		cfg.CABundle = env.CAFile
		return newStore(t, cfg)
	}, storetest.Options{})
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		url, bucket, prefix string
		err                 string // substring of the error; "" for success
	}{
		{url: "s3://bucket", bucket: "bucket"},
		{url: "s3://bucket/", bucket: "bucket"},
		{url: "s3://bucket/sstate", bucket: "bucket", prefix: "sstate"},
		{url: "s3://my.bucket-1/a/b/c/", bucket: "my.bucket-1", prefix: "a/b/c"},
		{url: "s3:///prefix", err: "no bucket"},
		{url: "s3://ab/x", err: "3 to 63"},
		{url: "https://bucket/x", err: "not an s3:// URL"},
		{url: "bucket/x", err: "not an s3:// URL"},
		{url: "s3:bucket", err: "want s3://bucket/prefix"},
		{url: "s3://bucket/a//b", err: "prefix"},
		{url: "s3://bucket/a/../b", err: "prefix"},
		{url: "s3://bucket/x?region=eu", err: "no query"},
		{url: "s3://key:secret@bucket/x", err: "credentials"},
		{url: "s3://bu%cket/x", err: "s3://bu%cket/x"},
	} {
		t.Run(tc.url, func(t *testing.T) {
			bucket, prefix, err := ParseURL(tc.url)
			if tc.err == "" {
				if err != nil || bucket != tc.bucket || prefix != tc.prefix {
					t.Fatalf("ParseURL = %q, %q, %v; want %q, %q", bucket, prefix, err, tc.bucket, tc.prefix)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("ParseURL error = %v; want one containing %q", err, tc.err)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Fatalf("error shows the URL's password: %v", err)
			}
		})
	}
}

func TestKeysAndLocation(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		cfg      Config
		key, obj string
		location string
	}{
		{Config{Bucket: "bkt"}, "ab/cd/x", "ab/cd/x", "s3://bkt"},
		{Config{Bucket: "bkt", Prefix: "/p/q/"}, "ab/x", "p/q/ab/x", "s3://bkt/p/q"},
		{Config{Bucket: "bkt", Prefix: "p", Endpoint: "http://127.0.0.1:1"}, "x", "p/x", "s3://bkt/p (endpoint http://127.0.0.1:1)"},
	} {
		s, err := New(ctx, tc.cfg)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := s.objectKey(tc.key); err != nil || got != tc.obj {
			t.Errorf("%+v: objectKey(%q) = %q, %v; want %q", tc.cfg, tc.key, got, err, tc.obj)
		}
		if got := s.Location(); got != tc.location {
			t.Errorf("Location = %q, want %q", got, tc.location)
		}
	}
	t.Setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")
	if s, err := New(ctx, Config{Bucket: "bkt"}); err != nil || s.Location() != "s3://bkt (endpoint http://127.0.0.1:2)" || !s.plainHTTP {
		t.Errorf("endpoint from AWS_ENDPOINT_URL_S3: %v, %v", s, err)
	}
	if _, err := New(ctx, Config{Bucket: "bkt", Endpoint: "http://user:hunter2@127.0.0.1:1"}); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("endpoint with a password: err %v; want an error that does not show it", err)
	}
	if _, err := New(ctx, Config{Bucket: "bkt", Endpoint: "127.0.0.1:7070"}); err == nil {
		t.Error("endpoint without a scheme accepted")
	}
}

// TestCABundle: with AWS_CA_BUNDLE set (as on these machines) and with
// Config.CABundle, New works and requests go through.
func TestCABundle(t *testing.T) {
	env := testutil.S3Server(t)
	useCreds(t, env)
	bucket := env.NewBucket(t)
	ctx := context.Background()
	check := func(t *testing.T, cfg Config) {
		t.Helper()
		s, err := New(ctx, cfg)
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		if _, err := s.Stat(ctx, "ab/missing"); !errors.Is(err, backend.ErrNotExist) {
			t.Fatalf("Stat = %v, want ErrNotExist", err)
		}
	}
	t.Run("AWS_CA_BUNDLE", func(t *testing.T) {
		t.Setenv("AWS_CA_BUNDLE", systemCABundle)
		check(t, envConfig(env, bucket, ""))
	})
	t.Run("Config.CABundle", func(t *testing.T) {
		t.Setenv("AWS_CA_BUNDLE", systemCABundle)
		cfg := envConfig(env, bucket, "")
		cfg.CABundle = systemCABundle
		check(t, cfg)
	})
	t.Run("Config.CABundle without AWS_CA_BUNDLE", func(t *testing.T) {
		t.Setenv("AWS_CA_BUNDLE", "")
		os.Unsetenv("AWS_CA_BUNDLE")
		cfg := envConfig(env, bucket, "")
		cfg.CABundle = systemCABundle
		check(t, cfg)
	})
}

// TestCABundleTLS: over https the bundle decides whom to trust.
func TestCABundleTLS(t *testing.T) {
	env := testutil.S3ServerTLS(t)
	useCreds(t, env)
	bucket := env.NewBucket(t)
	ctx := context.Background()

	t.Run("trusted via Config.CABundle", func(t *testing.T) {
		t.Setenv("AWS_CA_BUNDLE", systemCABundle)
		cfg := envConfig(env, bucket, "")
		cfg.CABundle = env.CAFile
		s := newStore(t, cfg)
		if _, err := s.Stat(ctx, "ab/missing"); !errors.Is(err, backend.ErrNotExist) {
			t.Fatalf("Stat = %v, want ErrNotExist", err)
		}
	})
	t.Run("trusted via AWS_CA_BUNDLE", func(t *testing.T) {
		t.Setenv("AWS_CA_BUNDLE", env.CAFile)
		s := newStore(t, envConfig(env, bucket, ""))
		if _, err := s.Stat(ctx, "ab/missing"); !errors.Is(err, backend.ErrNotExist) {
			t.Fatalf("Stat = %v, want ErrNotExist", err)
		}
	})
	t.Run("untrusted", func(t *testing.T) {
		t.Setenv("AWS_CA_BUNDLE", systemCABundle)
		s := newStore(t, envConfig(env, bucket, ""))
		_, err := s.Stat(ctx, "ab/missing")
		if err == nil || errors.Is(err, backend.ErrNotExist) || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("Stat against an untrusted certificate = %v, want a certificate error", err)
		}
	})
}

func TestCABundleBad(t *testing.T) {
	ctx := context.Background()
	missing := filepath.Join(t.TempDir(), "no-such-ca.pem")
	notPEM := filepath.Join(t.TempDir(), "not-a-ca.pem")
	if err := os.WriteFile(notPEM, []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{missing, notPEM} {
		_, err := New(ctx, Config{Bucket: "bkt", Endpoint: "http://127.0.0.1:1", Region: "us-east-1", CABundle: path})
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("New with CABundle %s: %v; want an error naming the file", path, err)
		}
	}
	for _, path := range []string{missing, notPEM} {
		t.Setenv("AWS_CA_BUNDLE", path)
		_, err := New(ctx, Config{Bucket: "bkt", Endpoint: "http://127.0.0.1:1", Region: "us-east-1"})
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("New with AWS_CA_BUNDLE=%s: %v; want an error naming the file", path, err)
		}
	}
}

// TestServerDown: with the server stopped a call fails within its deadline
// (no minute of retries), and works again once the server is back.
func TestServerDown(t *testing.T) {
	env := testutil.S3Server(t)
	useCreds(t, env)
	s := newStore(t, envConfig(env, env.NewBucket(t), "p"))
	ctx := context.Background()
	if err := s.Create(ctx, "ab/x", strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}

	env.Stop()
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := s.Stat(ctx, "ab/x")
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Stat with the server stopped succeeded")
		}
		if errors.Is(err, backend.ErrNotExist) {
			t.Fatalf("Stat with the server stopped = %v; an outage must not look like a missing object", err)
		}
		t.Logf("server down: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("Stat with the server stopped did not return")
	}

	env.Start()
	oi, err := s.Stat(ctx, "ab/x")
	if err != nil || oi.Size != 1 {
		t.Fatalf("Stat after restart = %+v, %v", oi, err)
	}
}

// TestNoSecretInErrors: a wrong secret makes every call fail, and no error
// shows the secret.
func TestNoSecretInErrors(t *testing.T) {
	env := testutil.S3Server(t)
	useCreds(t, env)
	bucket := env.NewBucket(t)
	ctx := context.Background()
	if err := newStore(t, envConfig(env, bucket, "")).Create(ctx, "ab/x", strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}

	const wrong = "wrong-secret-Zq8xW3vK9pLm"
	t.Setenv("AWS_SECRET_ACCESS_KEY", wrong)
	s := newStore(t, envConfig(env, bucket, ""))
	var errs []error
	_, err := s.Stat(ctx, "ab/x")
	errs = append(errs, err)
	_, err = s.Open(ctx, "ab/x", 0, -1)
	errs = append(errs, err)
	errs = append(errs, s.List(ctx, "", func(backend.ObjectInfo) error { return nil }))
	errs = append(errs, s.Create(ctx, "ab/y", strings.NewReader("y"), 1))
	errs = append(errs, s.Put(ctx, "ab/y", io.MultiReader(strings.NewReader("y")), 1))
	errs = append(errs, s.Delete(ctx, "ab/x"))
	for i, err := range errs {
		if err == nil {
			t.Errorf("call %d with a wrong secret succeeded", i)
			continue
		}
		if errors.Is(err, backend.ErrNotExist) || errors.Is(err, backend.ErrExist) {
			t.Errorf("call %d: %v; an auth failure must not look like ErrNotExist/ErrExist", i, err)
		}
		if msg := err.Error(); strings.Contains(msg, wrong) || strings.Contains(msg, env.SecretKey) {
			t.Errorf("call %d: error shows a secret: %s", i, msg)
		}
	}
	t.Logf("wrong secret: %v", errs[0])
	if strings.Contains(s.Location(), wrong) {
		t.Errorf("Location shows the secret: %s", s.Location())
	}
}

// onlyReader hides every method but Read (no Seek, no ReadAt).
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// TestUnseekableBody: Create and Put take plain io.Readers over http://
// (where the SDK would need to seek to hash the body) and over https://.
func TestUnseekableBody(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		name := "http"
		if useTLS {
			name = "https"
		}
		t.Run(name, func(t *testing.T) {
			var env testutil.S3Env
			if useTLS {
				env = testutil.S3ServerTLS(t)
			} else {
				env = testutil.S3Server(t)
			}
			useCreds(t, env)
			cfg := envConfig(env, env.NewBucket(t), "p")
			cfg.CABundle = env.CAFile
			s := newStore(t, cfg)
			ctx := context.Background()
			data := testutil.RandBytes(t, 3<<20)
			if err := s.Create(ctx, "ab/big", onlyReader{bytes.NewReader(data)}, int64(len(data))); err != nil {
				t.Fatalf("Create from a plain reader: %v", err)
			}
			if got, err := testutil.ReadAll(t, s, "ab/big", 0, -1); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read back %d bytes, %v", len(got), err)
			}
			if err := s.Create(ctx, "ab/big", onlyReader{bytes.NewReader(data)}, int64(len(data))); !errors.Is(err, backend.ErrExist) {
				t.Fatalf("second Create = %v, want ErrExist", err)
			}
			if err := s.Put(ctx, "ab/meta", onlyReader{strings.NewReader("v1")}, 2); err != nil {
				t.Fatalf("Put from a plain reader: %v", err)
			}
			// Fewer bytes than announced: refused, nothing visible.
			if err := s.Create(ctx, "ab/short", onlyReader{strings.NewReader("abc")}, 10); err == nil {
				t.Fatal("Create of a short plain reader succeeded")
			}
			if _, err := s.Stat(ctx, "ab/short"); !errors.Is(err, backend.ErrNotExist) {
				t.Fatalf("a short Create left something: %v", err)
			}
			// Unknown size.
			if err := s.Create(ctx, "ab/unsized", onlyReader{strings.NewReader("unsized")}, -1); err != nil {
				t.Fatalf("Create of unknown size: %v", err)
			}
			if got, err := testutil.ReadAll(t, s, "ab/unsized", 0, -1); err != nil || string(got) != "unsized" {
				t.Fatalf("unsized object reads %q, %v", got, err)
			}
		})
	}
}

func TestOpenRanges(t *testing.T) {
	env := testutil.S3Server(t)
	useCreds(t, env)
	s := newStore(t, envConfig(env, env.NewBucket(t), ""))
	ctx := context.Background()
	data := []byte("0123456789")
	if err := s.Create(ctx, "ab/ten", bytes.NewReader(data), 10); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, "ab/empty", bytes.NewReader(nil), 0); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key      string
		off, n   int64
		want     string
		wantFail bool
	}{
		{key: "ab/ten", off: 0, n: -1, want: "0123456789"},
		{key: "ab/ten", off: 3, n: 4, want: "3456"},
		{key: "ab/ten", off: 8, n: 100, want: "89"},
		{key: "ab/ten", off: 10, n: -1, want: ""},
		{key: "ab/ten", off: 10, n: 5, want: ""},
		{key: "ab/ten", off: 4, n: 0, want: ""},
		{key: "ab/ten", off: 11, n: -1, wantFail: true},
		{key: "ab/ten", off: -1, n: 1, wantFail: true},
		{key: "ab/empty", off: 0, n: -1, want: ""},
		{key: "ab/empty", off: 0, n: 10, want: ""},
		{key: "ab/empty", off: 0, n: 0, want: ""},
		{key: "ab/empty", off: 1, n: -1, wantFail: true},
	} {
		got, err := testutil.ReadAll(t, s, tc.key, tc.off, tc.n)
		if tc.wantFail {
			if err == nil || errors.Is(err, backend.ErrNotExist) {
				t.Errorf("Open(%s, %d, %d) = %q, %v; want an error", tc.key, tc.off, tc.n, got, err)
			}
			continue
		}
		if err != nil || string(got) != tc.want {
			t.Errorf("Open(%s, %d, %d) = %q, %v; want %q", tc.key, tc.off, tc.n, got, err, tc.want)
		}
	}
	if _, err := s.Open(ctx, "ab/missing", 0, 0); !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("Open(missing, 0, 0) = %v, want ErrNotExist", err)
	}
}

// errAfter yields n random bytes, then fails.
type errAfter struct{ n int }

func (e *errAfter) Read(p []byte) (int, error) {
	if e.n == 0 {
		return 0, errors.New("disk on fire")
	}
	m := min(len(p), e.n)
	rand.Read(p[:m])
	e.n -= m
	return m, nil
}

func TestMultipart(t *testing.T) {
	env := testutil.S3Server(t)
	useCreds(t, env)
	s := newStore(t, envConfig(env, env.NewBucket(t), "p"))
	ctx := context.Background()
	const size = 70 << 20
	data := testutil.RandBytes(t, size)

	check := func(t *testing.T, key string) {
		t.Helper()
		oi, err := s.Stat(ctx, key)
		if err != nil || oi.Size != size {
			t.Fatalf("Stat = %+v, %v; want %d bytes", oi, err, size)
		}
		got, err := testutil.ReadAll(t, s, key, 0, -1)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read back %d bytes, %v; want the %d bytes written", len(got), err, size)
		}
		got, err = testutil.ReadAll(t, s, key, size-5, -1)
		if err != nil || !bytes.Equal(got, data[size-5:]) {
			t.Fatalf("tail read %d bytes, %v", len(got), err)
		}
	}

	t.Run("ReaderAt", func(t *testing.T) {
		if err := s.Create(ctx, "ab/readerat", bytes.NewReader(data), size); err != nil {
			t.Fatal(err)
		}
		check(t, "ab/readerat")
		if err := s.Create(ctx, "ab/readerat", bytes.NewReader(data), size); !errors.Is(err, backend.ErrExist) {
			t.Fatalf("second Create = %v, want ErrExist", err)
		}
	})
	t.Run("File", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "obj")
		if err := os.WriteFile(p, append([]byte("skipped"), data...), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.Seek(int64(len("skipped")), io.SeekStart); err != nil {
			t.Fatal(err)
		}
		if err := s.Create(ctx, "ab/file", f, size); err != nil {
			t.Fatal(err)
		}
		check(t, "ab/file")
	})
	t.Run("PlainReader", func(t *testing.T) {
		if err := s.Create(ctx, "ab/plain", onlyReader{bytes.NewReader(data)}, size); err != nil {
			t.Fatal(err)
		}
		check(t, "ab/plain")
	})
	t.Run("UnknownSize", func(t *testing.T) {
		if err := s.Put(ctx, "ab/unsized", onlyReader{bytes.NewReader(data)}, -1); err != nil {
			t.Fatal(err)
		}
		check(t, "ab/unsized")
	})
	t.Run("Short", func(t *testing.T) {
		err := s.Create(ctx, "ab/short", onlyReader{bytes.NewReader(data[:size-1])}, size)
		if err == nil {
			t.Fatal("Create of a short reader succeeded")
		}
		if _, err := s.Stat(ctx, "ab/short"); !errors.Is(err, backend.ErrNotExist) {
			t.Fatalf("a failed Create left something: %v", err)
		}
	})
	t.Run("ReadError", func(t *testing.T) {
		err := s.Create(ctx, "ab/broken", &errAfter{n: 20 << 20}, size)
		if err == nil || !strings.Contains(err.Error(), "disk on fire") {
			t.Fatalf("Create from a failing reader = %v", err)
		}
		if _, err := s.Stat(ctx, "ab/broken"); !errors.Is(err, backend.ErrNotExist) {
			t.Fatalf("a failed Create left something: %v", err)
		}
	})
	t.Run("Cancelled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		r := &cancelAfter{r: bytes.NewReader(data), n: 30 << 20, cancel: cancel}
		if err := s.Create(cctx, "ab/cancelled", r, size); err == nil {
			t.Fatal("cancelled Create succeeded")
		}
		if _, err := s.Stat(ctx, "ab/cancelled"); !errors.Is(err, backend.ErrNotExist) {
			t.Fatalf("a cancelled Create left something: %v", err)
		}
	})
	// Every failed upload was aborted: no parts linger.
	out, err := s.client.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: &s.bucket})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range out.Uploads {
		t.Errorf("multipart upload of %s left behind", aws.ToString(u.Key))
	}
}

// cancelAfter reads from r and cancels a context once n bytes have passed.
type cancelAfter struct {
	r      io.Reader
	n      int
	cancel func()
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	m, err := c.r.Read(p)
	c.n -= m
	if c.n <= 0 {
		c.cancel()
	}
	return m, err
}

// TestMultipartIfNoneMatch documents that versitygw checks If-None-Match: *
// on CompleteMultipartUpload: an object that appears while the parts are
// uploaded wins, and the completing create gets ErrExist.
func TestMultipartIfNoneMatch(t *testing.T) {
	env := testutil.S3Server(t)
	useCreds(t, env)
	s := newStore(t, envConfig(env, env.NewBucket(t), "p"))
	ctx := context.Background()
	k, _ := s.objectKey("ab/race")
	cm, err := s.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &s.bucket, Key: &k, ChecksumAlgorithm: types.ChecksumAlgorithmCrc32})
	if err != nil {
		t.Fatal(err)
	}
	part, err := s.client.UploadPart(ctx, &s3.UploadPartInput{Bucket: &s.bucket, Key: &k, UploadId: cm.UploadId,
		PartNumber: aws.Int32(1), Body: bytes.NewReader(testutil.RandBytes(t, 5<<20)), ChecksumAlgorithm: types.ChecksumAlgorithmCrc32})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, "ab/race", strings.NewReader("winner"), 6); err != nil {
		t.Fatal(err)
	}
	_, err = s.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: &s.bucket, Key: &k, UploadId: cm.UploadId,
		IfNoneMatch: aws.String("*"),
		MultipartUpload: &types.CompletedMultipartUpload{Parts: []types.CompletedPart{
			{PartNumber: aws.Int32(1), ETag: part.ETag, ChecksumCRC32: part.ChecksumCRC32}}}})
	if err := classify("create", "ab/race", err); !errors.Is(err, backend.ErrExist) {
		t.Fatalf("completing over an existing key with If-None-Match: * = %v, want ErrExist", err)
	}
	if got, err := testutil.ReadAll(t, s, "ab/race", 0, -1); err != nil || string(got) != "winner" {
		t.Fatalf("object reads %q, %v; want the first writer's", got, err)
	}
	s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &s.bucket, Key: &k, UploadId: cm.UploadId})
}

// TestCreateWithKnownDigest: a caller-supplied SHA-256 is used to sign and
// is checked by the server: the right digest stores the object, a wrong one
// is refused and leaves nothing.
func TestCreateWithKnownDigest(t *testing.T) {
	env := testutil.S3Server(t)
	useCreds(t, env)
	s := newStore(t, envConfig(env, env.NewBucket(t), ""))
	ctx := context.Background()
	data := bytes.Repeat([]byte("sstate"), 100_000)
	sum := sha256.Sum256(data)
	if err := s.Create(backend.WithSHA256(ctx, sum), "ab/cd/good", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("create with the right digest: %v", err)
	}
	rc, err := s.Open(ctx, "ab/cd/good", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, data) {
		t.Fatal("stored bytes differ")
	}
	wrong := sha256.Sum256([]byte("other"))
	if err := s.Create(backend.WithSHA256(ctx, wrong), "ab/cd/bad", bytes.NewReader(data), int64(len(data))); err == nil {
		t.Fatal("create with a wrong digest succeeded")
	}
	if _, err := s.Stat(ctx, "ab/cd/bad"); !errors.Is(err, backend.ErrNotExist) {
		t.Fatalf("a refused create left an object: %v", err)
	}
}

// TestKnownDigestIsChecked: an upload signed with the digest the caller
// computed is checked by the server against the body: a digest that does
// not match the bytes fails the upload and leaves no object.
// countingReader counts the bytes read through it.
type countingReader struct {
	io.ReadSeeker
	n int64
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.ReadSeeker.Read(p)
	r.n += int64(n)
	return n, err
}

func TestKnownDigestIsChecked(t *testing.T) {
	env := testutil.S3Server(t)
	useCreds(t, env)
	s := newStore(t, envConfig(env, env.NewBucket(t), "p"))
	data := testutil.RandBytes(t, 100_000)
	ctx := context.Background()
	good := sha256.Sum256(data)
	body := &countingReader{ReadSeeker: bytes.NewReader(data)}
	if err := s.Create(backend.WithSHA256(ctx, good), "a/good", body, int64(len(data))); err != nil {
		t.Fatalf("create with the right digest: %v", err)
	}
	// one pass over the body: no hashing (nor checksumming) before sending
	if body.n != int64(len(data)) {
		t.Errorf("the upload read %d bytes of a %d-byte body", body.n, len(data))
	}
	if got, err := testutil.ReadAll(t, s, "a/good", 0, -1); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %d bytes, %v", len(got), err)
	}
	bad := good
	bad[0] ^= 1
	if err := s.Create(backend.WithSHA256(ctx, bad), "a/bad", bytes.NewReader(data), int64(len(data))); err == nil {
		t.Fatal("create with a digest that does not match the body succeeded")
	}
	if _, err := s.Stat(ctx, "a/bad"); !errors.Is(err, backend.ErrNotExist) {
		t.Fatalf("after a refused upload: stat = %v, want not found", err)
	}
}
