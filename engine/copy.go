package engine

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/s3replicad/s3replicad/internal/retry"
)

// S3's multipart limits.
const (
	maxParts      = 10000
	minPartSize   = 5 << 20
	maxPartSize   = 5 << 30
	maxObjectSize = 5 << 40
)

// replicate writes op's version to the destination and returns the
// replica's version id.
func (e *Engine) replicate(ctx context.Context, rule *Rule, dest Destination, op *Op) (string, error) {
	if !op.WriteStarted.IsZero() {
		// A write may have landed before a crash or a lost response: look
		// for it rather than writing a second replica.
		of := op.ReplicaOf()
		of.Restored = rule.Restore
		last, _, err := e.cfg.State.LastWritten(ctx, op.DestKeyID())
		if err != nil {
			return "", fmt.Errorf("look for an earlier replica of %s: %w", op, err)
		}
		of.After = last.LastReplica
		v, found, err := dest.FindReplica(ctx, op.DestBucket, op.DestKey, op.Action, of, op.WriteStarted)
		if err != nil {
			return "", fmt.Errorf("look for an earlier replica of %s: %w", op, err)
		}
		if !found && of.After != 0 && op.Action == ActionCopy {
			// Below the last recorded write: this op's replica landed, and
			// then an older version's op, which did not know of it, wrote
			// over it. The replica is copied back on top (a late version's
			// copy on top, counted as one), not written a second time.
			of.After = 0
			if v, found, err = dest.FindReplica(ctx, op.DestBucket, op.DestKey, op.Action, of, op.WriteStarted); err != nil {
				return "", fmt.Errorf("look for an earlier replica of %s: %w", op, err)
			}
			if found && !op.Late() {
				// (A late op's replica stays below: what goes on top of it
				// was planned before it was written.)
				op.OnTop = v
			}
		}
		if found {
			e.log.Info("replica already written before a restart or timeout", "key", op.Key, "version", op.VersionID, "replica", v)
			if up, _ := e.cfg.State.LoadUpload(ctx, op.ID()); up != nil {
				_ = e.cfg.State.DeleteUpload(ctx, op.ID())
			}
			return v, nil
		}
	}
	if op.Action == ActionDeleteMarker {
		e.markWrite(op)
		v, err := dest.PutDeleteMarker(ctx, op.DestBucket, op.DestKey)
		if err != nil {
			return "", fmt.Errorf("put delete marker on %s/%s: %w", op.DestBucket, op.DestKey, err)
		}
		if v == "" {
			// MinIO and versitygw make no marker on a key with no version.
			// Should an older version of the key arrive late, its history
			// there shows no marker between it and what follows.
			e.m.markersMerged.WithLabelValues(op.Rule).Inc()
			e.log.Info("the destination made no delete marker: the key has no version there and reads as deleted already",
				"rule", op.Rule, "key", op.Key, "version", op.VersionID)
		} else if last, ok, err := e.cfg.State.LastWritten(ctx, op.DestKeyID()); err == nil && ok &&
			last.NewestMarker && last.LastReplica == VersionDigest(v) {
			// The store answered with the marker that was current (MinIO
			// makes no marker on a marker): one marker stands for two.
			e.m.markersMerged.WithLabelValues(op.Rule).Inc()
			e.log.Info("the destination made no second delete marker over its current one: that one stands for this one too",
				"rule", op.Rule, "key", op.Key, "version", op.VersionID, "replica", v)
		}
		return v, nil
	}
	if cp := e.copier(op.Dest, dest); cp != nil {
		v, err := e.copyInStore(ctx, rule, dest, cp, op)
		if err == nil || !e.fallBack(ctx, op, err) {
			return v, err
		}
	}
	if op.Size > e.cfg.MultipartThreshold {
		return e.copyMultipart(ctx, rule, dest, op, nil)
	}
	obj, err := e.cfg.Source.Get(ctx, op.source(""), nil)
	if err != nil {
		return "", fromSource(fmt.Errorf("get %s: %w", op, err))
	}
	if err := checkNotOverwritten(op, obj); err != nil {
		obj.Body.Close()
		return "", err
	}
	if v, done, err := e.failback(ctx, rule, dest, op, obj); done || err != nil {
		obj.Body.Close() // its bytes are on the destination already
		return v, err
	}
	if obj.Size > e.cfg.MultipartThreshold {
		// The event did not tell the size; now we know it is large.
		obj.Body.Close()
		e.learnSize(op, obj.Size)
		return e.copyMultipart(ctx, rule, dest, op, nil)
	}
	e.learnSize(op, obj.Size)
	buffers := e.buffers[op.Dest]
	buf, err := buffers.get(ctx, obj.Size)
	if err != nil {
		obj.Body.Close()
		return "", err
	}
	defer buffers.put(buf)
	n, crc, err := readFull(obj.Body, buf)
	obj.Body.Close()
	e.m.sourceBytes.Add(float64(n))
	if err != nil {
		return "", fromSource(fmt.Errorf("read %s: got %d of %d bytes: %w", op, n, obj.Size, err))
	}
	if err := e.readTags(ctx, op, obj); err != nil {
		return "", err
	}
	e.markWrite(op)
	v, err := dest.Put(ctx, op.DestBucket, op.DestKey, replicaMeta(rule, op, obj), Payload{Data: buf, CRC32C: crc})
	if err != nil {
		return "", fmt.Errorf("put %s/%s: %w", op.DestBucket, op.DestKey, err)
	}
	return v, nil
}

