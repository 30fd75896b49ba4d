package s3store

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	smithyauth "github.com/aws/smithy-go/auth"
	"github.com/aws/smithy-go/encoding/httpbinding"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/s3replicad/s3replicad/engine"
)

// direct sends the three requests on the copy path (GetObject, PutObject,
// UploadPart) itself. Everything that decides what goes on the wire is
// the SDK's: its endpoint rules pick the URL, its SigV4 signer signs, its
// credentials sign. What is skipped is the per-request middleware stack,
// which on a 64 KiB object costs the daemon more CPU than the request.
// Buckets whose endpoint needs anything but plain SigV4 (S3 Express,
// access points, multi-region access points) stay with the SDK.
type direct struct {
	hc interface {
		Do(*http.Request) (*http.Response, error)
	}
	creds     aws.CredentialsProvider
	signer    *v4.Signer
	resolver  s3.EndpointResolverV2
	params    s3.EndpointParameters // all but the bucket
	userAgent string
	// gets says whether GetObject may go direct: not where the SDK would
	// validate the response's checksums (its default on AWS).
	gets bool

	mu    sync.Mutex
	bases map[string]*base
}

// base is where one bucket's objects live and how requests to it are
// signed; ok is false when the SDK must handle the bucket.
type base struct {
	ok                       bool
	scheme, host             string
	path, rawPath            string
	headers                  http.Header
	signingName, signingRegn string
}

func newDirect(c *s3.Client, userAgent string) *direct {
	o := c.Options()
	if o.Credentials == nil || o.EndpointResolverV2 == nil || o.HTTPClient == nil {
		return nil
	}
	region := o.Region
	return &direct{
		hc:       o.HTTPClient,
		creds:    o.Credentials,
		signer:   v4.NewSigner(func(so *v4.SignerOptions) { so.DisableURIPathEscaping = true }),
		resolver: o.EndpointResolverV2,
		params: s3.EndpointParameters{
			Region:                         &region,
			UseFIPS:                        aws.Bool(o.EndpointOptions.UseFIPSEndpoint == aws.FIPSEndpointStateEnabled),
			UseDualStack:                   aws.Bool(o.EndpointOptions.UseDualStackEndpoint == aws.DualStackEndpointStateEnabled),
			Endpoint:                       o.BaseEndpoint,
			ForcePathStyle:                 aws.Bool(o.UsePathStyle),
			Accelerate:                     aws.Bool(o.UseAccelerate),
			DisableMultiRegionAccessPoints: aws.Bool(o.DisableMultiRegionAccessPoints),
			UseArnRegion:                   aws.Bool(o.UseARNRegion),
			DisableS3ExpressSessionAuth:    o.DisableS3ExpressSessionAuth,
		},
		userAgent: userAgent,
		gets:      o.ResponseChecksumValidation == aws.ResponseChecksumValidationWhenRequired,
		bases:     map[string]*base{},
	}
}

// base resolves (once) where bucket's objects are addressed.
func (d *direct) base(ctx context.Context, bucket string) *base {
	d.mu.Lock()
	b, ok := d.bases[bucket]
	d.mu.Unlock()
	if ok {
		return b
	}
	b = &base{}
	p := d.params
	p.Bucket = &bucket
	if ep, err := d.resolver.ResolveEndpoint(ctx, p); err == nil {
		// Plain SigV4 as the first choice, or the SDK handles the bucket.
		if opts, _ := smithyauth.GetAuthOptions(&ep.Properties); len(opts) > 0 && isSigV4(opts[0].SchemeID) {
			name, _ := smithyhttp.GetSigV4SigningName(&opts[0].SignerProperties)
			region, _ := smithyhttp.GetSigV4SigningRegion(&opts[0].SignerProperties)
			if name == "" {
				name = "s3"
			}
			if region == "" {
				region = aws.ToString(d.params.Region)
			}
			raw := ep.URI.RawPath
			if raw == "" {
				raw = ep.URI.Path
			}
			*b = base{ok: true, scheme: ep.URI.Scheme, host: ep.URI.Host, path: ep.URI.Path, rawPath: raw,
				headers: ep.Headers, signingName: name, signingRegn: region}
		}
	} else if ctx.Err() != nil {
		return &base{} // do not cache a cancelled resolution
	}
	d.mu.Lock()
	d.bases[bucket] = b
	d.mu.Unlock()
	return b
}

// directFor returns how to reach bucket directly, or nil when its
// requests go through the SDK.
func (s *Store) directFor(ctx context.Context, bucket string) *base {
	if s.direct == nil {
		return nil
	}
	if b := s.direct.base(ctx, bucket); b.ok {
		return b
	}
	return nil
}

