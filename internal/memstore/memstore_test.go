package memstore_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/engine/storetest"
	"github.com/s3replicad/s3replicad/internal/memstore"
)

// The fake the engine's tests run on passes the suite the S3 adapter
// passes on real stores.
func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Harness {
		m := memstore.New("bucket", "other")
		m.CreateUnversionedBucket("plain")
		m.PageSize = 4
		f := &faults{}
		return storetest.Harness{
			Store: m, Bucket: "bucket", Other: "other", Unversioned: "plain",
			Denied: m.Denied(),
			Faulty: m.WithFault(f.err), Faults: f,
			DeleteVersion: func(_ context.Context, bucket, key, id string) error {
				if !m.DeleteVersion(bucket, key, id) {
					return errors.New("no such version")
				}
				return nil
			},
			PageSize: m.PageSize,
		}
	})
}

// faults answers as the S3 adapter classifies each fault.
type faults struct {
	on atomic.Pointer[storetest.Fault]
}

func (f *faults) Set(k storetest.Fault) { f.on.Store(&k) }
func (f *faults) Clear()                { f.on.Store(nil) }

func (f *faults) err(string) error {
	k := f.on.Load()
	if k == nil {
		return nil
	}
	reason := map[storetest.Fault]string{storetest.Throttle: engine.ReasonThrottled, storetest.ServerError: engine.ReasonServerError,
		storetest.Reset: engine.ReasonNetwork, storetest.Refused: engine.ReasonNetwork, storetest.Stalled: engine.ReasonNetwork}[*k]
	return &engine.Error{Class: engine.Transient, Reason: reason, Err: errors.New(k.String())}
}