// errOverwritten means an op's null version was written over on the
// source since its event: the later write's own event copies what the key
// holds now, so this one is superseded rather than copied.
var errOverwritten = errors.New("the key was written again since this event (the null version is replaced in place); the later write's event copies its content")

// source is the source version op copies; pin, for a null version, is the
// ETag its reads must still find.
func (o *Op) source(pin string) VersionRef {
	r := VersionRef{Bucket: o.Bucket, Key: o.Key, VersionID: o.VersionID}
	if o.VersionID == "" {
		r.IfMatch = pin
	}
	return r
}

// checkNotOverwritten compares a null version read from the source with
// the write its event announced: a different ETag is a later write.
func checkNotOverwritten(op *Op, obj *Object) error {
	if op.VersionID == "" && op.ETag != "" && obj.ETag != "" && op.ETag != obj.ETag {
		return errOverwritten
	}
	return nil
}

// learnSize records a size that the event did not carry, keeping the
// bytes-pending gauge consistent.
func (e *Engine) learnSize(op *Op, size int64) {
	if op.Size == size || e.m.clusterMode {
		op.Size = size
		return
	}
	if op.Size > 0 {
		e.m.bytesPending.WithLabelValues(op.Rule).Sub(float64(op.Size))
	}
	op.Size = size
	if size > 0 {
		e.m.bytesPending.WithLabelValues(op.Rule).Add(float64(size))
	}
}

func (e *Engine) readTags(ctx context.Context, op *Op, obj *Object) error {
	if obj.TagCount == 0 {
		return nil
	}
	tags, err := e.cfg.Source.Tags(ctx, op.Bucket, op.Key, op.VersionID)
	if err != nil {
		return fromSource(fmt.Errorf("get tags of %s: %w", op, err))
	}
	obj.Tags = tags
	return nil
}

// markWrite notes, before each write to the destination, that op's version
// may be there from now on: a later attempt looks for the replica before
// writing again. The mark is not committed here, which would put a commit
// before every write; it is saved with the op's next state, and for every
// op still held when the engine stops cleanly. After a crash, every
// unfinished op is taken as marked (see load).
func (e *Engine) markWrite(op *Op) {
	op.State = InFlight
	if op.WriteStarted.IsZero() {
		op.WriteStarted = time.Now()
	}
}

// replicaMeta is what the replica carries: the source's headers, user
// metadata and tags, plus the source's version id and ETag.
func replicaMeta(rule *Rule, op *Op, obj *Object) ObjectMeta {
	m := obj.ObjectMeta
	m.Metadata = maps.Clone(obj.Metadata)
	if m.Metadata == nil {
		m.Metadata = map[string]string{}
	}
	if rule.Restore {
		// The original's metadata, and where it was restored from.
		maps.DeleteFunc(m.Metadata, func(k, _ string) bool { return strings.HasPrefix(strings.ToLower(k), MetaPrefix) })
		m.Metadata[MetaRestoredFrom] = op.VersionID
		m.StorageClass = rule.StorageClass
		return m
	}
	v := op.VersionID
	if v == "" {
		v = "null"
	}
	m.Metadata[MetaSourceVersion] = v
	if obj.ETag != "" {
		m.Metadata[MetaSourceETag] = obj.ETag
	}
	if op.Pass != "" {
		m.Metadata[MetaPass] = op.Pass
	}
	if op.Sequencer != "" {
		m.Metadata[MetaSourceSequencer] = op.Sequencer
	}
	if t := sourceTime(op, obj); !t.IsZero() {
		m.Metadata[MetaSourceLastModified] = t.UTC().Format(SourceTimeLayout)
	}
	m.StorageClass = rule.StorageClass
	return m
}

