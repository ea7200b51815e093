// Package s3 is the store of an S3 bucket (s3://bucket/prefix): AWS itself or
// any S3-compatible server (MinIO, Ceph RGW, Garage, R2, versitygw). It is the
// only package that imports the AWS SDK.
package s3

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithymw "github.com/aws/smithy-go/middleware"

	"github.com/sstatefs/sstatefs/backend"
)

// Config says which bucket to serve and how to reach it. Credentials come
// from the SDK's standard chain (environment, shared profile, web identity,
// instance role), never from here, so a Config can be logged.
type Config struct {
	Bucket string
	// Prefix is the key prefix the SSTATE_DIR lives under ("" for the
	// bucket's root); leading and trailing slashes are ignored.
	Prefix string
	// Endpoint is the base URL of an S3-compatible server
	// (http://127.0.0.1:7070); empty means AWS.
	Endpoint string
	// Region; empty means the SDK's (AWS_REGION, profile), else us-east-1.
	Region string
	// Profile is the shared-config profile to take credentials and settings
	// from; empty means the SDK's default (AWS_PROFILE or "default").
	Profile string
	// CABundle is a PEM file of certificate authorities to trust instead of
	// the system's (AWS_CA_BUNDLE does the same from the environment).
	CABundle string
	// PathStyle addresses the bucket as endpoint/bucket/key instead of
	// bucket.endpoint/key; most S3-compatible servers need it.
	PathStyle bool
	// MaxConns is the number of idle connections kept for reuse (default 64).
	MaxConns int
}

const (
	defaultMaxConns = 64
	defaultRegion   = "us-east-1"

	// Objects larger than this are uploaded in parts.
	multipartThreshold = 64 << 20
	// minPartSize is the part size of multipart uploads, raised for huge
	// objects so that they fit in maxParts parts.
	minPartSize = 8 << 20
	maxParts    = 10000
	// partConcurrency parts are uploaded at once, each buffered in memory
	// unless the reader is an io.ReaderAt.
	partConcurrency = 4

	// The SDK retries only a little: callers bound every call with a
	// deadline, and a store that is down must fail fast.
	maxAttempts = 3
	maxBackoff  = 250 * time.Millisecond
	dialTimeout = 10 * time.Second
	// abortTimeout bounds the cleanup of a failed multipart upload, which
	// runs even when the caller's context is done.
	abortTimeout = 10 * time.Second
)

// Store serves objects from an S3 bucket.
type Store struct {
	client   *s3.Client
	bucket   string
	prefix   string // without leading or trailing slash; "" for the root
	location string
	// plainHTTP: the endpoint is http://, where the SDK cannot stream a
	// body it cannot seek (it must hash it before sending).
	plainHTTP bool
}

var _ backend.Store = (*Store)(nil)

// ParseURL splits s3://bucket/prefix into its bucket and prefix (without
// leading or trailing slash; "" for the bucket's root).
func ParseURL(raw string) (bucket, prefix string, err error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", fmt.Errorf("store URL %q: %w", raw, err)
	}
	if u.Scheme != "s3" {
		return "", "", fmt.Errorf("store URL %q: not an s3:// URL", raw)
	}
	if u.Opaque != "" {
		return "", "", fmt.Errorf("store URL %q: want s3://bucket/prefix", raw)
	}
	if u.User != nil {
		return "", "", fmt.Errorf("store URL %q: credentials do not belong in the URL (use the environment or a profile)", backend.RedactURL(raw))
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", "", fmt.Errorf("store URL %q: takes no query or fragment", raw)
	}
	if err := checkBucket(u.Host); err != nil {
		return "", "", fmt.Errorf("store URL %q: %w", raw, err)
	}
	prefix, err = cleanPrefix(u.Path)
	if err != nil {
		return "", "", fmt.Errorf("store URL %q: %w", raw, err)
	}
	return u.Host, prefix, nil
}

func checkBucket(b string) error {
	if b == "" {
		return errors.New("no bucket (want s3://bucket/prefix)")
	}
	if len(b) < 3 || len(b) > 63 {
		return fmt.Errorf("bucket name %q must have 3 to 63 characters", b)
	}
	for _, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("bucket name %q: invalid character %q", b, c)
		}
	}
	return nil
}

func cleanPrefix(p string) (string, error) {
	p = strings.Trim(p, "/")
	if p == "" {
		return "", nil
	}
	if err := backend.CheckKey(p); err != nil {
		return "", fmt.Errorf("prefix %q: empty, . or .. path elements", p)
	}
	return p, nil
}

