package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/engine/s3store"
)

// Backfill and verify both walk the source's versions key by key and look
// at what the destination holds for that key.

// eachKey streams a bucket's versions under prefix, grouped by key (newest
// first within a key), starting after afterKey. fn sees every key once, with
// all its versions; memory is one page plus one key's versions.
func eachKey(ctx context.Context, src *s3store.Store, bucket, prefix, afterKey string, fn func(key string, vs []engine.Version) error) error {
	var (
		cur     string
		group   []engine.Version
		km, vm  = afterKey, ""
		started bool
	)
	for {
		page, err := src.ListVersions(ctx, bucket, prefix, km, vm)
		if err != nil {
			return fmt.Errorf("list versions of %s: %w", bucket, err)
		}
		for _, v := range page.Versions {
			if started && v.Key != cur {
				if err := fn(cur, group); err != nil {
					return err
				}
				group = group[:0]
			}
			cur, started = v.Key, true
			group = append(group, v)
		}
		if !page.Truncated {
			break
		}
		km, vm = page.NextKeyMarker, page.NextVersionIDMarker
	}
	if started {
		return fn(cur, group)
	}
	return nil
}

// replicaSet is what the destination holds for one key.
type replicaSet struct {
	bySource map[string]replica // source version id -> newest replica of it
	current  *replica           // the key's current version (nil: none)
	others   []replica          // versions that are not replicas
}

type replica struct {
	engine.Version
	source     string // s3replicad-source-version-id ("" when not a replica)
	sourceETag string
}

// inspect lists the destination's versions of key and reads which source
// version each replicates (one HEAD per version).
func inspect(ctx context.Context, dst *s3store.Store, bucket, key string) (*replicaSet, error) {
	rs := &replicaSet{bySource: map[string]replica{}}
	km, vm := "", ""
	for {
		page, err := dst.ListVersions(ctx, bucket, key, km, vm)
		if err != nil {
			return nil, fmt.Errorf("list destination versions of %s: %w", key, err)
		}
		for _, v := range page.Versions {
			if v.Key != key {
				continue
			}
			r := replica{Version: v}
			if !v.DeleteMarker {
				_, _, meta, err := dst.Head(ctx, bucket, key, v.VersionID)
				if err != nil {
					return nil, fmt.Errorf("head destination %s@%s: %w", key, v.VersionID, err)
				}
				r.source, r.sourceETag = meta[engine.MetaSourceVersion], meta[engine.MetaSourceETag]
				if r.source == "null" {
					r.source = ""
				}
			}
			if v.IsLatest {
				cp := r
				rs.current = &cp
			}
			if r.source != "" {
				if _, seen := rs.bySource[r.source]; !seen { // newest first
					rs.bySource[r.source] = r
				}
			} else if !v.DeleteMarker {
				rs.others = append(rs.others, r)
			}
		}
		if !page.Truncated {
			return rs, nil
		}
		km, vm = page.NextKeyMarker, page.NextVersionIDMarker
	}
}

// selected returns the versions of a key a rule replicates: every version
// when the rule has no tag filter, else those whose tags match.
func selected(ctx context.Context, src *s3store.Store, r engine.Rule, bucket, key string, vs []engine.Version) ([]engine.Version, error) {
	if len(r.Tags) == 0 {
		return vs, nil
	}
	var out []engine.Version
	for _, v := range vs {
		if v.DeleteMarker {
			continue
		}
		tags, err := src.Tags(ctx, bucket, key, v.VersionID)
		if err != nil {
			if c, _ := engine.Classify(err); c == engine.Gone {
				continue
			}
			return nil, err
		}
		match := true
		for k, want := range r.Tags {
			if tags[k] != want {
				match = false
			}
		}
		if match {
			out = append(out, v)
		}
	}
	return out, nil
}

// sameContent compares a source version with its replica: ETags when both
// are single-part (an MD5), else size plus the source ETag the replica
// recorded.
func sameContent(src engine.Version, r replica) (bool, string) {
	if src.Size != r.Size {
		return false, fmt.Sprintf("size %d on the source, %d on the destination", src.Size, r.Size)
	}
	if !strings.Contains(src.ETag, "-") && !strings.Contains(r.ETag, "-") {
		if src.ETag != r.ETag {
			return false, fmt.Sprintf("ETag %s on the source, %s on the destination", src.ETag, r.ETag)
		}
		return true, ""
	}
	if r.sourceETag != "" && r.sourceETag != src.ETag {
		return false, fmt.Sprintf("the replica was made from ETag %s, the source version has %s", r.sourceETag, src.ETag)
	}
	return true, ""
}