// SourceTimeLayout is how MetaSourceLastModified is written.
const SourceTimeLayout = "2006-01-02T15:04:05.000Z07:00"

// sourceTime is when the source version was written: its Last-Modified
// (to the second), unless the event's time is earlier, which a correct
// store never reports (Last-Modified is when the write began, the event
// when it ended) but one that dates an older version by the next write
// does; the event's time is to the millisecond.
func sourceTime(op *Op, obj *Object) time.Time {
	t := obj.LastModified
	if !op.EventTime.IsZero() && (t.IsZero() || op.EventTime.Before(t)) {
		t = op.EventTime
	}
	return t
}

// failback recognises a source object that `restore` wrote (it names the
// replica version it came from) and does not copy its bytes again: when
// that replica is the destination key's current version, it is recorded
// as this version's replica; otherwise it is made current by a copy inside
// the destination, as a replica of this version (guarantee 18). done is
// false when the object is not such a one, or its replica is not there
// (then it is copied as any other).
func (e *Engine) failback(ctx context.Context, rule *Rule, dest Destination, op *Op, obj *Object) (string, bool, error) {
	from := obj.Metadata[MetaRestoredFrom]
	if from == "" || op.Action != ActionCopy || rule.Restore {
		return "", false, nil
	}
	size, etag, _, err := dest.Head(ctx, op.DestBucket, op.DestKey, from)
	if err != nil {
		if c, _ := Classify(err); c == Transient {
			return "", false, fmt.Errorf("look for the replica %s that %s was restored from: %w", from, op, err)
		}
		return "", false, nil // not there (another bucket's, or deleted): copy
	}
	if size != obj.Size || singlePartETag(etag) && singlePartETag(obj.ETag) && etag != obj.ETag {
		return "", false, nil // not the same content: copy
	}
	cur, ok, err := dest.Current(ctx, op.DestBucket, op.DestKey)
	if err != nil {
		return "", false, fmt.Errorf("read the current version of %s/%s: %w", op.DestBucket, op.DestKey, err)
	}
	if ok && !cur.DeleteMarker && cur.VersionID == from {
		e.log.Info("restored object recognised: its replica is the destination's current version", "key", op.Key, "version", op.VersionID, "replica", from)
		return from, true, nil
	}
	cp, isCopier := e.cfg.Destinations[op.Dest].(ServerSideCopier)
	if !isCopier {
		return "", false, nil
	}
	if err := e.readTags(ctx, op, obj); err != nil {
		return "", false, err
	}
	e.markWrite(op)
	v, err := cp.Copy(ctx, VersionRef{Bucket: op.DestBucket, Key: op.DestKey, VersionID: from}, op.DestBucket, op.DestKey, replicaMeta(rule, op, obj))
	if errors.Is(err, ErrCopyUnsupported) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("copy the replica %s of restored %s inside the destination: %w", from, op, err)
	}
	e.log.Info("restored object recognised: its replica made current inside the destination", "key", op.Key, "version", op.VersionID, "replica", from, "copy", v)
	return v, true, nil
}

// singlePartETag tells an ETag that is the content's MD5.
func singlePartETag(etag string) bool { return etag != "" && !strings.Contains(etag, "-") }

// PartSizeFor returns the part size for an object: the configured size,
// grown so that the object fits in S3's 10,000 parts.
func PartSizeFor(size, configured int64) int64 {
	ps := max(configured, minPartSize)
	if need := (size + maxParts - 1) / maxParts; need > ps {
		const mib = 1 << 20
		ps = (need + mib - 1) / mib * mib
	}
	return min(ps, maxPartSize)
}

// stat reads a source version's headers, metadata and size with a
// one-byte ranged GET, which unlike HEAD also tells the tag count.
func (e *Engine) stat(ctx context.Context, op *Op) (*Object, error) {
	head, err := e.cfg.Source.Get(ctx, op.source(""), &ByteRange{0, 0})
	if err != nil {
		return nil, fromSource(fmt.Errorf("get %s: %w", op, err))
	}
	_, _ = io.Copy(io.Discard, head.Body)
	head.Body.Close()
	if err := checkNotOverwritten(op, head); err != nil {
		return nil, err
	}
	e.learnSize(op, head.Size)
	return head, nil
}

