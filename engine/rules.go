package engine

import (
	"sort"
	"strings"
)

// Rule selects source versions and says where they go.
type Rule struct {
	ID                     string
	Priority               int
	Enabled                bool
	SourceBucket           string
	Prefix                 string
	Tags                   map[string]string
	Destination            string
	DestinationBucket      string
	DestinationPrefix      string
	StorageClass           string
	ReplicateDeleteMarkers bool
	// Restore marks the rule of a `restore`: it copies replica versions
	// back, writing their user metadata without the replicator's own
	// (s3replicad-*) and naming the replica they came from instead.
	Restore bool
}

// DestKey is the key a source key is written to.
func (r *Rule) DestKey(key string) string { return r.DestinationPrefix + key }

// NeedsTags reports whether the rule's filter reads object tags.
func (r *Rule) NeedsTags() bool { return len(r.Tags) > 0 }

func (r *Rule) matchesKey(bucket, key string) bool {
	return r.Enabled && r.SourceBucket == bucket && strings.HasPrefix(key, r.Prefix)
}

func (r *Rule) matchesTags(tags map[string]string) bool {
	for k, v := range r.Tags {
		if got, ok := tags[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Rules is a rule set, kept sorted by priority (highest first, then ID) so
// that the first match per destination bucket is the winner.
type Rules []Rule

// NewRules sorts a copy of rs by priority.
func NewRules(rs []Rule) Rules {
	out := append(Rules(nil), rs...)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Priority != out[j].Priority {
			return out[i].Priority > out[j].Priority
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// ByID returns the rule with the given ID.
func (rs Rules) ByID(id string) (*Rule, bool) {
	for i := range rs {
		if rs[i].ID == id {
			return &rs[i], true
		}
	}
	return nil, false
}

// Candidates returns the enabled rules whose bucket and prefix match.
func (rs Rules) Candidates(bucket, key string) []*Rule {
	var out []*Rule
	for i := range rs {
		if rs[i].matchesKey(bucket, key) {
			out = append(out, &rs[i])
		}
	}
	return out
}

// Select picks, for every destination bucket, the highest-priority
// candidate whose tag filter matches. tags is called at most once, and only
// when a candidate filters on tags; an error from it is returned as is.
func Select(cands []*Rule, tags func() (map[string]string, error)) ([]*Rule, error) {
	var (
		fetched bool
		have    map[string]string
		taken   = map[string]bool{}
		out     []*Rule
	)
	for _, r := range cands {
		target := r.Destination + "\x00" + r.DestinationBucket
		if taken[target] {
			continue
		}
		if r.NeedsTags() {
			if !fetched {
				t, err := tags()
				if err != nil {
					return nil, err
				}
				have, fetched = t, true
			}
			if !r.matchesTags(have) {
				continue
			}
		}
		taken[target] = true
		out = append(out, r)
	}
	return out, nil
}