// New returns a store for cfg. It reads the configuration and credential
// sources but does not contact the server.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if err := checkBucket(cfg.Bucket); err != nil {
		return nil, fmt.Errorf("s3 store: %w", err)
	}
	prefix, err := cleanPrefix(cfg.Prefix)
	if err != nil {
		return nil, fmt.Errorf("s3 store: %w", err)
	}
	s := &Store{bucket: cfg.Bucket, prefix: prefix}
	s.location = "s3://" + s.bucket
	if prefix != "" {
		s.location += "/" + prefix
	}
	if cfg.Endpoint != "" {
		u, err := url.Parse(cfg.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("s3 store %s: endpoint %q: want http(s)://host[:port]", s.location, backend.RedactURL(cfg.Endpoint))
		}
		if u.User != nil {
			return nil, fmt.Errorf("s3 store %s: endpoint %q: credentials do not belong in the URL", s.location, backend.RedactURL(cfg.Endpoint))
		}
	}

	maxConns := cfg.MaxConns
	if maxConns <= 0 {
		maxConns = defaultMaxConns
	}
	// A BuildableClient, not an http.Client of our own: the SDK installs a
	// custom CA bundle (AWS_CA_BUNDLE, CABundle) only into a BuildableClient
	// and fails with "unable to load custom CA bundle" on anything else.
	httpClient := awshttp.NewBuildableClient().
		WithTransportOptions(func(tr *http.Transport) {
			tr.MaxIdleConnsPerHost = maxConns
			if tr.MaxIdleConns < maxConns {
				tr.MaxIdleConns = maxConns
			}
		}).
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = dialTimeout })

	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(httpClient),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = maxAttempts
				o.MaxBackoff = maxBackoff
				// No retry quota: it would turn an outage into a
				// different error ("retry quota exceeded") after a while.
				o.RateLimiter = ratelimit.None
			})
		}),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(cfg.Profile))
	}
	if cfg.CABundle != "" {
		pem, _, err := backend.ReadCABundle(cfg.CABundle)
		if err != nil {
			return nil, fmt.Errorf("s3 store %s: %w", s.location, err)
		}
		opts = append(opts, config.WithCustomCABundle(bytes.NewReader(pem)))
	} else if env := os.Getenv("AWS_CA_BUNDLE"); env != "" {
		// The SDK loads it itself, but reports a file without
		// certificates without naming it.
		if _, _, err := backend.ReadCABundle(env); err != nil {
			return nil, fmt.Errorf("s3 store %s: AWS_CA_BUNDLE: %w", s.location, err)
		}
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3 store %s: loading AWS configuration: %w", s.location, err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = defaultRegion
	}
	s.client = s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.PathStyle
		// Ranged GETs carry no checksum to validate; without this the SDK
		// logs a line for each of them.
		o.DisableLogOutputChecksumValidationSkipped = true
		// No "Expect: 100-continue" on large uploads: it costs a round
		// trip before every body of 2 MB or more, to spare sending the
		// body when the server refuses it; sstate objects are nearly all
		// new, and a refused body (412 of a create) is handled anyway.
		o.ContinueHeaderThresholdBytes = -1
	})
	// The endpoint may also come from AWS_ENDPOINT_URL(_S3) or the profile.
	if ep := aws.ToString(s.client.Options().BaseEndpoint); ep != "" {
		if u, err := url.Parse(ep); err == nil {
			s.location += " (endpoint " + backend.RedactURL(ep) + ")"
			s.plainHTTP = strings.EqualFold(u.Scheme, "http")
		}
	}
	return s, nil
}

// Location implements backend.Store.
func (s *Store) Location() string { return s.location }

// objectKey validates key and returns the S3 key it maps to.
func (s *Store) objectKey(key string) (string, error) {
	if err := backend.CheckKey(key); err != nil {
		return "", err
	}
	if s.prefix == "" {
		return key, nil
	}
	return s.prefix + "/" + key, nil
}

// listPrefix returns the S3 prefix that store keys starting with prefix have.
func (s *Store) listPrefix(prefix string) string {
	if s.prefix == "" {
		return prefix
	}
	return s.prefix + "/" + prefix
}