// copier returns the destination as a server-side copier when the
// configuration allows it and it has not refused.
func (e *Engine) copier(name string, dest Destination) ServerSideCopier {
	if ok := e.inStore[name]; ok == nil || !ok.Load() {
		return nil
	}
	cp, _ := dest.(ServerSideCopier)
	return cp
}

// copyInStore has the store copy op's version: CopyObject, or a multipart
// upload of UploadPartCopy parts for large objects.
func (e *Engine) copyInStore(ctx context.Context, rule *Rule, dest Destination, cp ServerSideCopier, op *Op) (string, error) {
	if op.Size > e.cfg.MultipartThreshold {
		return e.copyMultipart(ctx, rule, dest, op, cp)
	}
	head, err := e.stat(ctx, op)
	if err != nil {
		return "", err
	}
	if v, done, err := e.failback(ctx, rule, dest, op, head); done || err != nil {
		return v, err
	}
	if head.Size > e.cfg.MultipartThreshold {
		return e.copyMultipart(ctx, rule, dest, op, cp)
	}
	if err := e.readTags(ctx, op, head); err != nil {
		return "", err
	}
	e.markWrite(op)
	v, err := cp.Copy(ctx, op.source(head.ETag), op.DestBucket, op.DestKey, replicaMeta(rule, op, head))
	if err != nil {
		return "", fmt.Errorf("copy %s inside the store to %s/%s: %w", op, op.DestBucket, op.DestKey, err)
	}
	e.m.inStoreBytes.WithLabelValues(op.Dest).Add(float64(head.Size))
	return v, nil
}

// fallBack decides whether a failed server-side copy is tried again
// through the daemon. A refusal of the copy itself (the destination's
// credentials cannot read the source, or the store cannot copy) turns
// server-side copy off for the destination.
func (e *Engine) fallBack(ctx context.Context, op *Op, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	class, reason := Classify(err)
	if class != Permanent || reason == ReasonNoSuchBucket {
		return false
	}
	if reason == ReasonAccessDenied || errors.Is(err, ErrCopyUnsupported) {
		if e.inStore[op.Dest].CompareAndSwap(true, false) {
			e.log.Warn("server-side copy refused; copying through the daemon from now on. To copy inside the store, let the destination's credentials read the source bucket",
				"destination", op.Dest, "err", err)
		}
	}
	return true
}

func (e *Engine) copyMultipart(ctx context.Context, rule *Rule, dest Destination, op *Op, cp ServerSideCopier) (string, error) {
	head, err := e.stat(ctx, op)
	if err != nil {
		return "", err
	}
	if head.Size > maxObjectSize {
		return "", &Error{Class: Permanent, Reason: ReasonInvalid,
			Err: fmt.Errorf("%s has %d bytes, more than S3's 5 TiB object limit", op, head.Size)}
	}
	if v, done, err := e.failback(ctx, rule, dest, op, head); done || err != nil {
		return v, err
	}
	if err := e.readTags(ctx, op, head); err != nil {
		return "", err
	}
	up, err := e.resumeUpload(ctx, dest, op, head)
	if err != nil {
		return "", err
	}
	if up != nil && up.Checksum != "" {
		cp = nil // its parts must carry checksums, which only sent parts have
	}
	if up == nil {
		// Parts sent through the daemon carry their CRC32C; a store that
		// keeps it per part need not compute a checksum of its own.
		id, algo, err := dest.CreateMultipart(ctx, op.DestBucket, op.DestKey, replicaMeta(rule, op, head), cp == nil)
		if err != nil {
			return "", fmt.Errorf("create multipart upload for %s/%s: %w", op.DestBucket, op.DestKey, err)
		}
		up = &Upload{UploadID: id, PartSize: PartSizeFor(head.Size, e.cfg.PartSize), Size: head.Size, ETag: head.ETag, Checksum: algo}
		if err := e.cfg.State.SaveUpload(ctx, op.ID(), up); err != nil {
			_ = dest.AbortMultipart(context.WithoutCancel(ctx), op.DestBucket, op.DestKey, id)
			return "", fmt.Errorf("record upload: %w", err)
		}
	}
	if err := e.uploadParts(ctx, dest, cp, op, up); err != nil {
		if errors.Is(err, ErrChanged) && op.VersionID == "" {
			e.abandon(ctx, dest, op, up)
			return "", errOverwritten
		}
		if c, _ := Classify(err); c != Transient && ctx.Err() == nil {
			// It will not be resumed: do not leave the parts behind.
			e.abandon(ctx, dest, op, up)
		}
		return "", err
	}
	e.markWrite(op)
	parts := slices.Clone(up.Parts)
	slices.SortFunc(parts, func(a, b Part) int { return int(a.Number - b.Number) })
	var sum int64
	for i, p := range parts {
		sum += p.Size
		if up.Checksum == "" {
			parts[i].CRC32C = "" // the store keeps none to compare with
		}
	}
	if sum != up.Size {
		// Cannot happen unless the record is damaged: start over.
		e.abandon(ctx, dest, op, up)
		return "", &Error{Class: Transient, Reason: ReasonIntegrity,
			Err: fmt.Errorf("parts of %s add up to %d bytes, not %d; copying again", op, sum, up.Size)}
	}
	v, err := dest.CompleteMultipart(ctx, op.DestBucket, op.DestKey, up.UploadID, parts)
	if err != nil {
		if c, _ := Classify(err); c != Transient {
			e.abandon(ctx, dest, op, up)
		}
		return "", fmt.Errorf("complete multipart upload of %s/%s: %w", op.DestBucket, op.DestKey, err)
	}
	// The parts were each checked; check the whole object's size too.
	if size, _, _, err := dest.Head(ctx, op.DestBucket, op.DestKey, v); err != nil {
		e.log.Warn("cannot check the size of a completed multipart replica", "key", op.DestKey, "replica", v, "err", err)
	} else if size != up.Size {
		_ = e.cfg.State.DeleteUpload(ctx, op.ID())
		// Failed for the operator to see; `retry` writes a new replica
		// rather than finding this one.
		op.WriteStarted = time.Time{}
		return "", &Error{Class: Permanent, Reason: ReasonIntegrity,
			Err: fmt.Errorf("replica %s of %s has %d bytes, the source %d", v, op, size, up.Size)}
	}
	if err := e.cfg.State.DeleteUpload(ctx, op.ID()); err != nil {
		e.log.Warn("cannot forget finished upload", "err", err)
	}
	return v, nil
}

