package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/s3replicad/s3replicad/checkpoint"
	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/internal/testenv"
)

// mixedWorkload writes a workload that exercises every kind of copy on the
// source and returns its events in order, without publishing them: small
// objects, a second version of some keys, a delete marker, and, with big,
// an object copied in parts. It returns the keys it wrote.
func (w *world) mixedWorkload(big bool) ([]testenv.Event, []string) {
	w.t.Helper()
	var evs []testenv.Event
	var keys []string
	for i := 0; i < 8; i++ {
		k := fmt.Sprintf("small/%02d", i)
		keys = append(keys, k)
		evs = append(evs, w.put(k, randBytes(w, 1000+i*9000)))
	}
	// Updates of the same keys, and a delete on top of one.
	evs = append(evs, w.put("small/01", randBytes(w, 2048)), w.put("small/02", randBytes(w, 70000)))
	dm, err := w.pub.DeleteMarker(w.ctx, w.src, w.srcBucket, "small/03")
	must(w.t, err)
	evs = append(evs, dm)
	if big {
		keys = append(keys, "big.bin")
		evs = append(evs, w.put("big.bin", randBytes(w, 11<<20+123)))
	}
	return evs, keys
}

func randBytes(w *world, n int) []byte {
	b := make([]byte, n)
	_, err := rand.Read(b)
	must(w.t, err)
	return b
}

// versionsOf lists a bucket's versions and delete markers of key, newest
// first, with whether each is the current one.
type listed struct {
	id       string
	marker   bool
	latest   bool
	size     int64
	modified time.Time
}

func listVersions(w *world, c *s3.Client, bucket, key string) ([]listed, error) {
	var out []listed
	p := s3.NewListObjectVersionsPaginator(c, &s3.ListObjectVersionsInput{Bucket: &bucket, Prefix: &key})
	for p.HasMorePages() {
		page, err := p.NextPage(w.ctx)
		if err != nil {
			return nil, err
		}
		for _, v := range page.Versions {
			if aws.ToString(v.Key) == key {
				out = append(out, listed{id: aws.ToString(v.VersionId), latest: aws.ToBool(v.IsLatest), size: aws.ToInt64(v.Size), modified: aws.ToTime(v.LastModified)})
			}
		}
		for _, m := range page.DeleteMarkers {
			if aws.ToString(m.Key) == key {
				out = append(out, listed{id: aws.ToString(m.VersionId), marker: true, latest: aws.ToBool(m.IsLatest), modified: aws.ToTime(m.LastModified)})
			}
		}
	}
	return out, nil
}