// httpStatus returns the HTTP status of a failed call, or 0.
func httpStatus(err error) int {
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

func errorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// classify turns an SDK error into the store's errors: a missing object
// wraps backend.ErrNotExist, a conditional create that lost wraps
// backend.ErrExist, anything else is wrapped with op and key. The SDK's
// messages carry status, request id and the server's message, never
// credentials.
func classify(op, key string, err error) error {
	code, status := errorCode(err), httpStatus(err)
	switch {
	case code == "NoSuchKey" || code == "NotFound" ||
		status == http.StatusNotFound && code != "NoSuchBucket" && code != "NoSuchUpload":
		return fmt.Errorf("%s: %w", key, backend.ErrNotExist)
	case op == "create" && (status == http.StatusPreconditionFailed || code == "PreconditionFailed" ||
		code == "ConditionalRequestConflict"):
		// 409 ConditionalRequestConflict: another conditional write of the
		// key is in progress; first writer wins.
		return fmt.Errorf("%s: %w", key, backend.ErrExist)
	}
	return fmt.Errorf("s3 %s %s: %w", op, key, err)
}

// Stat implements backend.Store.
func (s *Store) Stat(ctx context.Context, key string) (backend.ObjectInfo, error) {
	k, err := s.objectKey(key)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: &k})
	if err != nil {
		return backend.ObjectInfo{}, classify("stat", key, err)
	}
	return backend.ObjectInfo{Key: key, Size: aws.ToInt64(out.ContentLength), ModTime: aws.ToTime(out.LastModified)}, nil
}

// Open implements backend.Store with a ranged GET.
func (s *Store) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	k, err := s.objectKey(key)
	if err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, fmt.Errorf("s3 open %s: negative offset %d", key, offset)
	}
	if length == 0 {
		return s.emptyAt(ctx, key, offset, false)
	}
	in := &s3.GetObjectInput{Bucket: &s.bucket, Key: &k}
	ranged := offset > 0 || length > 0
	if ranged {
		r := "bytes=" + strconv.FormatInt(offset, 10) + "-"
		if length > 0 {
			r += strconv.FormatInt(offset+length-1, 10)
		}
		in.Range = &r
	}
	var optFns []func(*s3.Options)
	if _, ok := backend.SHA256From(ctx); ok {
		// The caller checks the object's SHA-256: no CRC pass of the SDK's
		// over the same bytes.
		optFns = append(optFns, func(o *s3.Options) { o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired })
	}
	out, err := s.client.GetObject(ctx, in, optFns...)
	if err != nil {
		if httpStatus(err) == http.StatusRequestedRangeNotSatisfiable {
			// Reading at the end of the object (an empty one included)
			// yields nothing; S3 refuses such a range instead.
			return s.emptyAt(ctx, key, offset, true)
		}
		return nil, classify("open", key, err)
	}
	r := &backend.Body{RC: out.Body, What: "s3 read " + key, Left: -1}
	if out.ContentLength != nil {
		r.Left = *out.ContentLength
	}
	if ranged {
		switch start, ok := rangeStart(aws.ToString(out.ContentRange)); {
		case ok && start != offset:
			out.Body.Close()
			return nil, fmt.Errorf("s3 open %s: asked for bytes from %d, got a range from %d", key, offset, start)
		case !ok:
			// The server ignored Range and sent the whole object.
			if _, err := io.CopyN(io.Discard, out.Body, offset); err != nil {
				out.Body.Close()
				return nil, fmt.Errorf("s3 open %s: skipping to offset %d: %w", key, offset, err)
			}
			if r.Left >= 0 {
				r.Left -= offset
			}
			if length > 0 && (r.Left < 0 || r.Left > length) {
				r.Left = length
			}
		}
	}
	return r, nil
}

// emptyAt returns an empty reader if offset is within key (atEnd: at its
// end; the object may have been replaced since the GET that said so).
func (s *Store) emptyAt(ctx context.Context, key string, offset int64, atEnd bool) (io.ReadCloser, error) {
	oi, err := s.Stat(ctx, key)
	if err != nil {
		return nil, err
	}
	if offset > oi.Size || atEnd && offset != oi.Size {
		return nil, fmt.Errorf("s3 open %s: offset %d outside object of %d bytes", key, offset, oi.Size)
	}
	return io.NopCloser(bytes.NewReader(nil)), nil
}

// rangeStart parses the first byte position of "bytes a-b/total".
func rangeStart(cr string) (int64, bool) {
	rest, ok := strings.CutPrefix(cr, "bytes ")
	if !ok {
		return 0, false
	}
	a, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(a, 10, 64)
	return n, err == nil
}

