package s3store

import (
	"bytes"
	"context"
	"hash/crc32"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	smithyauth "github.com/aws/smithy-go/auth"
	smithyendpoints "github.com/aws/smithy-go/endpoints"

	"github.com/s3replicad/s3replicad/engine"
)

// endpointCases are client settings and buckets the daemon may meet: an
// S3-compatible endpoint, AWS in both addressing styles, FIPS and dual
// stack, and an access point ARN.
func endpointCases() []s3.EndpointParameters {
	base := func(bucket string, mod func(*s3.EndpointParameters)) s3.EndpointParameters {
		p := s3.EndpointParameters{Bucket: aws.String(bucket), Region: aws.String("us-east-1"),
			UseFIPS: aws.Bool(false), UseDualStack: aws.Bool(false), ForcePathStyle: aws.Bool(false), Accelerate: aws.Bool(false),
			DisableMultiRegionAccessPoints: aws.Bool(false), UseArnRegion: aws.Bool(false)}
		if mod != nil {
			mod(&p)
		}
		return p
	}
	return []s3.EndpointParameters{
		base("bucket", func(p *s3.EndpointParameters) {
			p.Endpoint, p.ForcePathStyle = aws.String("https://s3.example.net:9000"), aws.Bool(true)
		}),
		base("bucket", nil),
		base("bucket.with.dots", nil),
		base("bucket", func(p *s3.EndpointParameters) { p.ForcePathStyle = aws.Bool(true) }),
		base("bucket", func(p *s3.EndpointParameters) { p.UseFIPS, p.Region = aws.Bool(true), aws.String("us-gov-west-1") }),
		base("bucket", func(p *s3.EndpointParameters) { p.UseDualStack, p.Region = aws.Bool(true), aws.String("eu-west-1") }),
		base("arn:aws:s3:us-east-1:123456789012:accesspoint/ap", nil),
	}
}

// The cache keeps one entry per bucket for every key: S3's rules must not
// read the key, prefix or copy source. An SDK upgrade that makes them do so
// fails here.
func TestEndpointIgnoresKey(t *testing.T) {
	def := s3.NewDefaultEndpointResolverV2()
	ctx := context.Background()
	for _, p := range endpointCases() {
		want, err := def.ResolveEndpoint(ctx, p)
		if err != nil {
			t.Fatalf("%s: %v", *p.Bucket, err)
		}
		for _, key := range []string{"k", "a/b/c.txt", "with space+plus%25", "../x", "ünïcode/ключ", "--x-s3", "arn:aws:s3:::other"} {
			q := p
			q.Key, q.Prefix, q.CopySource = aws.String(key), aws.String(key), aws.String("src/"+key)
			got, err := def.ResolveEndpoint(ctx, q)
			if err != nil {
				t.Fatalf("%s, key %q: %v", *p.Bucket, key, err)
			}
			if !sameEndpoint(got, want) {
				t.Errorf("%s: key %q changes the endpoint: %+v, not %+v", *p.Bucket, key, got.URI, want.URI)
			}
		}
	}
}