func digest(w *world, c *s3.Client, bucket, key, version string) (string, error) {
	in := &s3.GetObjectInput{Bucket: &bucket, Key: &key}
	if version != "" && version != "null" {
		in.VersionId = &version
	}
	out, err := c.GetObject(w.ctx, in)
	if err != nil {
		return "", err
	}
	defer out.Body.Close()
	h := sha256.New()
	if _, err := io.Copy(h, out.Body); err != nil {
		return "", err
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}

// missingVersion is a source version (or delete marker) with no replica.
type missingVersion struct {
	key, version string
	marker       bool
}

// replicaProblems compares the destination with the source for keys, as
// strictly as the contract asks, and lists what is wrong (nothing when the
// destination is an exact replica):
//   - exactly one destination version per source version, carrying its id;
//   - identical bytes;
//   - each key's current destination version is the source's current one;
//   - one destination delete marker per source delete marker (the rules of
//     these tests replicate them) and the marker current where it is on
//     the source.
//
// Versions with no replica at all are returned apart: guarantee 4 lets an
// older version whose event came after a newer one was written be
// superseded, which the caller checks in the state file.
func replicaProblems(w *world, keys []string) ([]string, []missingVersion) {
	var problems []string
	var missing []missingVersion
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	for _, key := range keys {
		src, err := listVersions(w, w.src, w.srcBucket, key)
		if err != nil {
			bad("%s: list source: %v", key, err)
			continue
		}
		dst, err := listVersions(w, w.dst, w.dstBucket, key)
		if err != nil {
			bad("%s: list destination: %v", key, err)
			continue
		}
		replicas := map[string][]string{} // source version -> destination versions
		dstMarkers := 0
		var dstCurrent *listed
		var dstCurrentSource string
		for i, v := range dst {
			if v.latest {
				dstCurrent = &dst[i]
			}
			if v.marker {
				dstMarkers++
				continue
			}
			head, err := w.dst.HeadObject(w.ctx, &s3.HeadObjectInput{Bucket: &w.dstBucket, Key: &key, VersionId: &v.id})
			if err != nil {
				bad("%s: head destination %s: %v", key, v.id, err)
				continue
			}
			sv := head.Metadata["s3replicad-source-version-id"]
			if sv == "" {
				bad("%s: destination version %s is not a replica", key, v.id)
			}
			replicas[sv] = append(replicas[sv], v.id)
			if v.latest {
				dstCurrentSource = sv
			}
		}
		var srcMarkers []listed
		for _, v := range src {
			if v.marker {
				srcMarkers = append(srcMarkers, v)
				if v.latest && (dstCurrent == nil || !dstCurrent.marker) {
					bad("%s: deleted on the source (marker %s current) but not on the destination", key, v.id)
				}
				continue
			}
			id := v.id
			if id == "" {
				id = "null"
			}
			got := replicas[id]
			switch {
			case len(got) == 0:
				if v.latest {
					bad("%s: the current source version %s has no replica", key, id)
				} else {
					missing = append(missing, missingVersion{key: key, version: v.id})
				}
				continue
			case len(got) > 1:
				bad("%s: source version %s has %d replicas: %v", key, id, len(got), got)
			}
			sd, err1 := digest(w, w.src, w.srcBucket, key, id)
			dd, err2 := digest(w, w.dst, w.dstBucket, key, got[0])
			if err1 != nil || err2 != nil {
				bad("%s: read %s: %v %v", key, id, err1, err2)
			} else if sd != dd {
				bad("%s: replica %s of %s has other bytes", key, got[0], id)
			}
			if v.latest && dstCurrentSource != id {
				bad("%s: current version on the destination replicates %q, the source's current is %s", key, dstCurrentSource, id)
			}
			delete(replicas, id)
		}
		for sv, ids := range replicas {
			bad("%s: destination versions %v replicate %s, which the source does not have", key, ids, sv)
		}
		switch {
		case dstMarkers > len(srcMarkers):
			bad("%s: %d delete markers on the destination, %d on the source", key, dstMarkers, len(srcMarkers))
		case dstMarkers < len(srcMarkers):
			// Which marker went unreplicated cannot be read off the
			// destination: the state file tells (see checkSuperseded).
			for _, m := range srcMarkers[:len(srcMarkers)-dstMarkers] {
				missing = append(missing, missingVersion{key: key, version: m.id, marker: true})
			}
		}
	}
	return problems, missing
}

// statusCounts runs `status -json` and returns its counts.
func (w *world) statusCounts() (map[string]int64, error) {
	out, errOut, code := w.cli("status", "-json")
	if code != 0 {
		return nil, fmt.Errorf("status exit %d: %s", code, errOut)
	}
	var st struct {
		Counts map[string]int64 `json:"counts"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil, fmt.Errorf("status -json: %v: %s", err, out)
	}
	return st.Counts, nil
}

// waitExact waits until the destination is an exact replica of the source
// for keys, the state file holds nothing unfinished, failed or skipped and
// the queue is empty, and returns how long that took. It fails the test with what is still
// wrong when within does not suffice.
func (w *world) waitExact(keys []string, within time.Duration) time.Duration {
	w.t.Helper()
	took, missing := w.waitReplica(keys, within)
	if len(missing) > 0 {
		w.t.Fatalf("%d source versions have no replica, e.g. %s@%s", len(missing), missing[0].key, missing[0].version)
	}
	return took
}

// waitReplica is waitExact that lets source versions without a replica
// through, for the caller to check that each was superseded.
func (w *world) waitReplica(keys []string, within time.Duration) (time.Duration, []missingVersion) {
	w.t.Helper()
	start := time.Now()
	var last []string
	for time.Since(start) < within {
		var missing []missingVersion
		last, missing = replicaProblems(w, keys)
		if len(last) == 0 {
			counts, err := w.statusCounts()
			switch {
			case err != nil:
				last = []string{err.Error()}
			case counts["pending"]+counts["in_flight"] > 0:
				last = []string{fmt.Sprintf("state: %d pending, %d in flight", counts["pending"], counts["in_flight"])}
			case counts["failed"] > 0 || counts["skipped"] > 0:
				w.t.Fatalf("%d operations failed and %d were skipped: %v", counts["failed"], counts["skipped"], counts)
			case w.queueDepth() > 0:
				// A message a killed daemon had received comes back only
				// after the visibility timeout.
				last = []string{fmt.Sprintf("%d messages still in the queue", w.queueDepth())}
			default:
				return time.Since(start), missing
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	slices.Sort(last)
	w.t.Fatalf("not an exact replica %v after the fault ended:\n  %s", within, strings.Join(last, "\n  "))
	return 0, nil
}

// checkSuperseded opens the state file (the daemon stopped) and requires
// every version in missing to have been recorded as superseded: an older
// version whose event came after a newer one was written (guarantee 4).
// Delete markers are counted per key.
func (w *world) checkSuperseded(missing []missingVersion) {
	w.t.Helper()
	st, err := checkpoint.Open(filepath.Join(w.dir, "state"), checkpoint.Options{ReadOnly: true})
	must(w.t, err)
	defer st.Close()
	markers := map[string]int{}
	for _, m := range missing {
		if m.marker {
			markers[m.key]++
			continue
		}
		ops, err := st.OpsOf("all", w.srcBucket, m.key, m.version)
		must(w.t, err)
		if len(ops) != 1 || ops[0].State != engine.Superseded {
			w.t.Errorf("%s@%s has no replica and was not superseded: %v", m.key, m.version, ops)
		}
	}
	for key, n := range markers {
		src, err := listVersions(w, w.src, w.srcBucket, key)
		must(w.t, err)
		superseded := 0
		replicas := map[string]bool{}
		for i := len(src) - 1; i >= 0; i-- { // oldest first
			v := src[i]
			if !v.marker {
				continue
			}
			ops, err := st.OpsOf("all", w.srcBucket, key, v.id)
			must(w.t, err)
			if len(ops) != 1 {
				continue
			}
			// versitygw and MinIO, unlike S3, make no marker when the key
			// has no version on the destination (an earlier version
			// superseded): the delete then returns no version id, and the
			// key is absent there as it is on the source. MinIO makes none
			// either on top of a marker (the version between them
			// superseded): the delete returns that marker's id.
			if ops[0].State == engine.Superseded || ops[0].State == engine.Completed && (ops[0].Replica == "" || replicas[ops[0].Replica]) {
				superseded++
			}
			replicas[ops[0].Replica] = true
		}
		if superseded != n {
			w.t.Errorf("%s: %d delete markers have no replica, %d were superseded", key, n, superseded)
			w.dumpKey(st, key)
		}
	}
}

// dumpKey logs a key's versions on both sides and its ops, for a failure.
func (w *world) dumpKey(st *checkpoint.Store, key string) {
	src, _ := listVersions(w, w.src, w.srcBucket, key)
	dst, _ := listVersions(w, w.dst, w.dstBucket, key)
	for _, v := range src {
		ops, _ := st.OpsOf("all", w.srcBucket, key, v.id)
		line := fmt.Sprintf("source %s marker=%v latest=%v %s:", v.id, v.marker, v.latest, v.modified.Format("15:04:05.000"))
		for _, op := range ops {
			line += fmt.Sprintf(" [%s seq=%d replica=%s finished=%s reason=%q]", op.State, op.Seq, op.Replica, op.Finished.Format("15:04:05.000"), op.Reason)
		}
		w.t.Log(line)
	}
	for _, v := range dst {
		w.t.Logf("destination %s marker=%v latest=%v %s", v.id, v.marker, v.latest, v.modified.Format("15:04:05.000"))
	}
}