// List implements backend.Store with ListObjectsV2; keys are returned
// relative to the store's prefix.
func (s *Store) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	return s.list(ctx, prefix, "", fn)
}

var _ backend.AfterLister = (*Store)(nil)

// ListAfter implements backend.AfterLister with ListObjectsV2's StartAfter:
// the server skips the keys up to start, so only the rest cost requests.
func (s *Store) ListAfter(ctx context.Context, prefix, start string, fn func(backend.ObjectInfo) error) error {
	return s.list(ctx, prefix, start, fn)
}

func (s *Store) list(ctx context.Context, prefix, start string, fn func(backend.ObjectInfo) error) error {
	strip := s.listPrefix("")
	in := &s3.ListObjectsV2Input{
		Bucket: &s.bucket,
		Prefix: aws.String(s.listPrefix(prefix)),
	}
	if start != "" {
		in.StartAfter = aws.String(strip + start)
	}
	p := s3.NewListObjectsV2Paginator(s.client, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return classify("list", prefix, err)
		}
		for _, o := range page.Contents {
			key, ok := strings.CutPrefix(aws.ToString(o.Key), strip)
			if !ok || backend.CheckKey(key) != nil {
				continue // directory markers ("a/b/") and keys no Stat could name
			}
			if err := fn(backend.ObjectInfo{Key: key, Size: aws.ToInt64(o.Size), ModTime: aws.ToTime(o.LastModified)}); err != nil {
				return err
			}
		}
	}
	return nil
}

// Create implements backend.Store with a conditional PUT (If-None-Match: *),
// which the server refuses with 412 if the key exists: first writer wins.
// Large objects go in parts and the condition is checked on completion.
// A server that ignores If-None-Match (some older S3-compatible ones)
// would let Create replace an object.
func (s *Store) Create(ctx context.Context, key string, r io.Reader, size int64) error {
	return s.upload(ctx, "create", key, r, size)
}

// Put implements backend.Store with a plain PUT, atomic on S3.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return s.upload(ctx, "put", key, r, size)
}

// Delete implements backend.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	k, err := s.objectKey(key)
	if err != nil {
		return err
	}
	if _, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: &k}); err != nil {
		if err := classify("delete", key, err); !errors.Is(err, backend.ErrNotExist) {
			return err
		}
	}
	return nil
}

// upload stores size bytes of r under key; op is "create" (conditional)
// or "put". size < 0 means r is read to its end.
func (s *Store) upload(ctx context.Context, op, key string, r io.Reader, size int64) error {
	k, err := s.objectKey(key)
	if err != nil {
		return err
	}
	if size < 0 {
		// Unknown size: one part's worth decides between one PUT and parts.
		buf, err := io.ReadAll(io.LimitReader(r, minPartSize))
		if err != nil {
			return fmt.Errorf("s3 %s %s: reading data: %w", op, key, err)
		}
		if len(buf) == minPartSize {
			return s.multipart(ctx, op, key, k, io.MultiReader(bytes.NewReader(buf), r), -1)
		}
		r, size = bytes.NewReader(buf), int64(len(buf))
	}
	if size > multipartThreshold {
		return s.multipart(ctx, op, key, k, r, size)
	}

	in := &s3.PutObjectInput{Bucket: &s.bucket, Key: &k, ContentLength: aws.Int64(size)}
	if op == "create" {
		in.IfNoneMatch = aws.String("*")
	}
	var optFns []func(*s3.Options)
	if rs, ok := seekable(r); ok {
		n, err := remaining(rs)
		if err != nil {
			return fmt.Errorf("s3 %s %s: %w", op, key, err)
		}
		if n != size {
			return fmt.Errorf("s3 %s %s: reader holds %d bytes, want %d", op, key, n, size)
		}
		in.Body = rs
		if sum, ok := backend.SHA256From(ctx); ok {
			// The caller hashed the data already: sign with that digest
			// instead of another pass over the body. The server checks the
			// body against the signed digest and refuses a mismatch, so no
			// checksum (a SHA-256 header would cost the server a second
			// pass; the SDK's default CRC32 costs a read of the whole body
			// here before it is sent) is needed.
			optFns = append(optFns, knownPayloadHash(hex.EncodeToString(sum[:])),
				func(o *s3.Options) { o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired })
		}
	} else {
		in.Body = &exactReader{r: r, left: size}
		if s.plainHTTP {
			optFns = unsignedOpts()
		}
		// A body that cannot be rewound cannot be sent again: let the
		// first failure through instead of "failed to rewind".
		optFns = append(optFns, func(o *s3.Options) { o.RetryMaxAttempts = 1 })
	}
	if _, err := s.client.PutObject(ctx, in, optFns...); err != nil {
		return s.uploadFailed(ctx, op, key, err)
	}
	return nil
}