// isSigV4 recognises plain SigV4 as the endpoint rules name it.
func isSigV4(id string) bool { return id == "sigv4" || id == smithyauth.SchemeIDSigV4 }

// request builds an unsigned request for key in bucket.
func (d *direct) request(ctx context.Context, b *base, method, key string, query url.Values, body *engine.Payload) (*http.Request, error) {
	escaped := httpbinding.EscapePath(key, false)
	u := &url.URL{
		Scheme:   b.scheme,
		Host:     b.host,
		Path:     smithyhttp.JoinPath(b.path, "/"+key),
		RawPath:  smithyhttp.JoinPath(b.rawPath, "/"+escaped),
		RawQuery: encodeQuery(query),
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, err
	}
	if body != nil {
		setBody(req, *body, b.scheme == "http")
	}
	// NewRequest parses the URL again; keep the exact escaping signed.
	req.URL = u
	for k := range b.headers {
		req.Header.Set(k, b.headers.Get(k))
	}
	// Without it, net/http would ask for gzip and silently decompress an
	// object stored with Content-Encoding: gzip.
	req.Header.Set("Accept-Encoding", "identity")
	if d.userAgent != "" {
		req.Header.Set("User-Agent", d.userAgent)
	}
	return req, nil
}

// encodeQuery renders a query as SigV4 canonicalises it: sorted keys and
// %20, never '+', for a space.
func encodeQuery(q url.Values) string {
	if len(q) == 0 {
		return ""
	}
	return strings.ReplaceAll(q.Encode(), "+", "%20")
}

// send signs and sends req (its payload unsigned, as the SDK path sends
// it) and turns a non-2xx answer into the SDK's error types, so that
// classify treats both paths alike.
func (d *direct) send(ctx context.Context, b *base, op string, req *http.Request) (*http.Response, error) {
	creds, err := d.creds.Retrieve(ctx)
	if err != nil {
		return nil, &smithy.OperationError{ServiceID: "S3", OperationName: op, Err: fmt.Errorf("retrieve credentials: %w", err)}
	}
	hash := unsignedPayloadHash
	if req.ContentLength == 0 && req.Method == http.MethodGet {
		hash = emptyPayloadHash
	}
	req.Header.Set("X-Amz-Content-Sha256", hash)
	if err := d.signer.SignHTTP(ctx, creds, req, hash, b.signingName, b.signingRegn, time.Now()); err != nil {
		return nil, &smithy.OperationError{ServiceID: "S3", OperationName: op, Err: err}
	}
	resp, err := d.hc.Do(req)
	if err != nil {
		return nil, &smithy.OperationError{ServiceID: "S3", OperationName: op, Err: &awshttp.ResponseError{
			ResponseError: &smithyhttp.ResponseError{Err: &smithyhttp.RequestSendError{Err: err}}}}
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp, nil
	}
	return nil, &smithy.OperationError{ServiceID: "S3", OperationName: op, Err: responseError(resp)}
}

// responseError reads S3's XML error document (or, for a bodiless answer,
// names the status) and closes the body.
func responseError(resp *http.Response) error {
	defer resp.Body.Close()
	var doc struct {
		Code    string `xml:"Code"`
		Message string `xml:"Message"`
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if len(bytes.TrimSpace(raw)) > 0 {
		_ = xml.Unmarshal(raw, &doc)
	}
	if doc.Code == "" {
		doc.Code = strings.ReplaceAll(http.StatusText(resp.StatusCode), " ", "")
		if doc.Code == "" {
			doc.Code = strconv.Itoa(resp.StatusCode)
		}
	}
	if doc.Message == "" {
		doc.Message = resp.Status
	}
	return &awshttp.ResponseError{
		ResponseError: &smithyhttp.ResponseError{
			Response: &smithyhttp.Response{Response: resp},
			Err:      &smithy.GenericAPIError{Code: doc.Code, Message: doc.Message},
		},
		RequestID: resp.Header.Get("X-Amz-Request-Id"),
	}
}

// retryable says whether a request that failed this way may be sent again
// at once: a broken connection or a passing server fault. Throttling is
// not retried here, so that adaptive concurrency sees it.
func retryable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var re *awshttp.ResponseError
	if errors.As(err, &re) && re.Response != nil {
		switch re.HTTPStatusCode() {
		case http.StatusInternalServerError, http.StatusBadGateway, http.StatusGatewayTimeout:
			return true
		}
		return false
	}
	return isNetwork(err)
}

