package s3store

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/s3replicad/s3replicad/engine"
)

// fakeS3 answers every request with one canned S3 error and records what
// it was sent.
func fakeS3(t *testing.T, status int, code string) (*Store, func() *http.Request) {
	var mu sync.Mutex
	var last *http.Request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		last = r.Clone(context.Background())
		mu.Unlock()
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(status)
		fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>canned</Message></Error>`, code)
	}))
	t.Cleanup(srv.Close)
	st, err := New(context.Background(), Config{Endpoint: srv.URL, PathStyle: true, AccessKeyID: "AK", SecretAccessKey: "SK", UserAgent: "s3replicad/test"})
	if err != nil {
		t.Fatal(err)
	}
	return st, func() *http.Request { mu.Lock(); defer mu.Unlock(); return last }
}

func TestErrorsAreClassifiedAtTheBoundary(t *testing.T) {
	for _, c := range []struct {
		status      int
		code        string
		call        string
		class       engine.Class
		reason      string
		unsupported bool
	}{
		{404, "NoSuchVersion", "get", engine.Gone, engine.ReasonSourceMissing, false},
		{404, "NoSuchBucket", "get", engine.Permanent, engine.ReasonNoSuchBucket, false},
		{403, "AccessDenied", "put", engine.Permanent, engine.ReasonAccessDenied, false},
		{503, "SlowDown", "put", engine.Transient, engine.ReasonThrottled, false},
		{400, "BadDigest", "put", engine.Transient, engine.ReasonIntegrity, false},
		{404, "NoSuchKey", "copy", engine.Gone, engine.ReasonSourceMissing, false},
		{501, "NotImplemented", "copy", engine.Permanent, engine.ReasonInvalid, true},
	} {
		t.Run(c.code+"/"+c.call, func(t *testing.T) {
			st, last := fakeS3(t, c.status, c.code)
			ctx := context.Background()
			var err error
			switch c.call {
			case "get":
				_, err = st.Get(ctx, engine.VersionRef{Bucket: "b", Key: "k", VersionID: "v1"}, nil)
			case "put":
				_, err = st.Put(ctx, "b", "k", engine.ObjectMeta{}, engine.Payload{Data: []byte("x"), CRC32C: 0x90f599e3})
			case "copy":
				_, err = st.Copy(ctx, engine.VersionRef{Bucket: "src", Key: "a b+c/ü", VersionID: "v1"}, "b", "k", engine.ObjectMeta{})
			}
			class, reason := engine.Classify(err)
			if class != c.class || reason != c.reason || errors.Is(err, engine.ErrCopyUnsupported) != c.unsupported {
				t.Fatalf("%s %s: classified %v/%s (unsupported %v), want %v/%s", c.call, c.code, class, reason,
					errors.Is(err, engine.ErrCopyUnsupported), c.class, c.reason)
			}
			r := last()
			if ua := r.Header.Get("User-Agent"); ua != "s3replicad/test" {
				t.Errorf("User-Agent %q", ua)
			}
			switch c.call {
			case "put":
				if got := r.Header.Get("X-Amz-Checksum-Crc32c"); got != "kPWZ4w==" {
					t.Errorf("x-amz-checksum-crc32c %q, want the payload's CRC32C", got)
				}
				if got := r.Header.Get("X-Amz-Content-Sha256"); got != "UNSIGNED-PAYLOAD" {
					t.Errorf("x-amz-content-sha256 %q: the payload should not be hashed twice", got)
				}
			case "copy":
				if got := r.Header.Get("X-Amz-Copy-Source"); got != "src/a%20b%2Bc/%C3%BC?versionId=v1" {
					t.Errorf("x-amz-copy-source %q", got)
				}
			}
		})
	}
}

// A multipart upload asks for CRC32C part checksums; the algorithm counts
// only when the store echoes it, and a store that refuses it is asked again
// without, then never asked again.
func TestMultipartChecksumAlgorithmIsNegotiated(t *testing.T) {
	const initiated = `<?xml version="1.0" encoding="UTF-8"?><InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key><UploadId>up1</UploadId></InitiateMultipartUploadResult>`
	for _, c := range []struct {
		store    string
		want     string
		requests []string // x-amz-checksum-algorithm of each create, over two uploads
	}{
		{"honours", "CRC32C", []string{"CRC32C", "CRC32C"}},
		{"ignores", "", []string{"CRC32C", "CRC32C"}},
		{"refuses", "", []string{"CRC32C", "", ""}},
	} {
		t.Run(c.store, func(t *testing.T) {
			var mu sync.Mutex
			var asked []string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				algo := r.Header.Get("X-Amz-Checksum-Algorithm")
				mu.Lock()
				asked = append(asked, algo)
				mu.Unlock()
				w.Header().Set("Content-Type", "application/xml")
				switch {
				case c.store == "refuses" && algo != "":
					w.WriteHeader(http.StatusBadRequest)
					fmt.Fprint(w, `<Error><Code>InvalidArgument</Code><Message>checksum algorithm not supported</Message></Error>`)
					return
				case c.store == "honours":
					w.Header().Set("X-Amz-Checksum-Algorithm", algo)
				}
				fmt.Fprint(w, initiated)
			}))
			defer srv.Close()
			st, err := New(context.Background(), Config{Endpoint: srv.URL, PathStyle: true, AccessKeyID: "AK", SecretAccessKey: "SK"})
			if err != nil {
				t.Fatal(err)
			}
			for range 2 {
				id, algo, err := st.CreateMultipart(context.Background(), "b", "k", engine.ObjectMeta{}, true)
				if err != nil || id != "up1" || algo != c.want {
					t.Fatalf("CreateMultipart = %q, %q, %v; want up1, %q", id, algo, err, c.want)
				}
			}
			if fmt.Sprint(asked) != fmt.Sprint(c.requests) {
				t.Fatalf("algorithms asked for %q, want %q", asked, c.requests)
			}
		})
	}
	// Parts copied inside the store carry no checksum: none is asked for.
	st, last := fakeS3(t, 200, "")
	_, _, _ = st.CreateMultipart(context.Background(), "b", "k", engine.ObjectMeta{}, false)
	if got := last().Header.Get("X-Amz-Checksum-Algorithm"); got != "" {
		t.Fatalf("an upload of copied parts asked for %q", got)
	}
}

// The SDK splits a listing into versions and delete markers; their order
// is the answer's, not their times' (S3's are whole seconds, so a version
// and a marker written in the same second tie).
func TestListingKeepsTheAnswersOrder(t *testing.T) {
	const answer = `<?xml version="1.0" encoding="UTF-8"?>
<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><IsTruncated>false</IsTruncated>
<Version><Key>k</Key><VersionId>v3</VersionId><IsLatest>true</IsLatest><LastModified>2026-01-01T00:00:01.000Z</LastModified><ETag>"e3"</ETag><Size>3</Size></Version>
<DeleteMarker><Key>k</Key><VersionId>m2</VersionId><IsLatest>false</IsLatest><LastModified>2026-01-01T00:00:00.000Z</LastModified></DeleteMarker>
<Version><Key>k</Key><VersionId>v1</VersionId><IsLatest>false</IsLatest><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>"e1"</ETag><Size>1</Size></Version>
<DeleteMarker><Key>k</Key><VersionId>m0</VersionId><IsLatest>false</IsLatest><LastModified>2026-01-01T00:00:00.000Z</LastModified></DeleteMarker>
<Version><Key>k</Key><VersionId>null</VersionId><IsLatest>false</IsLatest><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>"e0"</ETag><Size>0</Size></Version>
<DeleteMarker><Key>l</Key><VersionId>m9</VersionId><IsLatest>true</IsLatest><LastModified>2026-01-01T00:00:00.000Z</LastModified></DeleteMarker>
</ListVersionsResult>`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/xml")
		fmt.Fprint(w, answer)
	}))
	defer srv.Close()
	st, err := New(context.Background(), Config{Endpoint: srv.URL, PathStyle: true, AccessKeyID: "AK", SecretAccessKey: "SK"})
	if err != nil {
		t.Fatal(err)
	}
	page, err := st.ListVersions(context.Background(), "b", "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range page.Versions {
		got = append(got, v.Key+"@"+v.VersionID)
	}
	if want := []string{"k@v3", "k@m2", "k@v1", "k@m0", "k@", "l@m9"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("listed %v, want the answer's order %v", got, want)
	}
}
