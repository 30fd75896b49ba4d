package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/s3replicad/s3replicad/checkpoint"
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
	markers      int // delete markers missing (version names them)
}

// replicaProblems compares the destination with the source for keys, as
// strictly as the contract asks, and lists what is wrong (nothing when the
// destination is an exact replica):
//   - every source version has a replica carrying its id, with identical
//     bytes (complete history: guarantee 4);
//   - each key's current destination version is the source's current one;
//   - a destination delete marker per source delete marker (the rules of
//     these tests replicate them), the marker current where it is on the
//     source;
//   - no destination version that replicates nothing the source has.
//
// It also returns each key's tally: replicas beyond the first of a source
// version, and delete markers beyond (or short of) the source's.
// Guarantees 3 and 4 allow one extra per late version (the newest put back
// on top of it), which the caller compares with the daemon's count of late
// versions: the listing cannot tell where a delete marker sits among the
// versions.
// Versions with no replica at all are returned apart, for the caller to
// report (null versions replaced in place may be superseded).
func replicaProblems(w *world, keys []string) ([]string, []missingVersion, tallies) {
	var problems []string
	var missing []missingVersion
	tally := tallies{}
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
		var dstCurrent *listed
		var dstCurrentSource string
		dstMarkers := 0
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
		srcMarkers := 0
		for _, v := range src {
			if v.marker {
				srcMarkers++
				if v.latest && (dstCurrent == nil || !dstCurrent.marker) {
					bad("%s: deleted on the source (marker %s current) but not on the destination", key, v.id)
				}
				continue
			}
			id := nullName(v.id)
			got := replicas[id]
			if len(got) == 0 {
				if v.latest {
					bad("%s: the current source version %s has no replica", key, id)
				} else {
					missing = append(missing, missingVersion{key: key, version: v.id})
				}
				continue
			}
			if len(got) > 1 {
				t := tally[key]
				t.copies += len(got) - 1
				tally[key] = t
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
		if dstMarkers < srcMarkers {
			missing = append(missing, missingVersion{key: key, version: fmt.Sprintf("(%d of %d delete markers)", srcMarkers-dstMarkers, srcMarkers), markers: srcMarkers - dstMarkers})
		}
		if dstMarkers != srcMarkers {
			t := tally[key]
			t.markers = dstMarkers - srcMarkers
			tally[key] = t
		}
	}
	return problems, missing, tally
}

// tally is what one key's destination holds beyond one replica of each
// source version.
type tally struct {
	copies  int // replicas beyond the first of a source version
	markers int // delete markers beyond the source's (negative: fewer)
}

type tallies map[string]tally

// extra is the extra copies of every key: replicas, and delete markers
// beyond the source's.
func (ts tallies) extra() int {
	n := 0
	for _, t := range ts {
		n += t.copies + max(t.markers, 0)
	}
	return n
}

// ledger checks key by key that the destination's tally is what the
// daemons' logs account for: one extra copy (or delete marker) per late
// version, and one delete marker fewer per marker the destination did not
// make (MinIO makes none over a marker; MinIO and versitygw none on a key
// with no version). It returns what does not add up.
func ledger(ts tallies, keys []string, logs []string) []string {
	late := loggedPerKey(logs, "late version written")
	notMade := loggedPerKey(logs, "made no second delete marker", "made no delete marker")
	var bad []string
	for _, key := range keys {
		t := ts[key]
		if got, want := t.copies+t.markers+notMade[key], late[key]; got != want {
			bad = append(bad, fmt.Sprintf("%s: %d extra copies, %+d delete markers and %d markers the destination did not make, for %d late versions: each late version puts exactly one on top",
				key, t.copies, t.markers, notMade[key], want))
		}
	}
	return bad
}

// loggedPerKey counts, per key, the distinct operations (key and version)
// of log lines that contain one of msgs: an operation killed after its
// line may log it again when it resumes. Lines of operations without a
// version id are left out.
func loggedPerKey(logs []string, msgs ...string) map[string]int {
	seen := map[string]bool{}
	out := map[string]int{}
	for _, text := range logs {
		for _, line := range strings.Split(text, "\n") {
			if !slices.ContainsFunc(msgs, func(m string) bool { return strings.Contains(line, m) }) {
				continue
			}
			var key, version string
			for _, f := range strings.Fields(line) {
				if v, ok := strings.CutPrefix(f, "key="); ok {
					key = v
				}
				if v, ok := strings.CutPrefix(f, "version="); ok {
					version = v
				}
			}
			if version == "" || version == `""` {
				// A delete of a key the source had no version of: the
				// source made no marker either.
				continue
			}
			if !seen[key+"@"+version] {
				seen[key+"@"+version] = true
				out[key]++
			}
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
	took, missing, _ := w.waitReplica(keys, within)
	if len(missing) > 0 {
		w.t.Fatalf("%d source versions have no replica, e.g. %s@%s", len(missing), missing[0].key, missing[0].version)
	}
	return took
}

// waitReplica is waitExact that lets source versions without a replica
// through, for the caller to check that each was superseded.
func (w *world) waitReplica(keys []string, within time.Duration) (time.Duration, []missingVersion, tallies) {
	w.t.Helper()
	return w.waitReplicaLate(keys, within, func() int { return int(w.lateVersions()) })
}

func logsOf(runs []*daemon) []string {
	var out []string
	for _, d := range runs {
		out = append(out, d.logs.String())
	}
	return out
}

// versionsMissing keeps the versions of missing, leaving out delete
// markers, which the ledger accounts for.
func versionsMissing(missing []missingVersion) []missingVersion {
	var out []missingVersion
	for _, m := range missing {
		if m.markers == 0 {
			out = append(out, m)
		}
	}
	return out
}

// waitReplicaLate is waitReplica with late versions counted by late.
func (w *world) waitReplicaLate(keys []string, within time.Duration, lateCount func() int) (time.Duration, []missingVersion, tallies) {
	w.t.Helper()
	start := time.Now()
	var last []string
	for time.Since(start) < within {
		// The daemon's quiet is read before the replica is listed: what is
		// listed after a quiet moment is final (read the other way round,
		// a version written between the two reads would count as missing).
		// The queue is read before the state: a message leaves the queue
		// only once its operations are recorded, so an empty queue and
		// then nothing unfinished means nothing is left to do. (Read the
		// other way round, a message recorded and deleted between the two
		// reads would go unseen.) The queue counts the messages in flight,
		// a killed daemon's too: they come back after the visibility
		// timeout.
		busy := ""
		queued := w.queueDepth()
		counts, err := w.statusCounts()
		switch {
		case err != nil:
			busy = err.Error()
		case queued > 0:
			busy = fmt.Sprintf("%d messages still in the queue", queued)
		case counts["pending"]+counts["in_flight"] > 0:
			busy = fmt.Sprintf("state: %d pending, %d in flight", counts["pending"], counts["in_flight"])
		case counts["failed"] > 0 || counts["skipped"] > 0:
			w.t.Fatalf("%d operations failed and %d were skipped: %v", counts["failed"], counts["skipped"], counts)
		}
		var missing []missingVersion
		var tally tallies
		last, missing, tally = replicaProblems(w, keys)
		if busy != "" {
			last = append(last, busy)
		}
		if len(last) == 0 {
			if extra, late := tally.extra(), lateCount(); extra > late {
				for key := range tally {
					w.t.Log(w.describeKey(key))
				}
				w.t.Fatalf("%d extra copies on the destination (%v), but only %d late versions that each allow one on top", extra, tally, late)
			}
			return time.Since(start), missing, tally
		}
		time.Sleep(250 * time.Millisecond)
	}
	slices.Sort(last)
	w.t.Fatalf("not an exact replica %v after the fault ended:\n  %s", within, strings.Join(last, "\n  "))
	return 0, nil, nil
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

// describeKey renders a key's versions on both sides, newest first (delete
// markers listed after the versions, as S3 lists them), for a failure
// message.
func (w *world) describeKey(key string) string {
	var b strings.Builder
	for _, side := range []struct {
		name   string
		c      *s3.Client
		bucket string
	}{{"source", w.src, w.srcBucket}, {"destination", w.dst, w.dstBucket}} {
		vs, err := listVersions(w, side.c, side.bucket, key)
		fmt.Fprintf(&b, "\n    %s %s (err %v):", side.name, key, err)
		for _, v := range vs {
			kind := "version"
			if v.marker {
				kind = "marker "
			}
			src := ""
			if !v.marker && side.name == "destination" {
				if head, err := side.c.HeadObject(w.ctx, &s3.HeadObjectInput{Bucket: &side.bucket, Key: &key, VersionId: &v.id}); err == nil {
					src = " replicates " + head.Metadata["s3replicad-source-version-id"]
				}
			}
			fmt.Fprintf(&b, "\n      %s %s latest=%v %s%s", kind, v.id, v.latest, v.modified.Format("15:04:05.000"), src)
		}
	}
	return b.String()
}