// attempts runs fn up to three times while it fails in a retryable way.
func attempts(ctx context.Context, fn func() error) error {
	var err error
	for i := range 3 {
		if i > 0 {
			wait := time.Duration(50<<(2*(i-1)))*time.Millisecond + rand.N(50*time.Millisecond)
			select {
			case <-ctx.Done():
				return err
			case <-time.After(wait):
			}
		}
		if err = fn(); err == nil || !retryable(err) {
			return err
		}
	}
	return err
}

func (d *direct) get(ctx context.Context, b *base, bucket, key, versionID string, r *engine.ByteRange) (*http.Response, error) {
	var q url.Values
	if versionID != "" {
		q = url.Values{"versionId": {versionID}}
	}
	var resp *http.Response
	err := attempts(ctx, func() error {
		req, err := d.request(ctx, b, http.MethodGet, key, q, nil)
		if err != nil {
			return err
		}
		if r != nil {
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", r.First, r.Last))
		}
		resp, err = d.send(ctx, b, "GetObject", req)
		return err
	})
	return resp, err
}

// objectFrom reads a GetObject answer's headers as the SDK would.
func objectFrom(resp *http.Response) *engine.Object {
	h := resp.Header
	o := &engine.Object{
		ObjectMeta: engine.ObjectMeta{
			ContentType:        h.Get("Content-Type"),
			ContentEncoding:    h.Get("Content-Encoding"),
			ContentDisposition: h.Get("Content-Disposition"),
			ContentLanguage:    h.Get("Content-Language"),
			CacheControl:       h.Get("Cache-Control"),
			Expires:            h.Get("Expires"),
		},
		Size:      resp.ContentLength,
		ETag:      strings.Trim(h.Get("ETag"), `"`),
		VersionID: h.Get("X-Amz-Version-Id"),
		Body:      resp.Body,
	}
	o.TagCount, _ = strconv.Atoi(h.Get("X-Amz-Tagging-Count"))
	for k, v := range h {
		if len(k) > len(metaPrefix) && strings.EqualFold(k[:len(metaPrefix)], metaPrefix) && len(v) > 0 {
			if o.Metadata == nil {
				o.Metadata = map[string]string{}
			}
			o.Metadata[strings.ToLower(k[len(metaPrefix):])] = v[0]
		}
	}
	return o
}

const metaPrefix = "X-Amz-Meta-"

// put sends a PutObject or, with a part number, an UploadPart.
func (d *direct) put(ctx context.Context, b *base, op, key string, q url.Values, hdr http.Header, body engine.Payload) (http.Header, error) {
	var out http.Header
	send := func() error {
		req, err := d.request(ctx, b, http.MethodPut, key, q, &body)
		if err != nil {
			return err
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := d.send(ctx, b, op, req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		out = resp.Header
		return nil
	}
	var err error
	if op == "UploadPart" {
		// A part sent twice is the same part; an object sent twice may be
		// two versions, so PutObject is retried by the engine, which first
		// looks for the replica.
		err = attempts(ctx, send)
	} else {
		err = send()
	}
	return out, err
}

// putHeaders renders a PutObject's content headers, metadata, tags and
// integrity header.
func putHeaders(m engine.ObjectMeta, contentMD5, crc32c *string) http.Header {
	h := http.Header{}
	set := func(k, v string) {
		if v != "" {
			h.Set(k, v)
		}
	}
	// What the SDK sends for a body without a type; S3's own default
	// would be binary/octet-stream.
	h.Set("Content-Type", "application/octet-stream")
	set("Content-Type", m.ContentType)
	set("Content-Encoding", m.ContentEncoding)
	set("Content-Disposition", m.ContentDisposition)
	set("Content-Language", m.ContentLanguage)
	set("Cache-Control", m.CacheControl)
	if t := parseExpires(m.Expires); t != nil {
		h.Set("Expires", t.UTC().Format(http.TimeFormat))
	}
	for k, v := range m.Metadata {
		h.Set(metaPrefix+k, v)
	}
	if tags := encodeTags(m.Tags); tags != nil {
		h.Set("X-Amz-Tagging", *tags)
	}
	set("X-Amz-Storage-Class", m.StorageClass)
	set("Content-Md5", aws.ToString(contentMD5))
	set("X-Amz-Checksum-Crc32c", aws.ToString(crc32c))
	return h
}

// unsignedPayloadHash stands for the body's SHA-256 in the signature: the
// integrity header, which is signed, vouches for the bytes instead.
const unsignedPayloadHash = "UNSIGNED-PAYLOAD"

// emptyPayloadHash is the SHA-256 of no bytes, signed for a GET.
const emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
