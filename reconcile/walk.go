// Package reconcile compares a rule's source with its destination, key by
// key, for backfill (what to copy) and verify (what differs). It walks the
// two version listings side by side in key order, so memory holds one page
// of each and one key's versions whatever the bucket's size, and it reads
// a replica's metadata (a HEAD) only where the listing cannot tell which
// source version it holds.
package reconcile

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/internal/retry"
)

// Lister is a store's version listing, one page at a time, in S3's order:
// key ascending, newest version first.
type Lister interface {
	ListVersions(ctx context.Context, bucket, prefix, keyMarker, versionMarker string) (engine.VersionPage, error)
}

// Pair is one key's versions on both sides.
type Pair struct {
	Key     string           // source key
	DestKey string           // destination prefix + key
	Source  []engine.Version // newest first; empty: the key is only on the destination
	Dest    []engine.Version // newest first; empty: nothing on the destination
	// DestListedAt is no later than the request of the destination listing
	// that Dest comes from: a copy recorded as finished after it may be on
	// the destination without being in Dest.
	DestListedAt time.Time
}

// Walk calls fn for every key under the rule's prefix that either side has,
// in key order, starting after afterKey (a source key). Keys only on the
// destination come with an empty Source.
func Walk(ctx context.Context, src Lister, dst Lister, rule engine.Rule, afterKey string, fn func(Pair) error) error {
	srcKeys := newKeyStream(ctx, src, rule.SourceBucket, rule.Prefix, afterKey)
	destAfter := ""
	if afterKey != "" {
		destAfter = rule.DestinationPrefix + afterKey
	}
	dstKeys := newKeyStream(ctx, dst, rule.DestinationBucket, rule.DestinationPrefix+rule.Prefix, destAfter)
	s, err := srcKeys.next()
	if err != nil {
		return err
	}
	d, err := dstKeys.next()
	if err != nil {
		return err
	}
	for s != nil || d != nil {
		var p Pair
		var dk string
		if d != nil {
			dk = strings.TrimPrefix(d.key, rule.DestinationPrefix)
		}
		switch {
		case d == nil || s != nil && s.key < dk:
			p = Pair{Key: s.key, DestKey: rule.DestinationPrefix + s.key, Source: s.versions}
		case s == nil || dk < s.key:
			p = Pair{Key: dk, DestKey: d.key, Dest: d.versions}
		default:
			p = Pair{Key: s.key, DestKey: d.key, Source: s.versions, Dest: d.versions}
		}
		p.DestListedAt = dstKeys.listedAt()
		if err := fn(p); err != nil {
			return err
		}
		if len(p.Source) > 0 {
			if s, err = srcKeys.next(); err != nil {
				return err
			}
		}
		if len(p.Dest) > 0 {
			if d, err = dstKeys.next(); err != nil {
				return err
			}
		}
	}
	return nil
}

type keyVersions struct {
	key      string
	versions []engine.Version
}

// keyStream turns a paged listing into one key's versions at a time; a
// key's versions may span pages.
type keyStream struct {
	ctx            context.Context
	l              Lister
	bucket, prefix string
	km, vm         string
	page           []engine.Version
	i              int
	more           bool
	// When the current page and the one before were asked for.
	asked, askedBefore time.Time
}

// listedAt is when the earlier of the last two pages was asked for: a key
// that is not in the listing would have been in one of them.
func (s *keyStream) listedAt() time.Time {
	if s.askedBefore.IsZero() {
		return s.asked
	}
	return s.askedBefore
}

func newKeyStream(ctx context.Context, l Lister, bucket, prefix, after string) *keyStream {
	return &keyStream{ctx: ctx, l: l, bucket: bucket, prefix: prefix, km: after, more: true}
}

// peek returns the next version without taking it, fetching a page when
// needed; nil at the end.
func (s *keyStream) peek() (*engine.Version, error) {
	for s.i >= len(s.page) {
		if !s.more {
			return nil, nil
		}
		asked := time.Now()
		page, err := listWithRetry(s.ctx, s.l, s.bucket, s.prefix, s.km, s.vm)
		if err != nil {
			return nil, err
		}
		s.askedBefore, s.asked = s.asked, asked
		s.page, s.i = page.Versions, 0
		s.more = page.Truncated
		s.km, s.vm = page.NextKeyMarker, page.NextVersionIDMarker
		if page.Truncated && page.NextKeyMarker == "" && len(page.Versions) > 0 {
			// A store that truncates without markers: go on after the last.
			last := page.Versions[len(page.Versions)-1]
			s.km, s.vm = last.Key, last.VersionID
		}
	}
	return &s.page[s.i], nil
}

func (s *keyStream) next() (*keyVersions, error) {
	v, err := s.peek()
	if err != nil || v == nil {
		return nil, err
	}
	kv := &keyVersions{key: v.Key}
	for v != nil && v.Key == kv.key {
		kv.versions = append(kv.versions, *v)
		s.i++
		if v, err = s.peek(); err != nil {
			return nil, err
		}
	}
	return kv, nil
}

// listRetry bounds the tries of one listing page: the store adapters do
// not retry, and a walk of a large bucket should not end on one reset.
var listRetry = retry.Policy{Min: 200 * time.Millisecond, Max: 5 * time.Second, Attempts: 5}

func listWithRetry(ctx context.Context, l Lister, bucket, prefix, km, vm string) (engine.VersionPage, error) {
	var page engine.VersionPage
	err := listRetry.Do(ctx, func(int) error {
		var err error
		page, err = l.ListVersions(ctx, bucket, prefix, km, vm)
		return err
	}, Permanent, nil)
	if err != nil {
		return engine.VersionPage{}, fmt.Errorf("list versions of %s: %w", bucket, err)
	}
	return page, nil
}

// Permanent tells an error that trying again will not mend (the store's
// word: gone, refused, missing bucket) from a transient one.
func Permanent(err error) bool {
	c, _ := engine.Classify(err)
	return c != engine.Transient || errors.Is(err, context.Canceled)
}
