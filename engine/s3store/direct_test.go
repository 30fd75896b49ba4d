package s3store

import (
	"bytes"
	"context"
	"hash/crc32"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/s3replicad/s3replicad/engine"
)

// recorder is an HTTP client that answers every request itself, the same
// way, and keeps what it was sent.
type recorder struct {
	mu   sync.Mutex
	reqs []*http.Request
	body [][]byte
}

func (r *recorder) Do(req *http.Request) (*http.Response, error) {
	var b []byte
	if req.Body != nil {
		b, _ = io.ReadAll(req.Body)
	}
	r.mu.Lock()
	r.reqs = append(r.reqs, req)
	r.body = append(r.body, b)
	r.mu.Unlock()
	h := http.Header{}
	body := "gzipped bytes, not to be inflated"
	if req.Method == http.MethodGet {
		h.Set("Content-Type", "text/plain")
		h.Set("Content-Encoding", "gzip")
		h.Set("Cache-Control", "max-age=60")
		h.Set("Expires", "Thu, 01 Dec 2033 16:00:00 GMT")
		h.Set("ETag", `"0123456789abcdef0123456789abcdef"`)
		h.Set("X-Amz-Meta-Owner", "alice")
		h.Set("x-amz-meta-Mixed-Case", "v")
		h.Set("X-Amz-Tagging-Count", "2")
		h.Set("X-Amz-Version-Id", "v7")
		if rg := req.Header.Get("Range"); rg != "" {
			h.Set("Content-Range", "bytes 0-3/100")
			body = body[:4]
		}
	} else {
		h.Set("ETag", `"etag-of-the-part"`)
		h.Set("X-Amz-Version-Id", "v8")
		body = ""
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	return &http.Response{StatusCode: 200, Status: "200 OK", Header: h, Body: io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)), Request: req}, nil
}

func (r *recorder) last() (*http.Request, []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reqs[len(r.reqs)-1], r.body[len(r.body)-1]
}

// sdkOnly are headers only the SDK's middleware adds; they carry no
// meaning for the store.
var sdkOnly = map[string]bool{
	"Amz-Sdk-Invocation-Id": true, "Amz-Sdk-Request": true, "Authorization": true, "X-Amz-Date": true,
	"User-Agent": true, "X-Amz-User-Agent": true,
}

func wire(t *testing.T, r *http.Request) (string, url.Values, http.Header) {
	t.Helper()
	q := r.URL.Query()
	q.Del("x-id") // the SDK names the operation in the query; stores ignore it
	h := http.Header{}
	for k, v := range r.Header {
		if !sdkOnly[k] {
			h[k] = v
		}
	}
	return r.URL.Scheme + "://" + r.URL.Host + r.URL.EscapedPath(), q, h
}