// uploadFailed classifies the error of the call that writes key. A create
// whose request failed without a verdict may still have met an existing
// object: a server that refuses (412) before reading the whole body may
// close the connection while the body is being sent, and the SDK then sees
// a broken connection which it cannot retry with a body it cannot rewind.
// Or the write succeeded and its response was lost. If the key now exists,
// whole (S3 writes are atomic), the create reports ErrExist.
func (s *Store) uploadFailed(ctx context.Context, op, key string, err error) error {
	err = classify(op, key, err)
	if op != "create" || errors.Is(err, backend.ErrExist) || ctx.Err() != nil {
		return err
	}
	if _, serr := s.Stat(ctx, key); serr == nil {
		return fmt.Errorf("%s: %w", key, backend.ErrExist)
	}
	return err
}

// knownPayloadHash makes the SDK sign with a payload hash the caller knows
// rather than reading the body to compute it.
func knownPayloadHash(hexSum string) func(*s3.Options) {
	return s3.WithAPIOptions(func(st *smithymw.Stack) error {
		return st.Build.Add(smithymw.BuildMiddlewareFunc("sstatefsKnownPayloadHash",
			func(ctx context.Context, in smithymw.BuildInput, next smithymw.BuildHandler) (smithymw.BuildOutput, smithymw.Metadata, error) {
				return next.HandleBuild(v4.SetPayloadHash(ctx, hexSum), in)
			}), smithymw.After)
	})
}

// unsignedOpts lets PutObject send a body it cannot seek over http://,
// where the SDK would otherwise hash the body before sending it (for the
// signature and the CRC32) and refuses an unseekable one. The body goes
// unsigned and without checksum; Content-Length still guards against
// truncation. Over https:// the SDK streams such a body with a trailing
// checksum and needs no help.
func unsignedOpts() []func(*s3.Options) {
	return []func(*s3.Options){
		s3.WithAPIOptions(v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware),
		func(o *s3.Options) { o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired },
	}
}

// seekable returns r as an io.ReadSeeker if it is one that can really seek
// (an *os.File on a pipe cannot).
func seekable(r io.Reader) (io.ReadSeeker, bool) {
	rs, ok := r.(io.ReadSeeker)
	if !ok {
		return nil, false
	}
	if _, err := rs.Seek(0, io.SeekCurrent); err != nil {
		return nil, false
	}
	return rs, true
}

// remaining returns the bytes between the current position of rs and its
// end, leaving the position unchanged.
func remaining(rs io.ReadSeeker) (int64, error) {
	cur, err := rs.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, err
	}
	end, err := rs.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, err
	}
	if _, err := rs.Seek(cur, io.SeekStart); err != nil {
		return 0, err
	}
	return end - cur, nil
}

// exactReader yields the first left bytes of r and fails, so that the
// request is aborted rather than completed, if r ends before them.
type exactReader struct {
	r    io.Reader
	left int64
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	n, err := e.r.Read(p)
	e.left -= int64(n)
	if err == io.EOF && e.left > 0 {
		return n, fmt.Errorf("data ended %d bytes short of its size: %w", e.left, io.ErrUnexpectedEOF)
	}
	if err == io.EOF {
		err = nil
	}
	return n, err
}

// partSizeFor returns the part size for an object of size bytes.
func partSizeFor(size int64) int64 {
	ps := int64(minPartSize)
	if need := (size + maxParts - 1) / maxParts; need > ps {
		ps = (need + 1<<20 - 1) &^ (1<<20 - 1) // whole MiB
	}
	return ps
}