// resumeUpload returns the upload recorded for op, reconciled with the
// destination's list of parts, or nil when there is none to resume.
func (e *Engine) resumeUpload(ctx context.Context, dest Destination, op *Op, head *Object) (*Upload, error) {
	up, err := e.cfg.State.LoadUpload(ctx, op.ID())
	if err != nil || up == nil {
		return nil, err
	}
	if up.Size != head.Size || (up.ETag != "" && head.ETag != "" && up.ETag != head.ETag) {
		e.abandon(ctx, dest, op, up)
		return nil, nil
	}
	listed, err := dest.ListParts(ctx, op.DestBucket, op.DestKey, up.UploadID)
	if err != nil {
		if c, _ := Classify(err); c != Transient {
			// The upload is gone (aborted or expired): start over.
			_ = e.cfg.State.DeleteUpload(ctx, op.ID())
			return nil, nil
		}
		return nil, fmt.Errorf("list parts of upload %s: %w", up.UploadID, err)
	}
	have := map[int32]string{}
	for _, p := range listed {
		have[p.Number] = p.ETag
	}
	kept := up.Parts[:0]
	for _, p := range up.Parts {
		if etag, ok := have[p.Number]; ok && etag == p.ETag {
			kept = append(kept, p)
		}
	}
	up.Parts = kept
	e.log.Info("resuming multipart copy", "key", op.Key, "version", op.VersionID, "parts_done", len(kept))
	return up, nil
}

func (e *Engine) abandon(ctx context.Context, dest Destination, op *Op, up *Upload) {
	if err := dest.AbortMultipart(context.WithoutCancel(ctx), op.DestBucket, op.DestKey, up.UploadID); err != nil {
		e.log.Warn("abort multipart upload failed", "upload", up.UploadID, "err", err)
	}
	_ = e.cfg.State.DeleteUpload(ctx, op.ID())
}

