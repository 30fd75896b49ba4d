package s3store

import (
	"bytes"
	"context"
	"encoding/pem"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/s3replicad/s3replicad/engine"
)

// benchStore is a Store against an in-process HTTPS server that reads
// every request body and answers as S3 would, so that a benchmark
// measures the client's cost per request: SDK, HTTP and TLS.
func benchStore(b *testing.B, objectSize int) *Store {
	b.Helper()
	body := make([]byte, objectSize)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("ETag", `"0123456789abcdef0123456789abcdef"`)
		w.Header().Set("X-Amz-Version-Id", "v1")
		if r.Method == http.MethodGet {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.Header().Set("Content-Type", "application/octet-stream")
			_, _ = w.Write(body)
		}
	}))
	srv.EnableHTTP2 = false
	srv.StartTLS()
	b.Cleanup(srv.Close)
	ca := filepath.Join(b.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		b.Fatal(err)
	}
	st, err := New(context.Background(), Config{Endpoint: srv.URL, PathStyle: true, AccessKeyID: "AK", SecretAccessKey: "SK",
		CAFile: ca, UserAgent: "s3replicad/bench"})
	if err != nil {
		b.Fatal(err)
	}
	return st
}

// BenchmarkPut and BenchmarkGet report the daemon's own cost of one
// PutObject or GetObject of 64 KiB and 16 MiB over TLS, with allocations.
func BenchmarkPut(b *testing.B) {
	for _, size := range []int{64 << 10, 16 << 20} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			st := benchStore(b, 0)
			data := make([]byte, size)
			p := engine.Payload{Data: data, CRC32C: crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli))}
			meta := engine.ObjectMeta{ContentType: "application/octet-stream", Metadata: map[string]string{engine.MetaSourceVersion: "v1"}}
			ctx := context.Background()
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := st.Put(ctx, "bucket", "some/key", meta, p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkGet(b *testing.B) {
	for _, size := range []int{64 << 10, 16 << 20} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			st := benchStore(b, size)
			buf := make([]byte, size)
			ctx := context.Background()
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				obj, err := st.Get(ctx, engine.VersionRef{Bucket: "bucket", Key: "some/key", VersionID: "v1"}, nil)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(obj.Body, buf); err != nil {
					b.Fatal(err)
				}
				obj.Body.Close()
			}
		})
	}
}

// canned answers every request at once, as S3 would, without a network:
// a benchmark through it measures the SDK's own cost per request.
type canned struct{ body []byte }

func (c canned) Do(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	h := http.Header{}
	h.Set("ETag", `"0123456789abcdef0123456789abcdef"`)
	h.Set("X-Amz-Version-Id", "v1")
	body := []byte(nil)
	if r.Method == http.MethodGet {
		body = c.body
		h.Set("Content-Type", "application/octet-stream")
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	return &http.Response{StatusCode: 200, Status: "200 OK", Header: h, ContentLength: int64(len(body)),
		Body: io.NopCloser(bytes.NewReader(body)), Request: r}, nil
}

// BenchmarkSDKPerRequest is the SDK's cost of one PutObject and one
// GetObject of 64 KiB, network aside.
func BenchmarkSDKPerRequest(b *testing.B) {
	body := make([]byte, 64<<10)
	st, err := New(context.Background(), Config{Endpoint: "https://s3.example.net", PathStyle: true, AccessKeyID: "AK", SecretAccessKey: "SK",
		UserAgent: "s3replicad/bench", HTTPClient: canned{body: body}})
	if err != nil {
		b.Fatal(err)
	}
	p := engine.Payload{Data: body, CRC32C: crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli))}
	meta := engine.ObjectMeta{ContentType: "application/octet-stream", Metadata: map[string]string{engine.MetaSourceVersion: "v1"}}
	ctx := context.Background()
	b.Run("put", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := st.Put(ctx, "bucket", "some/key", meta, p); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("get", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			obj, err := st.Get(ctx, engine.VersionRef{Bucket: "bucket", Key: "some/key", VersionID: "v1"}, nil)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, obj.Body)
			obj.Body.Close()
		}
	})
}