// Every parameter but the key, prefix and copy source is part of a cache
// entry's identity; a parameter added by an SDK upgrade must be added to
// endpointKey (and here) before the cache may serve it.
func TestEndpointKeyCoversParameters(t *testing.T) {
	known := []string{"Bucket", "Region", "UseFIPS", "UseDualStack", "Endpoint", "ForcePathStyle", "Accelerate",
		"UseGlobalEndpoint", "UseObjectLambdaEndpoint", "Key", "Prefix", "CopySource", "DisableAccessPoints",
		"DisableMultiRegionAccessPoints", "UseArnRegion", "UseS3ExpressControlEndpoint", "DisableS3ExpressSessionAuth"}
	typ := reflect.TypeOf(s3.EndpointParameters{})
	var fields []string
	for i := range typ.NumField() {
		fields = append(fields, typ.Field(i).Name)
	}
	slices.Sort(fields)
	slices.Sort(known)
	if !slices.Equal(fields, known) {
		t.Fatalf("s3.EndpointParameters has fields %v; endpointKey knows %v", fields, known)
	}
	// Each known field but the three ignored ones changes the key.
	p := endpointCases()[0]
	for _, name := range known {
		if name == "Key" || name == "Prefix" || name == "CopySource" {
			continue
		}
		q := p
		f := reflect.ValueOf(&q).Elem().FieldByName(name)
		switch f.Interface().(type) {
		case *string:
			f.Set(reflect.ValueOf(aws.String("other")))
		case *bool:
			v := true
			if b := f.Interface().(*bool); b != nil && *b {
				v = false
			}
			f.Set(reflect.ValueOf(&v))
		default:
			t.Fatalf("field %s has type %s", name, f.Type())
		}
		if keyOf(q) == keyOf(p) {
			t.Errorf("changing %s does not change the cache key", name)
		}
	}
}

func sameEndpoint(a, b smithyendpoints.Endpoint) bool {
	if a.URI.String() != b.URI.String() || (len(a.Headers) > 0 || len(b.Headers) > 0) && !reflect.DeepEqual(a.Headers, b.Headers) {
		return false
	}
	ao, _ := smithyauth.GetAuthOptions(&a.Properties)
	bo, _ := smithyauth.GetAuthOptions(&b.Properties)
	if len(ao) != len(bo) {
		return false
	}
	for i := range ao {
		if ao[i].SchemeID != bo[i].SchemeID || !reflect.DeepEqual(ao[i].SignerProperties.Values(), bo[i].SignerProperties.Values()) ||
			!reflect.DeepEqual(ao[i].IdentityProperties.Values(), bo[i].IdentityProperties.Values()) {
			return false
		}
	}
	return reflect.DeepEqual(a.Properties.Values(), b.Properties.Values()) || len(ao) > 0
}

// The cache answers what the SDK's resolver answers, and what one request
// does to its copy (the SDK merges properties into it) reaches no other.
func TestEndpointCacheAnswersAsTheSDK(t *testing.T) {
	def := s3.NewDefaultEndpointResolverV2()
	c := newEndpointCache(def)
	ctx := context.Background()
	for _, p := range endpointCases() {
		want, err := def.ResolveEndpoint(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			got, err := c.ResolveEndpoint(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			if !sameEndpoint(got, want) {
				t.Fatalf("%s: cached %+v, SDK %+v", *p.Bucket, got, want)
			}
			opts, _ := smithyauth.GetAuthOptions(&got.Properties)
			for _, o := range opts {
				o.SchemeID = "changed"
				o.SignerProperties.Set("changed", true)
			}
			got.Properties.Set("changed", true)
			got.URI.Path = "/changed"
		}
	}
	if _, err := c.ResolveEndpoint(ctx, s3.EndpointParameters{}); err == nil {
		t.Fatal("parameters the SDK refuses were accepted")
	}
}

// twoHundred answers every request with 200 and body.
type twoHundred struct{ body string }

func (c twoHundred) Do(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	h := http.Header{}
	h.Set("ETag", `"0123456789abcdef0123456789abcdef"`)
	h.Set("X-Amz-Version-Id", "v1")
	h.Set("Content-Length", strconv.Itoa(len(c.body)))
	var body io.ReadCloser = http.NoBody
	if c.body != "" {
		body = io.NopCloser(bytes.NewReader([]byte(c.body)))
	}
	return &http.Response{StatusCode: 200, Status: "200 OK", Header: h, ContentLength: int64(len(c.body)), Body: body, Request: r}, nil
}

// An error sent after a 200 status is still an error: only an empty
// answer skips the SDK's check.
func TestPutTwoHundredWithError(t *testing.T) {
	ctx := context.Background()
	data := []byte("hello")
	p := engine.Payload{Data: data, CRC32C: crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli))}
	for _, c := range []struct {
		body string
		ok   bool
	}{
		{"", true},
		{`<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>m</Message></Error>`, false},
	} {
		st, err := New(ctx, Config{Endpoint: "https://s3.example.net", PathStyle: true, AccessKeyID: "AK", SecretAccessKey: "SK",
			HTTPClient: twoHundred{body: c.body}})
		if err != nil {
			t.Fatal(err)
		}
		v, err := st.Put(ctx, "bucket", "key", engine.ObjectMeta{}, p)
		if c.ok && (err != nil || v != "v1") {
			t.Errorf("empty 200: version %q, %v", v, err)
		}
		if !c.ok {
			if class, reason := engine.Classify(err); err == nil || class != engine.Transient || reason != engine.ReasonServerError {
				t.Errorf("200 with an error body: %v (class %v, %s), want a transient server error", err, class, reason)
			}
		}
		_, err = st.UploadPart(ctx, "bucket", "key", "up", 1, p)
		if (err == nil) != c.ok {
			t.Errorf("UploadPart, body %q: %v", c.body, err)
		}
	}
}