// uploadParts sends the parts not yet done: copied inside the store when
// cp is set, otherwise read from the source into pooled buffers.
func (e *Engine) uploadParts(ctx context.Context, dest Destination, cp ServerSideCopier, op *Op, up *Upload) error {
	done := map[int32]bool{}
	for _, p := range up.Parts {
		done[p.Number] = true
	}
	nparts := int32((up.Size + up.PartSize - 1) / up.PartSize)
	if nparts == 0 {
		nparts = 1
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(e.cfg.PartConcurrency)
	for n := int32(1); n <= nparts; n++ {
		if done[n] {
			continue
		}
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			first := int64(n-1) * up.PartSize
			last := min(first+up.PartSize, up.Size) - 1
			size := last - first + 1
			part, err := e.sendPartRetrying(gctx, dest, cp, op, up, n, ByteRange{first, last})
			if err != nil {
				return err
			}
			part.Size = size
			mu.Lock()
			defer mu.Unlock()
			up.Parts = append(up.Parts, part)
			snapshot := *up
			snapshot.Parts = slices.Clone(up.Parts)
			if err := e.cfg.State.SaveUpload(ctx, op.ID(), &snapshot); err != nil {
				return fmt.Errorf("record part %d: %w", n, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if len(up.Parts) != int(nparts) {
		return errors.New("multipart copy incomplete")
	}
	return nil
}

// partAttempts is how many times a part is sent before its object's copy
// is given up for this round: a part sent twice is the same part, so a
// dropped connection costs one part, not every part in flight.
const partAttempts = 3

var partRetry = retry.Policy{Min: 200 * time.Millisecond, Max: 2 * time.Second, Attempts: partAttempts}

func (e *Engine) sendPartRetrying(ctx context.Context, dest Destination, cp ServerSideCopier, op *Op, up *Upload, n int32, r ByteRange) (Part, error) {
	for attempt := 1; ; attempt++ {
		part, err := e.sendPart(ctx, dest, cp, op, up, n, r)
		if err == nil || attempt == partAttempts || ctx.Err() != nil || errors.Is(err, ErrChanged) {
			return part, err
		}
		if c, _ := Classify(err); c != Transient {
			return part, err
		}
		e.log.Debug("part failed, sending it again", "key", op.Key, "part", n, "attempt", attempt, "err", err)
		if !retry.Sleep(ctx, partRetry.Backoff(attempt)) {
			return part, err
		}
	}
}

// sendPart writes part n, bytes r of the source version, and returns it.
func (e *Engine) sendPart(ctx context.Context, dest Destination, cp ServerSideCopier, op *Op, up *Upload, n int32, r ByteRange) (Part, error) {
	size := r.Last - r.First + 1
	if cp != nil && size > 0 {
		etag, err := cp.CopyPart(ctx, op.source(up.ETag), r, op.DestBucket, op.DestKey, up.UploadID, n)
		if err != nil {
			return Part{}, fmt.Errorf("copy part %d of %s inside the store: %w", n, op, err)
		}
		e.m.inStoreBytes.WithLabelValues(op.Dest).Add(float64(size))
		return Part{Number: n, ETag: etag}, nil
	}
	buffers := e.buffers[op.Dest]
	buf, err := buffers.get(ctx, size)
	if err != nil {
		return Part{}, err
	}
	defer buffers.put(buf)
	var crc uint32
	if size > 0 {
		obj, err := e.cfg.Source.Get(ctx, op.source(up.ETag), &r)
		if err != nil {
			return Part{}, fromSource(fmt.Errorf("get part %d of %s: %w", n, op, err))
		}
		var got int
		got, crc, err = readFull(obj.Body, buf)
		obj.Body.Close()
		e.m.sourceBytes.Add(float64(got))
		if err != nil {
			return Part{}, fromSource(fmt.Errorf("read part %d of %s: got %d of %d bytes: %w", n, op, got, size, err))
		}
	}
	etag, err := dest.UploadPart(ctx, op.DestBucket, op.DestKey, up.UploadID, n, Payload{Data: buf, CRC32C: crc})
	if err != nil {
		return Part{}, fmt.Errorf("upload part %d of %s/%s: %w", n, op.DestBucket, op.DestKey, err)
	}
	return Part{Number: n, ETag: etag, CRC32C: CRC32CBase64(crc)}, nil
}

// CRC32CBase64 is a CRC32C as S3 headers carry it.
func CRC32CBase64(crc uint32) string {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], crc)
	return base64.StdEncoding.EncodeToString(b[:])
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// readFull fills buf from r and returns the CRC32C of what it read,
// computed a slice at a time right after each slice arrives: summing the
// whole buffer afterwards would read it back from memory.
func readFull(r io.Reader, buf []byte) (int, uint32, error) {
	const slice = 256 << 10
	var crc uint32
	n := 0
	for n < len(buf) {
		m, err := io.ReadFull(r, buf[n:min(n+slice, len(buf))])
		crc = crc32.Update(crc, castagnoli, buf[n:n+m])
		n += m
		if err != nil {
			return n, crc, err
		}
	}
	return n, crc, nil
}