// TestDirectRequestsMatchTheSDKs sends the copy path's three requests both
// ways and requires the same URL, query and headers on the wire, and the
// same reading of the answer, on AWS's endpoints and a custom one.
func TestDirectRequestsMatchTheSDKs(t *testing.T) {
	ctx := context.Background()
	payload := []byte("hello, replica")
	pl := engine.Payload{Data: payload, CRC32C: crc32.Checksum(payload, crc32.MakeTable(crc32.Castagnoli))}
	meta := engine.ObjectMeta{
		ContentType: "text/plain", ContentEncoding: "gzip", ContentDisposition: `attachment; filename="a b.txt"`,
		ContentLanguage: "en", CacheControl: "no-cache", Expires: "Thu, 01 Dec 2033 16:00:00 GMT",
		Metadata:     map[string]string{"owner": "alice", "s3replicad-source-version-id": "v1"},
		Tags:         map[string]string{"team": "a b", "x": "1&2"},
		StorageClass: "STANDARD_IA",
	}
	keys := []string{"plain", "a b+c%d&e=f", "dir//x/../y", "ü/日本語", "/leading", "tilde~*'()!$"}
	for _, ep := range []struct{ name, endpoint, region, integrity string }{
		{"aws", "", "us-west-2", IntegrityCRC32C},
		{"custom", "http://127.0.0.1:9000", "us-east-1", IntegrityMD5},
	} {
		t.Run(ep.name, func(t *testing.T) {
			stores := map[bool]*Store{}
			recs := map[bool]*recorder{}
			for _, sdk := range []bool{false, true} {
				recs[sdk] = &recorder{}
				st, err := New(ctx, Config{Endpoint: ep.endpoint, Region: ep.region, PathStyle: ep.endpoint != "",
					AccessKeyID: "AK", SecretAccessKey: "SK", Integrity: ep.integrity, SDKDataPath: sdk, HTTPClient: recs[sdk]})
				if err != nil {
					t.Fatal(err)
				}
				stores[sdk] = st
			}
			if stores[true].direct != nil || stores[false].direct == nil {
				t.Fatal("SDKDataPath does not choose the path")
			}
			// On AWS the SDK validates GetObject's checksums, so GETs stay
			// with it; elsewhere they go direct too.
			if got, want := stores[false].direct.gets, ep.endpoint != ""; got != want {
				t.Fatalf("direct GETs %v, want %v", got, want)
			}
			for _, bucket := range []string{"my-bucket", "my.dotted.bucket"} {
				for _, key := range keys {
					type result struct {
						url    string
						query  url.Values
						header http.Header
						body   []byte
						out    any
					}
					calls := map[string]func(*Store) any{
						"get": func(s *Store) any {
							o, err := s.Get(ctx, bucket, key, "v1", nil)
							if err != nil {
								t.Fatal(err)
							}
							b, _ := io.ReadAll(o.Body)
							o.Body = nil
							return []any{*o, string(b)}
						},
						"ranged get": func(s *Store) any {
							o, err := s.Get(ctx, bucket, key, "", &engine.ByteRange{First: 0, Last: 3})
							if err != nil {
								t.Fatal(err)
							}
							o.Body = nil
							return *o
						},
						"put": func(s *Store) any {
							v, err := s.Put(ctx, bucket, key, meta, pl)
							if err != nil {
								t.Fatal(err)
							}
							return v
						},
						"part": func(s *Store) any {
							e, err := s.UploadPart(ctx, bucket, key, "up+load/id=", 7, pl)
							if err != nil {
								t.Fatal(err)
							}
							return e
						},
					}
					for name, call := range calls {
						got := map[bool]result{}
						for _, sdk := range []bool{false, true} {
							out := call(stores[sdk])
							req, body := recs[sdk].last()
							u, q, h := wire(t, req)
							got[sdk] = result{u, q, h, body, out}
						}
						d, s := got[false], got[true]
						if d.url != s.url {
							t.Errorf("%s %s/%q: URL %s, the SDK's %s", name, bucket, key, d.url, s.url)
						}
						if !reflect.DeepEqual(d.query, s.query) {
							t.Errorf("%s %s/%q: query %v, the SDK's %v", name, bucket, key, d.query, s.query)
						}
						if !maps.EqualFunc(d.header, s.header, func(a, b []string) bool { return reflect.DeepEqual(a, b) }) {
							t.Errorf("%s %s/%q: headers\n%v\nthe SDK's\n%v", name, bucket, key, d.header, s.header)
						}
						if !bytes.Equal(d.body, s.body) {
							t.Errorf("%s %s/%q: body %q, the SDK's %q", name, bucket, key, d.body, s.body)
						}
						if !reflect.DeepEqual(d.out, s.out) {
							t.Errorf("%s %s/%q: read the answer as\n%+v\nthe SDK as\n%+v", name, bucket, key, d.out, s.out)
						}
					}
				}
			}
		})
	}
}

// TestDirectPathLeavesSpecialBucketsToTheSDK: S3 Express directory
// buckets sign with session credentials, which only the SDK does.
func TestDirectPathLeavesSpecialBucketsToTheSDK(t *testing.T) {
	st, err := New(context.Background(), Config{Region: "us-west-2", AccessKeyID: "AK", SecretAccessKey: "SK"})
	if err != nil {
		t.Fatal(err)
	}
	if b := st.direct.base(context.Background(), "logs--usw2-az1--x-s3"); b.ok {
		t.Fatalf("directory bucket taken directly: %+v", b)
	}
	if b := st.direct.base(context.Background(), "logs"); !b.ok || b.host != "logs.s3.us-west-2.amazonaws.com" {
		t.Fatalf("general purpose bucket resolved to %+v", b)
	}
}

// TestMemoryFileBodiesAreNotCopied uploads a payload held in a memory
// file larger than it over plain HTTP: the store must receive exactly
// the payload, sent by the kernel from the file rather than through a
// user-space copy.
func TestMemoryFileBodiesAreNotCopied(t *testing.T) {
	buf, mem := engine.NewBuffer(4 << 20)
	if mem == nil {
		t.Skip("copy buffers are memory files on Linux only")
	}
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	data := buf[:3<<20+12345] // the rest of the file must not be sent
	var got []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, _ = io.ReadAll(r.Body)
		w.Header().Set("ETag", `"e"`)
	}))
	defer srv.Close()
	st, err := New(context.Background(), Config{Endpoint: srv.URL, PathStyle: true, AccessKeyID: "AK", SecretAccessKey: "SK"})
	if err != nil {
		t.Fatal(err)
	}
	before := memBodyCopied.Load()
	for n := int32(1); n <= 2; n++ { // twice: the second send must start from the top again
		pl := engine.Payload{Data: data, CRC32C: crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli)), Mem: mem}
		if _, err := st.UploadPart(context.Background(), "b", "k", "u", n, pl); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("part %d: the store received %d bytes, not the %d of the payload", n, len(got), len(data))
		}
	}
	if copied := memBodyCopied.Load() - before; copied != 0 {
		t.Fatalf("%d bytes went through user space; sendfile should have sent them", copied)
	}
}
