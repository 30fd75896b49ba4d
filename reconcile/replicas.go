package reconcile

import (
	"context"
	"fmt"
	"strings"

	"github.com/s3replicad/s3replicad/engine"
)

// Header reads a destination version's size, ETag and user metadata.
type Header interface {
	Head(ctx context.Context, bucket, key, versionID string) (int64, string, map[string]string, error)
}

// Replica is a destination version and the source version it holds.
type Replica struct {
	engine.Version
	// IsReplica says the version holds a source version: Source ("" for
	// the null version).
	IsReplica  bool
	Source     string
	SourceETag string // the source ETag it was made from, when read
	Pass       string // s3replicad-pass, when read
	// Headed says the metadata was read; otherwise Source was matched by
	// content (same single-part ETag and size, one of each).
	Headed bool
}

// Replicas is what the destination holds for one key.
type Replicas struct {
	BySource map[string]Replica // source version id ("" for null) -> newest replica of it
	ByID     map[string]Replica // destination version id -> its replica
	Current  *Replica           // the key's current version (nil: none)
	Others   []Replica          // versions that are not replicas
	Heads    int                // HEAD requests it took
}

// singlePart tells an ETag that is the content's MD5 (not a multipart
// upload's md5-of-md5s-N).
func singlePart(etag string) bool { return etag != "" && !strings.Contains(etag, "-") }

// Inspect works out which source version each of a key's destination
// versions holds. The listing tells it when a single-part ETag and size
// occur once among the source's versions and once among the destination's:
// an MD5 of the content matches only that content. Otherwise (multipart
// ETags, which depend on part sizes, or contents written more than once) it
// reads the replica's metadata with a HEAD.
func Inspect(ctx context.Context, h Header, bucket, destKey string, src, dst []engine.Version) (*Replicas, error) {
	rs := &Replicas{BySource: map[string]Replica{}, ByID: map[string]Replica{}}
	type content struct {
		etag string
		size int64
	}
	srcBy := map[content][]engine.Version{}
	for _, v := range src {
		if !v.DeleteMarker && singlePart(v.ETag) {
			c := content{v.ETag, v.Size}
			srcBy[c] = append(srcBy[c], v)
		}
	}
	dstCount := map[content]int{}
	for _, v := range dst {
		if !v.DeleteMarker {
			dstCount[content{v.ETag, v.Size}]++
		}
	}
	for _, v := range dst {
		r := Replica{Version: v}
		if !v.DeleteMarker {
			c := content{v.ETag, v.Size}
			if cands := srcBy[c]; singlePart(v.ETag) && len(cands) == 1 && dstCount[c] == 1 {
				r.IsReplica, r.Source, r.SourceETag = true, cands[0].VersionID, cands[0].ETag
			} else {
				_, _, meta, err := headWithRetry(ctx, h, bucket, destKey, v.VersionID)
				if err != nil {
					return nil, fmt.Errorf("head destination %s@%s: %w", destKey, v.VersionID, err)
				}
				rs.Heads++
				r.Headed = true
				sv, ok := meta[engine.MetaSourceVersion]
				r.IsReplica, r.SourceETag, r.Pass = ok && sv != "", meta[engine.MetaSourceETag], meta[engine.MetaPass]
				if sv != "null" {
					r.Source = sv
				}
			}
		}
		if v.IsLatest {
			cp := r
			rs.Current = &cp
		}
		if !v.DeleteMarker {
			rs.ByID[v.VersionID] = r
		}
		switch {
		case r.IsReplica:
			if _, seen := rs.BySource[r.Source]; !seen { // newest first
				rs.BySource[r.Source] = r
			}
		case !v.DeleteMarker:
			rs.Others = append(rs.Others, r)
		}
	}
	return rs, nil
}

// SameContent compares a source version with its replica: ETags when both
// are single-part (an MD5), else size plus the source ETag the replica
// recorded.
func SameContent(src engine.Version, r Replica) (bool, string) {
	if src.Size != r.Size {
		return false, fmt.Sprintf("size %d on the source, %d on the destination", src.Size, r.Size)
	}
	if singlePart(src.ETag) && singlePart(r.ETag) {
		if src.ETag != r.ETag {
			return false, fmt.Sprintf("ETag %s on the source, %s on the destination", src.ETag, r.ETag)
		}
		return true, ""
	}
	if r.SourceETag != "" && r.SourceETag != src.ETag {
		return false, fmt.Sprintf("the replica was made from ETag %s, the source version has %s", r.SourceETag, src.ETag)
	}
	return true, ""
}

// headWithRetry reads a version's metadata, trying a transient failure
// again (listRetry's policy).
func headWithRetry(ctx context.Context, h Header, bucket, key, version string) (int64, string, map[string]string, error) {
	var (
		size int64
		etag string
		meta map[string]string
	)
	err := listRetry.Do(ctx, func(int) error {
		var err error
		size, etag, meta, err = h.Head(ctx, bucket, key, version)
		return err
	}, Permanent, nil)
	return size, etag, meta, err
}