// multipart uploads r in parts, partConcurrency at a time, and completes
// the upload (conditionally for a create). On any failure the upload is
// aborted, so no part lingers and nothing becomes visible.
//
// versitygw (posix) honours If-None-Match: * on CompleteMultipartUpload as
// on PutObject: 412 PreconditionFailed when the key exists, checked when
// the upload completes; AWS does the same.
func (s *Store) multipart(ctx context.Context, op, key, k string, r io.Reader, size int64) (err error) {
	if op == "create" {
		// Fail fast rather than send the data only to be refused; the
		// condition on completion decides races.
		_, err := s.Stat(ctx, key)
		if err == nil {
			return fmt.Errorf("%s: %w", key, backend.ErrExist)
		}
		if !errors.Is(err, backend.ErrNotExist) {
			return err
		}
	}
	// Parts are sections of the reader when it can be read at offsets,
	// else copies in memory.
	var ra io.ReaderAt
	var base int64
	if rs, ok := seekable(r); ok && size >= 0 {
		n, err := remaining(rs)
		if err != nil {
			return fmt.Errorf("s3 %s %s: %w", op, key, err)
		}
		if n != size {
			return fmt.Errorf("s3 %s %s: reader holds %d bytes, want %d", op, key, n, size)
		}
		if a, ok := r.(io.ReaderAt); ok {
			ra = a
			base, _ = rs.Seek(0, io.SeekCurrent)
		}
	}

	cm, err := s.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
		Bucket:            &s.bucket,
		Key:               &k,
		ChecksumAlgorithm: types.ChecksumAlgorithmCrc32,
	})
	if err != nil {
		return classify(op, key, err)
	}
	uploadID := cm.UploadId
	defer func() {
		if err == nil {
			return
		}
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
		defer cancel()
		s.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{Bucket: &s.bucket, Key: &k, UploadId: uploadID})
	}()

	pctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		mu    sync.Mutex // protects parts
		parts []types.CompletedPart
		wg    sync.WaitGroup
	)
	// tokens bound the parts in flight; each carries a reusable buffer
	// (allocated on first use) when parts are copied.
	tokens := make(chan []byte, partConcurrency)
	for range partConcurrency {
		tokens <- nil
	}
	psize := partSizeFor(size)
	var total int64
	var readErr error
	for num := int32(1); ; num++ {
		var buf []byte
		select {
		case buf = <-tokens:
		case <-pctx.Done():
		}
		if pctx.Err() != nil {
			break
		}
		var body io.ReadSeeker
		var n int64
		last := false
		if ra != nil {
			n = min(psize, size-total)
			body = io.NewSectionReader(ra, base+total, n)
			last = total+n == size
		} else {
			if buf == nil {
				buf = make([]byte, psize)
			}
			m, err := io.ReadFull(r, buf)
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				last = true
			} else if err != nil {
				readErr = fmt.Errorf("reading data: %w", err)
				tokens <- buf
				break
			}
			n = int64(m)
			body = bytes.NewReader(buf[:m])
			if n == 0 && num > 1 {
				tokens <- buf
				break // the previous part ended exactly at the end
			}
		}
		total += n
		if size >= 0 && total > size {
			readErr = fmt.Errorf("reader holds more than %d bytes", size)
			tokens <- buf
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { tokens <- buf }()
			out, err := s.client.UploadPart(pctx, &s3.UploadPartInput{
				Bucket:            &s.bucket,
				Key:               &k,
				UploadId:          uploadID,
				PartNumber:        aws.Int32(num),
				Body:              body,
				ContentLength:     aws.Int64(n),
				ChecksumAlgorithm: types.ChecksumAlgorithmCrc32,
			})
			if err != nil {
				cancel(fmt.Errorf("part %d: %w", num, err))
				return
			}
			mu.Lock()
			parts = append(parts, types.CompletedPart{
				PartNumber:    aws.Int32(num),
				ETag:          out.ETag,
				ChecksumCRC32: out.ChecksumCRC32,
			})
			mu.Unlock()
		}()
		if last {
			break
		}
	}
	wg.Wait()
	if cause := context.Cause(pctx); cause != nil {
		return classify(op, key, cause)
	}
	if readErr == nil && size >= 0 && total != size {
		readErr = fmt.Errorf("got %d bytes, want %d", total, size)
	}
	if readErr != nil {
		return fmt.Errorf("s3 %s %s: %w", op, key, readErr)
	}

	sort.Slice(parts, func(i, j int) bool { return *parts[i].PartNumber < *parts[j].PartNumber })
	in := &s3.CompleteMultipartUploadInput{
		Bucket:          &s.bucket,
		Key:             &k,
		UploadId:        uploadID,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	}
	if op == "create" {
		in.IfNoneMatch = aws.String("*")
	}
	if _, err := s.client.CompleteMultipartUpload(ctx, in); err != nil {
		return s.uploadFailed(ctx, op, key, err)
	}
	return nil
}
