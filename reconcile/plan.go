package reconcile

import (
	"context"
	"fmt"
	"time"

	"github.com/s3replicad/s3replicad/engine"
)

// Tagger reads a source version's tags (rules that filter on tags).
type Tagger interface {
	Tags(ctx context.Context, bucket, key, versionID string) (map[string]string, error)
}

// Selected returns the versions of a key a rule replicates: every version
// when the rule has no tag filter, else those whose tags match (a version
// gone meanwhile is left out).
func Selected(ctx context.Context, t Tagger, r engine.Rule, key string, vs []engine.Version) ([]engine.Version, error) {
	if len(r.Tags) == 0 {
		return vs, nil
	}
	var out []engine.Version
	for _, v := range vs {
		if v.DeleteMarker {
			continue
		}
		tags, err := t.Tags(ctx, r.SourceBucket, key, v.VersionID)
		if err != nil {
			if c, _ := engine.Classify(err); c == engine.Gone {
				continue
			}
			return nil, fmt.Errorf("tags of %s@%s: %w", key, v.VersionID, err)
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

// Plan decides what backfill queues for one key: the selected source
// versions the destination lacks, oldest first, then, if the destination's
// current version would not be the source's current one, a fresh copy of
// it on top (S3 cannot insert a version under the current one). known holds
// the ops the state file has for each source version, read after the
// destination was listed (at listedAt): one queued or failed is left alone;
// one that completed after the listing is there although the listing does
// not show it; one that completed before and whose replica is gone is
// copied again as a new pass. vs are the selected versions, newest first.
func Plan(rule engine.Rule, key, destKey string, vs []engine.Version, have *Replicas, known map[string][]*engine.Op, listedAt time.Time, pass string, now time.Time) []*engine.Op {
	if len(vs) == 0 {
		return nil
	}
	mk := func(v engine.Version, a engine.Action) *engine.Op {
		op := &engine.Op{
			Rule: rule.ID, Bucket: rule.SourceBucket, Key: key, VersionID: v.VersionID, ETag: v.ETag, Size: v.Size,
			Action: a, Origin: engine.OriginBackfill, Dest: rule.Destination, DestBucket: rule.DestinationBucket,
			DestKey: destKey, Recorded: now, State: engine.Pending,
		}
		if a == engine.ActionDeleteMarker {
			op.Size = 0
		}
		for _, prev := range known[v.VersionID] {
			if !prev.State.Terminal() || prev.State == engine.Failed {
				return nil // already queued, or failed and waiting for `retry`
			}
			if prev.State == engine.Completed && !prev.Finished.Before(listedAt) {
				return nil // written after the destination was listed
			}
			op.Pass = "backfill-" + pass // copied before, since lost on the destination
		}
		return op
	}
	var ops []*engine.Op
	lastWritten := ""
	for i := len(vs) - 1; i >= 0; i-- { // oldest first
		v := vs[i]
		if v.DeleteMarker {
			continue
		}
		if _, ok := have.BySource[v.VersionID]; ok {
			continue
		}
		if op := mk(v, engine.ActionCopy); op != nil {
			ops = append(ops, op)
			lastWritten = v.VersionID
		}
	}
	latest := vs[0]
	switch {
	case latest.DeleteMarker && rule.ReplicateDeleteMarkers && len(rule.Tags) == 0:
		if have.Current == nil || !have.Current.DeleteMarker || lastWritten != "" {
			if op := mk(latest, engine.ActionDeleteMarker); op != nil {
				ops = append(ops, op)
			}
		}
	case !latest.DeleteMarker && latest.IsLatest:
		currentOK := lastWritten == latest.VersionID ||
			(lastWritten == "" && have.Current != nil && have.Current.IsReplica && have.Current.Source == latest.VersionID)
		if !currentOK {
			if op := mk(latest, engine.ActionCopy); op != nil {
				if op.Pass == "" {
					op.Pass = "current-" + pass
				}
				ops = append(ops, op)
			}
		}
	}
	return ops
}

// Requests estimates the requests an op's copy makes, for a dry run: a
// delete marker is one; a single PUT is a GET and a PUT; a multipart copy
// is a one-byte GET, the create, a GET and an upload per part, the
// completion and a HEAD of the result.
func Requests(op *engine.Op, partSize, threshold int64) int {
	switch {
	case op.Action == engine.ActionDeleteMarker:
		return 1
	case op.Size <= threshold:
		return 2
	}
	parts := (op.Size + engine.PartSizeFor(op.Size, partSize) - 1) / engine.PartSizeFor(op.Size, partSize)
	return int(4 + 2*parts)
}

// Finding is one difference verify reports.
type Finding struct {
	Kind    string // missing, different, current, extra
	Key     string
	Version string // source version ("null" for the null version), when about one
	Detail  string
}

func (f Finding) String() string {
	switch f.Kind {
	case "missing":
		return fmt.Sprintf("missing    %s  version %s", f.Key, f.Version)
	case "different":
		return fmt.Sprintf("different  %s  version %s: %s", f.Key, f.Version, f.Detail)
	case "extra":
		return fmt.Sprintf("extra      %s  %s", f.Key, f.Detail)
	}
	return fmt.Sprintf("current    %s: %s", f.Key, f.Detail)
}

// Check compares one key: every selected source version has a replica with
// the same content, and the destination's current version holds the
// source's current one. A destination version whose source version was
// deleted is not a difference: version deletes are never propagated. A key
// only on the destination is reported as extra, which is not a failure.
// restoredFrom, when set, tells the replica version a source version was
// restored from (its s3replicad-restored-from), "" for none: failback
// records that replica as the restored version's (guarantee 18).
func Check(rule engine.Rule, p Pair, vs []engine.Version, have *Replicas, restoredFrom func(version string) string) []Finding {
	if len(p.Source) == 0 {
		n := 0
		for _, v := range p.Dest {
			if !v.DeleteMarker {
				n++
			}
		}
		if n == 0 {
			return nil
		}
		return []Finding{{Kind: "extra", Key: p.DestKey, Detail: fmt.Sprintf("%d destination versions, no source key %s", n, p.Key)}}
	}
	if len(vs) == 0 {
		return nil
	}
	var out []Finding
	onSource := map[string]bool{}
	for _, v := range vs {
		onSource[v.VersionID] = true
		if v.DeleteMarker {
			continue
		}
		r, ok := have.BySource[v.VersionID]
		if !ok && restoredFrom != nil {
			if from := restoredFrom(v.VersionID); from != "" {
				r, ok = have.ByID[from]
			}
		}
		if !ok {
			out = append(out, Finding{Kind: "missing", Key: p.Key, Version: nullName(v.VersionID)})
			continue
		}
		if same, why := SameContent(v, r); !same {
			out = append(out, Finding{Kind: "different", Key: p.Key, Version: nullName(v.VersionID), Detail: why})
		}
	}
	latest := vs[0]
	cur := have.Current
	switch {
	case latest.DeleteMarker:
		if rule.ReplicateDeleteMarkers && len(rule.Tags) == 0 && (cur == nil || !cur.DeleteMarker) {
			out = append(out, Finding{Kind: "current", Key: p.Key, Detail: "deleted on the source (delete marker) but not on the destination"})
		}
	case latest.IsLatest:
		switch {
		case cur == nil:
			// reported as missing above
		case cur.IsReplica && cur.Source == latest.VersionID:
		case restoredFrom != nil && !cur.DeleteMarker && restoredFrom(latest.VersionID) == cur.VersionID:
		case cur.IsReplica && !onSource[cur.Source] && !cur.DeleteMarker:
			// The current replica's source version was deleted there:
			// version deletes are never propagated.
		default:
			what := "a version that is not a replica"
			if cur.DeleteMarker {
				what = "a delete marker"
			} else if cur.IsReplica {
				what = "a replica of version " + nullName(cur.Source)
			}
			out = append(out, Finding{Kind: "current", Key: p.Key,
				Detail: fmt.Sprintf("the destination's current version is %s, the source's is %s", what, nullName(latest.VersionID))})
		}
	}
	return out
}

func nullName(v string) string {
	if v == "" {
		return "null"
	}
	return v
}

// Verify compares every version the rules select with its destination
// (verify), walking both listings side by side: fn hears every
// difference, listed every key's count of source versions looked at. It
// returns the HEAD requests it needed. A source version restored from a
// replica (failback) counts as replicated by that replica: its metadata
// says which.
func Verify(ctx context.Context, src Source, dest func(engine.Rule) Destination, header Header, rules []engine.Rule,
	fn func(engine.Rule, Finding), listed func(n int)) (int, error) {
	heads := 0
	for _, rule := range rules {
		if !rule.Enabled {
			continue
		}
		dst := dest(rule)
		err := Walk(ctx, src, dst, rule, "", func(pair Pair) error {
			if listed != nil {
				listed(len(pair.Source))
			}
			var have *Replicas
			vs, err := Selected(ctx, src, rule, pair.Key, pair.Source)
			if err == nil && len(vs) > 0 {
				have, err = Inspect(ctx, dst, rule.DestinationBucket, pair.DestKey, pair.Source, pair.Dest)
			}
			if err != nil {
				return err
			}
			if have != nil {
				heads += have.Heads
			}
			restoredFrom := func(version string) string {
				_, _, meta, err := headWithRetry(ctx, header, rule.SourceBucket, pair.Key, version)
				heads++
				if err != nil {
					return ""
				}
				return meta[engine.MetaRestoredFrom]
			}
			for _, f := range Check(rule, pair, vs, have, restoredFrom) {
				fn(rule, f)
			}
			return nil
		})
		if err != nil {
			return heads, fmt.Errorf("verify rule %s: %w", rule.ID, err)
		}
	}
	return heads, nil
}
