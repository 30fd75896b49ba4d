package s3store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/s3replicad/s3replicad/engine/storetest"
	"github.com/s3replicad/s3replicad/internal/faultproxy"
	"github.com/s3replicad/s3replicad/internal/testenv"
	"github.com/s3replicad/s3replicad/s3store"
)

// quirks are each real store's known departures from S3 (README, "Store
// compatibility"); the suite checks them as it checks the rest.
var quirks = map[testenv.Kind]storetest.Quirks{
	testenv.VersityGW: {NoMarkerOnAbsentKey: true, MarkersApart: true},
	testenv.MinIO:     {NoMarkerOnAbsentKey: true, NoMarkerOnMarker: true},
}

// The S3 adapter passes the store conformance suite on every real store
// the tests install.
func TestConformance(t *testing.T) {
	for _, kind := range testenv.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			srv, err := testenv.StartServer(t.TempDir(), kind)
			if err != nil {
				if errors.Is(err, testenv.ErrNotInstalled) && os.Getenv("CI") != "true" {
					t.Skip(err)
				}
				t.Fatal(err)
			}
			t.Cleanup(srv.Close)
			t.Logf("%s %s at %s", kind, testenv.InstalledVersion(kind), srv.URL)
			storetest.Run(t, func(t *testing.T) storetest.Harness { return harness(t, srv, quirks[kind]) })
		})
	}
}

var bucketSeq atomic.Int64

// pageSize makes listings cross pages within a few dozen versions.
const pageSize = 7

func harness(t *testing.T, srv *testenv.Server, q storetest.Quirks) storetest.Harness {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin := testenv.S3(srv.URL)
	run := time.Now().UnixNano() % 1e6
	bucket := fmt.Sprintf("st-%d-%d", run, bucketSeq.Add(1))
	other := fmt.Sprintf("st-%d-%d", run, bucketSeq.Add(1))
	plain := fmt.Sprintf("st-%d-%d", run, bucketSeq.Add(1))
	for _, b := range []string{bucket, other, plain} {
		if err := testenv.CreateBucket(ctx, admin, b, b != plain); err != nil {
			t.Fatal(err)
		}
	}
	store := func(endpoint, secret string, stall time.Duration) *s3store.Store {
		st, err := s3store.New(context.Background(), s3store.Config{Endpoint: endpoint, PathStyle: true,
			AccessKeyID: testenv.AccessKey, SecretAccessKey: secret, StallTimeout: stall, ListPageSize: pageSize})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	proxy, err := faultproxy.Start(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	return storetest.Harness{
		Store: store(srv.URL, testenv.SecretKey, 0), Bucket: bucket, Other: other, Unversioned: plain,
		Denied: store(srv.URL, "not-"+testenv.SecretKey, 0),
		// A short stall timeout, so that a stalled request fails fast.
		Faulty: store(proxy.URL(), testenv.SecretKey, time.Second),
		Faults: proxyFaults{proxy},
		DeleteVersion: func(ctx context.Context, bucket, key, id string) error {
			_, err := admin.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &bucket, Key: &key, VersionId: &id})
			return err
		},
		PageSize: pageSize,
		Quirks:   q,
	}
}

// proxyFaults makes the fault proxy misbehave as the suite asks.
type proxyFaults struct{ p *faultproxy.Proxy }

func (f proxyFaults) Set(k storetest.Fault) {
	f.p.Set(faultproxy.Fault{Kind: map[storetest.Fault]faultproxy.Kind{
		storetest.Throttle: faultproxy.SlowDown, storetest.ServerError: faultproxy.Error500,
		storetest.Reset: faultproxy.Reset, storetest.Refused: faultproxy.Refuse, storetest.Stalled: faultproxy.Stall,
	}[k]})
}

func (f proxyFaults) Clear() {
	if err := f.p.Clear(); err != nil {
		panic(err)
	}
}
