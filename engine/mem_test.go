package engine_test

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/internal/memstore"
)

// memStore is the in-memory store (internal/memstore, held to the store
// conformance suite) with the hooks these tests use.
type memStore struct {
	*memstore.Store
	afterPut    func() // called after each version written (not markers)
	afterMarker func() // called after each delete marker written
	puts        atomic.Int32
	copies      atomic.Int32 // Copy calls (inside the store)
	// findFails fails that many replica lookups (a destination that
	// refuses for a moment), for a test that needs an op held back.
	findFails atomic.Int32
}

// Copy counts the copies made inside the store (failback's).
func (m *memStore) Copy(ctx context.Context, src engine.VersionRef, bucket, key string, meta engine.ObjectMeta) (string, error) {
	m.copies.Add(1)
	return m.Store.Copy(ctx, src, bucket, key, meta)
}

func (m *memStore) FindReplica(ctx context.Context, bucket, key string, a engine.Action, of engine.ReplicaOf, since time.Time) (string, bool, error) {
	if m.findFails.Add(-1) >= 0 {
		return "", false, &engine.Error{Class: engine.Transient, Reason: engine.ReasonOther, Err: errors.New("refused for the test")}
	}
	return m.Store.FindReplica(ctx, bucket, key, a, of, since)
}

type memVersion struct {
	id     string
	body   []byte
	meta   engine.ObjectMeta
	marker bool
	at     time.Time
}

func newMem() *memStore {
	m := &memStore{Store: memstore.New()}
	m.OnWrite = func(v memstore.Version) {
		if !v.Marker && m.afterPut != nil {
			m.afterPut()
		}
		if v.Marker && m.afterMarker != nil {
			m.afterMarker()
		}
		m.puts.Add(1)
	}
	return m
}

// add writes a version as a client of the store would (with v.id, when
// set, as its id) and returns its id.
func (m *memStore) add(bucket, key string, v memVersion) string {
	return m.Add(bucket, key, memstore.Version{ID: v.id, Body: v.body, Meta: v.meta, Marker: v.marker, At: v.at})
}

func (m *memStore) find(bucket, key, id string) (memVersion, bool) {
	v, ok := m.Find(bucket, key, id)
	return fromMem(v), ok
}

// history is key's versions, oldest first.
func (m *memStore) history(bucket, key string) []memVersion {
	var out []memVersion
	for _, v := range m.History(bucket, key) {
		out = append(out, fromMem(v))
	}
	return out
}

func fromMem(v memstore.Version) memVersion {
	return memVersion{id: v.ID, body: v.Body, meta: v.Meta, marker: v.Marker, at: v.At}
}