// Requests in parallel share the cached endpoints safely (run with -race).
func TestParallelRequestsShareEndpoints(t *testing.T) {
	body := make([]byte, 1000)
	st, err := New(context.Background(), Config{Endpoint: "https://s3.example.net", PathStyle: true, AccessKeyID: "AK", SecretAccessKey: "SK",
		HTTPClient: canned{body: body}})
	if err != nil {
		t.Fatal(err)
	}
	p := engine.Payload{Data: body, CRC32C: crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli))}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			ctx := context.Background()
			for j := range 20 {
				bucket := "bucket" + strconv.Itoa((i+j)%3)
				if _, err := st.Put(ctx, bucket, "k", engine.ObjectMeta{}, p); err != nil {
					t.Error(err)
					return
				}
				obj, err := st.Get(ctx, engine.VersionRef{Bucket: bucket, Key: "k", VersionID: "v1"}, nil)
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, obj.Body)
				obj.Body.Close()
			}
		})
	}
	wg.Wait()
}

// headerCheck records the headers of the requests it answers.
type headerCheck struct {
	canned
	mu   sync.Mutex
	seen []http.Header
}

func (h *headerCheck) Do(r *http.Request) (*http.Response, error) {
	h.mu.Lock()
	h.seen = append(h.seen, r.Header.Clone())
	h.mu.Unlock()
	return h.canned.Do(r)
}

// Requests are signed and carry no SDK invocation id.
func TestNoInvocationID(t *testing.T) {
	hc := &headerCheck{canned: canned{body: []byte("x")}}
	st, err := New(context.Background(), Config{Endpoint: "https://s3.example.net", PathStyle: true, AccessKeyID: "AK", SecretAccessKey: "SK",
		UserAgent: "s3replicad/test", HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := st.Put(ctx, "bucket", "k", engine.ObjectMeta{}, engine.Payload{Data: []byte("x"), CRC32C: crc32.Checksum([]byte("x"), crc32.MakeTable(crc32.Castagnoli))}); err != nil {
		t.Fatal(err)
	}
	obj, err := st.Get(ctx, engine.VersionRef{Bucket: "bucket", Key: "k"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	obj.Body.Close()
	if _, err := st.Versioning(ctx, "bucket"); err != nil {
		t.Fatal(err)
	}
	for i, h := range hc.seen {
		if h.Get("Amz-Sdk-Invocation-Id") != "" || !strings.HasPrefix(h.Get("Authorization"), "AWS4-HMAC-SHA256 ") || h.Get("User-Agent") != "s3replicad/test" {
			t.Errorf("request %d: invocation id %q, authorization %q, user agent %q", i, h.Get("Amz-Sdk-Invocation-Id"), h.Get("Authorization"), h.Get("User-Agent"))
		}
	}
	if len(hc.seen) != 3 {
		t.Fatalf("%d requests", len(hc.seen))
	}
}
