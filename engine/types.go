// Package engine is the replication domain: it turns change notifications
// into durable operations, schedules them per destination key in sequencer
// order, and copies object versions between stores. It talks to the outside
// world only through the interfaces declared here; adapters live beneath it.
package engine

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"time"

	"github.com/s3replicad/s3replicad/engine/event"
)

// State is where an operation is in its life.
type State string

const (
	Pending    State = "pending"
	InFlight   State = "in_flight"
	Completed  State = "completed"
	Failed     State = "failed"
	Skipped    State = "skipped"
	Superseded State = "superseded"
)

// States lists every state in the order status reports them.
var States = []State{Pending, InFlight, Completed, Failed, Skipped, Superseded}

// Terminal reports whether no more work will be done on an operation in
// this state (failed ones come back only through retry).
func (s State) Terminal() bool {
	return s == Completed || s == Skipped || s == Superseded || s == Failed
}

// Action is what an operation writes on the destination.
type Action string

const (
	ActionCopy         Action = "copy"
	ActionDeleteMarker Action = "delete-marker"
)

// Origin says where an operation came from; live events go before backfill.
type Origin string

const (
	OriginEvent    Origin = "event"
	OriginBackfill Origin = "backfill"
)

// Op is one source version to be written to one destination. It is the unit
// that is recorded in the state file before its queue message is deleted.
type Op struct {
	Rule       string `json:"rule"`
	Bucket     string `json:"bucket"`
	Key        string `json:"key"`
	VersionID  string `json:"version_id"`
	Sequencer  string `json:"sequencer,omitempty"`
	ETag       string `json:"etag,omitempty"`
	Size       int64  `json:"size"` // -1 when not known yet
	Action     Action `json:"action"`
	Origin     Origin `json:"origin"`
	Dest       string `json:"dest"`
	DestBucket string `json:"dest_bucket"`
	DestKey    string `json:"dest_key"`
	// Pass distinguishes a deliberate second copy of a version (backfill
	// repairing a replica deleted or overwritten on the destination) from
	// the op that copied it first.
	Pass string `json:"pass,omitempty"`
	// Seq is the arrival order the state file gave the op when recording
	// it: ops without sequencers keep it across restarts.
	Seq uint64 `json:"seq,omitempty"`

	EventTime time.Time `json:"event_time,omitempty"`
	Recorded  time.Time `json:"recorded"`

	State       State     `json:"state"`
	Attempts    int       `json:"attempts,omitempty"`
	NextAttempt time.Time `json:"next_attempt,omitempty"`
	// WriteStarted is set before the first write to the destination: an op
	// that has it may already have a replica there, so the copier looks for
	// one before writing again. It is saved with the op's next state and at
	// a clean stop; after a crash every unfinished op gets it.
	WriteStarted time.Time `json:"write_started,omitempty"`
	Reason       string    `json:"reason,omitempty"`
	LastError    string    `json:"last_error,omitempty"`
	Replica      string    `json:"replica_version_id,omitempty"`
	Finished     time.Time `json:"finished,omitempty"`

	// OnTop is set on a late op, whose version is older than the newest
	// already written to its key (its event came after a newer one's): it
	// is written all the same, so that the replica's history misses no
	// version, and then OnTop, the destination version holding the newest,
	// is copied once more on top so that it stays current (guarantee 4).
	// OnTopMarker puts a delete marker on top instead. While such an op is
	// in flight, Replica set means the late version is written.
	OnTop       string `json:"on_top,omitempty"`
	OnTopMarker bool   `json:"on_top_marker,omitempty"`
	// OnTopReplica is the destination version the copy on top made.
	OnTopReplica string `json:"on_top_replica,omitempty"`
	// OnTopUnrecorded says the newest on the destination was not the key's
	// recorded last replica: a newer op wrote it and stopped before
	// recording it (kill -9). The copy on top is then that op's version
	// too, and the key's last replica stays below it, so that the op finds
	// the copy when it looks for its replica instead of writing another.
	OnTopUnrecorded bool `json:"on_top_unrecorded,omitempty"`

	// failSide is where the op last failed (sourceSide or its
	// destination), in memory only: a success there wakes it.
	failSide string
}

// ID identifies an op: one per rule and source version. Every write of
// an unversioned key has the null version; its sequencer tells them apart.
func (o *Op) ID() string {
	id := OpID(o.Rule, o.Bucket, o.Key, o.VersionID)
	if o.VersionID == "" && o.Sequencer != "" {
		id += "\x00@" + o.Sequencer
	}
	if o.Pass != "" {
		id += "\x00" + o.Pass
	}
	return id
}

// OpID builds the identifier of the op for a rule and a source version.
func OpID(rule, bucket, key, version string) string {
	return rule + "\x00" + bucket + "\x00" + version + "\x00" + key
}

// DestKeyID identifies the destination key an op writes: ordering and
// "never regress" are enforced per destination key.
func (o *Op) DestKeyID() string { return o.Dest + "\x00" + o.DestBucket + "\x00" + o.DestKey }

// Since is the time the op's age counts from.
func (o *Op) Since() time.Time {
	if !o.EventTime.IsZero() {
		return o.EventTime
	}
	return o.Recorded
}

// Late reports whether op is a late version with something to put back
// on top of it.
func (o *Op) Late() bool { return o.OnTop != "" || o.OnTopMarker }

func (o *Op) String() string {
	v := o.VersionID
	if v == "" {
		v = "null"
	}
	return fmt.Sprintf("%s/%s@%s", o.Bucket, o.Key, v)
}

// KeyState is what was last written to a destination key: the newest
// source version by sequencer, and the last write's delete marker.
type KeyState struct {
	Sequencer string
	// Version is the VersionDigest of the newest source version written.
	Version uint64
	// LastReplica is the VersionDigest of the destination version the last
	// recorded write to the key made. Writes to a key go one at a time and
	// the key is held until its write is recorded, so a replica whose
	// record was lost (a crash, a lost answer) can only be newer than it:
	// looking for one stops there.
	LastReplica uint64
	// NewestMarker says the newest source version written is a delete
	// marker: a late version written where the destination has nothing
	// (a store that makes no marker on a key without versions) gets a
	// marker put on top.
	NewestMarker bool
}

// VersionDigest is a 64-bit digest (FNV-1a) of a version id: what the
// state file keeps per key to tell "this version was written".
func VersionDigest(v string) uint64 {
	h := fnv.New64a()
	_, _ = io.WriteString(h, v)
	return h.Sum64()
}

// StateStore is the durable record of operations: the bbolt state file of
// one node, or the table a cluster shares. Every method takes a context:
// a shared store is a network service.
type StateStore interface {
	// Record stores the ops that are not in the store yet, numbering them
	// in arrival order (Op.Seq), and returns them; ops already recorded
	// (duplicate events) are left as they are. It returns only after the
	// new ops are durable.
	Record(ctx context.Context, ops []*Op) ([]*Op, error)
	// Save durably writes an op's new state. When the op completed, the
	// destination key's KeyState moves forward in the same transaction.
	Save(ctx context.Context, op *Op) error
	// SaveAll durably writes the state of many ops at once.
	SaveAll(ctx context.Context, ops []*Op) error
	// BeginRun durably marks the store as in use by a running engine and
	// reports whether the previous run never called EndRun (a crash).
	BeginRun(ctx context.Context) (crashed bool, err error)
	// EndRun records a clean stop.
	EndRun(ctx context.Context) error
	// SuspectThrough is the highest Seq recorded when a crash was found:
	// unfinished ops up to it may have been written without their write
	// mark being saved.
	SuspectThrough(ctx context.Context) (uint64, error)
	// LastWritten returns the KeyState of a destination key.
	LastWritten(ctx context.Context, destKeyID string) (KeyState, bool, error)
	// Pending returns up to limit unfinished ops of one origin recorded
	// after Seq after, in arrival order, and whether there are more.
	Pending(ctx context.Context, origin Origin, after uint64, limit int) ([]*Op, bool, error)
	// OldestPending returns the earliest Since() of the unfinished ops.
	OldestPending(ctx context.Context) (time.Time, bool, error)
	// Counts returns the unfinished ops and their bytes, by rule.
	Counts(ctx context.Context) (ops, bytes map[string]int64, err error)
	// Retry puts failed ops (all, or those of the given source keys) back
	// to pending and returns them.
	Retry(ctx context.Context, keys []string) ([]*Op, error)
	// Upload state of resumable multipart copies.
	LoadUpload(ctx context.Context, opID string) (*Upload, error)
	SaveUpload(ctx context.Context, opID string, u *Upload) error
	DeleteUpload(ctx context.Context, opID string) error
}

// Upload is a multipart upload the copier created, with the parts it has
// finished, so that a copy interrupted by a crash resumes where it stopped.
type Upload struct {
	UploadID string `json:"upload_id"`
	PartSize int64  `json:"part_size"`
	Size     int64  `json:"size"`
	ETag     string `json:"source_etag"`
	// Checksum is the algorithm the store keeps for each part ("CRC32C"),
	// empty when the upload was created without one: the completion then
	// lists no part checksums.
	Checksum string `json:"checksum,omitempty"`
	Parts    []Part `json:"parts"`
}

// Cursor is a backfill's listing position for one rule, checkpointed so
// that an interrupted backfill resumes where it stopped.
type Cursor struct {
	KeyMarker     string    `json:"key_marker"`
	VersionMarker string    `json:"version_marker"`
	Done          bool      `json:"done"`
	Listed        int64     `json:"listed"`
	Submitted     int64     `json:"submitted"`
	Updated       time.Time `json:"updated"`
}

// Part is one finished part of a multipart upload.
type Part struct {
	Number int32  `json:"n"`
	ETag   string `json:"etag"`
	Size   int64  `json:"size"`
	// CRC32C is the part's checksum as sent (base64 of the big-endian
	// value); empty for parts copied inside the store.
	CRC32C string `json:"crc32c,omitempty"`
}

// Message is one message received from the queue.
type Message struct {
	ID           string
	Body         []byte
	ReceiveCount int
	Handle       string
}

// Queue is where change notifications arrive.
type Queue interface {
	Receive(ctx context.Context) ([]Message, error)
	Delete(ctx context.Context, msgs []Message) error
	ExtendVisibility(ctx context.Context, msgs []Message, d time.Duration) error
}

// ObjectMeta is what travels with an object version besides its bytes.
type ObjectMeta struct {
	ContentType        string
	ContentEncoding    string
	ContentDisposition string
	ContentLanguage    string
	CacheControl       string
	Expires            string // as sent by the source (an HTTP date)
	Metadata           map[string]string
	Tags               map[string]string
	StorageClass       string
}

// Object is a source version being read.
type Object struct {
	ObjectMeta
	Size         int64 // whole object size
	ETag         string
	TagCount     int
	VersionID    string
	LastModified time.Time // zero when the store does not say
	Body         io.ReadCloser
}

// ByteRange is an inclusive range of bytes.
type ByteRange struct{ First, Last int64 }

// Version is one entry of a version listing.
type Version struct {
	Key          string
	VersionID    string
	ETag         string
	Size         int64
	IsLatest     bool
	DeleteMarker bool
	LastModified time.Time
}

// VersionPage is one page of a version listing.
type VersionPage struct {
	Versions            []Version
	NextKeyMarker       string
	NextVersionIDMarker string
	Truncated           bool
}

// Payload is bytes to write, with their CRC32C (Castagnoli) computed as
// they were read, while they were still in the CPU's cache.
type Payload struct {
	Data   []byte
	CRC32C uint32
}

// Source is the store replicated from.
type Source interface {
	// Get reads a version, or the bytes r of it.
	Get(ctx context.Context, v VersionRef, r *ByteRange) (*Object, error)
	Tags(ctx context.Context, bucket, key, versionID string) (map[string]string, error)
	ListVersions(ctx context.Context, bucket, prefix, keyMarker, versionMarker string) (VersionPage, error)
}

// Destination is the store replicated to.
type Destination interface {
	Put(ctx context.Context, bucket, key string, meta ObjectMeta, body Payload) (string, error)
	// CreateMultipart starts an upload. With partChecksums the parts will
	// carry their CRC32C and the store is asked to keep it; it returns the
	// algorithm the store took on ("" for none).
	CreateMultipart(ctx context.Context, bucket, key string, meta ObjectMeta, partChecksums bool) (uploadID, algorithm string, err error)
	UploadPart(ctx context.Context, bucket, key, uploadID string, n int32, body Payload) (string, error)
	ListParts(ctx context.Context, bucket, key, uploadID string) ([]Part, error)
	CompleteMultipart(ctx context.Context, bucket, key, uploadID string, parts []Part) (string, error)
	AbortMultipart(ctx context.Context, bucket, key, uploadID string) error
	PutDeleteMarker(ctx context.Context, bucket, key string) (string, error)
	// Head returns a version's size, ETag and user metadata.
	Head(ctx context.Context, bucket, key, versionID string) (int64, string, map[string]string, error)
	// FindReplica looks for a version of key written at or after since that
	// is the replica described by of (or, for a delete marker, a delete
	// marker).
	FindReplica(ctx context.Context, bucket, key string, a Action, of ReplicaOf, since time.Time) (string, bool, error)
	// Current returns the key's current version (a delete marker
	// included); false when the key has no version.
	Current(ctx context.Context, bucket, key string) (Version, bool, error)
	// CopyVersion writes a copy of one of key's versions on top of it,
	// inside the store, with its content, headers, metadata and tags, and
	// returns the new version's id.
	CopyVersion(ctx context.Context, bucket, key, versionID string) (string, error)
}

// ReplicaOf is what a replica's metadata says it copies.
type ReplicaOf struct {
	Version string // source version id; "" is the null version
	Pass    string
	// Sequencer tells one write of a null version from the next; set for
	// null versions only.
	Sequencer string
	// After is KeyState.LastReplica: versions from that one down are
	// earlier writes' (0: not known; the time bound alone applies).
	After uint64
	// Size, when above 0, is the source version's: a replica has it, so
	// only versions of that size are worth reading the metadata of. (ETags
	// would narrow it further but are not MD5s under SSE-KMS.)
	Size int64
	// Restored says the copy is a restore's: it names Version as the
	// replica it was restored from.
	Restored bool
	// BySequencer matches any replica of the write Sequencer names, or a
	// copy of one, whatever its version id: the newest version's replica,
	// which the state knows by its sequencer.
	BySequencer bool
}

// Candidate reports whether a listed destination version can be this
// replica, by what the listing shows: only candidates are worth a HEAD.
func (r ReplicaOf) Candidate(v Version) bool { return r.Size <= 0 || v.Size == r.Size }

// Matches reports whether a version's user metadata marks it as this
// replica.
func (r ReplicaOf) Matches(meta map[string]string) bool {
	if r.Restored {
		return meta[MetaRestoredFrom] == r.Version
	}
	if r.BySequencer {
		return r.Sequencer != "" && meta[MetaSourceSequencer] == r.Sequencer
	}
	v := r.Version
	if v == "" {
		v = "null"
	}
	return meta[MetaSourceVersion] == v && meta[MetaPass] == r.Pass &&
		(r.Sequencer == "" || meta[MetaSourceSequencer] == r.Sequencer)
}

// ReplicaOf describes the replica op writes.
func (o *Op) ReplicaOf() ReplicaOf {
	r := ReplicaOf{Version: o.VersionID, Pass: o.Pass, Size: o.Size}
	if o.VersionID == "" {
		r.Sequencer = o.Sequencer
	}
	return r
}

// ErrCopyUnsupported is wrapped by a ServerSideCopier whose store cannot
// copy at all (501 NotImplemented): the engine then stops trying.
var ErrCopyUnsupported = errors.New("the store does not implement server-side copy")

// VersionRef names one source version. For the null version, which a
// later write replaces in place, IfMatch pins the content being copied:
// a read or copy of anything else fails with ErrChanged.
type VersionRef struct{ Bucket, Key, VersionID, IfMatch string }

// ErrChanged is wrapped by a read or copy whose VersionRef.IfMatch no
// longer matches the source: a null version was written over meanwhile.
var ErrChanged = errors.New("the source object changed while it was being copied")

// ServerSideCopier is a Destination that can copy a source version inside
// the store (S3's CopyObject and UploadPartCopy), so that no object bytes
// pass through the daemon. It is used only for destinations the
// configuration marks as sharing the source's endpoint.
type ServerSideCopier interface {
	Copy(ctx context.Context, src VersionRef, bucket, key string, meta ObjectMeta) (string, error)
	CopyPart(ctx context.Context, src VersionRef, r ByteRange, bucket, key, uploadID string, n int32) (string, error)
}

// ObjectStore is a store that can be both ends; the S3 adapter is one.
type ObjectStore interface {
	Source
	Destination
}

// Metadata keys the replicator adds to every replica. The contract allows
// extra user metadata whose keys start with "s3replicad-".
const (
	// MetaPrefix starts every key the replicator adds.
	MetaPrefix        = "s3replicad-"
	MetaSourceVersion = "s3replicad-source-version-id"
	MetaSourceETag    = "s3replicad-source-etag"
	// MetaPass marks a deliberate second copy (Op.Pass), so that after a
	// crash the copy is not mistaken for the first one.
	MetaPass = "s3replicad-pass"
	// MetaSourceSequencer is the event's sequencer, on every replica whose
	// event had one: for null versions it is what tells one write from the
	// next (every write has the version id "null"); for all, it orders
	// versions written within the same second.
	MetaSourceSequencer = "s3replicad-source-sequencer"
	// MetaSourceLastModified is when the source version was written
	// (RFC 3339, UTC, to the millisecond when known): with the replica
	// alone, restore tells which version was current at a given time.
	MetaSourceLastModified = "s3replicad-source-last-modified"
	// MetaRestoredFrom is on every object `restore` writes: the replica
	// version it was restored from. The daemon recognises such objects
	// when they are replicated back (failback) and does not copy them again.
	MetaRestoredFrom = "s3replicad-restored-from"
)

// Class says how an error from a store should be handled.
type Class int

const (
	Transient Class = iota // retry with backoff
	Permanent              // mark failed; retry puts it back
	Gone                   // the source version no longer exists: skip
)

// Failure reasons: the fixed, documented label values of
// s3replicad_operations_failed_total.
const (
	ReasonAccessDenied  = "access_denied"
	ReasonNoSuchBucket  = "no_such_bucket"
	ReasonSourceMissing = "source_missing"
	ReasonInvalid       = "invalid_request"
	ReasonThrottled     = "throttled"
	ReasonServerError   = "server_error"
	ReasonNetwork       = "network"
	ReasonIntegrity     = "integrity"
	ReasonOther         = "other"
)

// Reasons lists every failure reason.
var Reasons = []string{ReasonAccessDenied, ReasonNoSuchBucket, ReasonSourceMissing, ReasonInvalid,
	ReasonThrottled, ReasonServerError, ReasonNetwork, ReasonIntegrity, ReasonOther}

// Error is a classified store error. Adapters return it so that the engine
// never has to know the wire protocol.
type Error struct {
	Class  Class
	Reason string
	Err    error
}

func (e *Error) Error() string { return safeMessage(e.Err) }

// safeMessage is err's message, even when its Error method panics (an SDK
// response error built without a response does).
func safeMessage(err error) (msg string) {
	if err == nil {
		return "<nil>"
	}
	defer func() {
		if r := recover(); r != nil {
			msg = fmt.Sprintf("%T (its message cannot be printed: %v)", err, r)
		}
	}()
	return err.Error()
}
func (e *Error) Unwrap() error { return e.Err }

// Classify returns the class and reason of err; unclassified errors are
// transient, except context cancellation which the caller handles.
func Classify(err error) (Class, string) {
	var e *Error
	if errors.As(err, &e) {
		return e.Class, e.Reason
	}
	return Transient, ReasonOther
}

// ErrClosed is returned by Queue.Receive after Close.
var ErrClosed = errors.New("closed")

// MovesKey reports whether saving op moves its destination key's
// KeyState: a completed op does, and a late op once its late version is
// written (before the copy on top).
func MovesKey(op *Op) bool {
	return op.State == Completed || op.State == InFlight && op.Late() && op.Replica != ""
}

// newer says op's version is the key's newest: a sequenced one moves
// forward only, and an unsequenced one counts where nothing sequenced was.
func newer(op *Op, last KeyState) bool {
	return (op.Sequencer != "" || last.Sequencer == "") &&
		(last.Sequencer == "" || event.CompareSequencer(op.Sequencer, last.Sequencer) >= 0)
}

// Advance is the KeyState after saving op (every state store applies it
// in the same write as op's): the last replica follows every write, the
// newest sequencer and version move forward only (a backfilled or
// unsequenced op does not erase what a sequenced event established), and
// a late op moves the last replica only, to its late version once
// written, then to the copy it put on top, which holds the newest version
// from then on. newest says the newest version moved (to op).
func Advance(last KeyState, op *Op) (next KeyState, newest bool) {
	next = last
	switch {
	case op.State == InFlight && op.Late() && op.Replica != "":
		next.LastReplica = VersionDigest(op.Replica)
	case op.Late():
		if op.OnTopReplica != "" && !op.OnTopUnrecorded {
			next.LastReplica = VersionDigest(op.OnTopReplica)
		} else if op.Replica != "" {
			next.LastReplica = VersionDigest(op.Replica)
		}
		if op.State == Completed && op.OnTop == op.Replica && newer(op, last) {
			// Its own replica, found under an older version's write after
			// a crash, copied back on top: it is the newest after all.
			next.Sequencer, next.Version = op.Sequencer, VersionDigest(op.VersionID)
			newest = true
		}
	default:
		if op.Replica != "" {
			next.LastReplica = VersionDigest(op.Replica)
		}
		if newer(op, last) {
			next.Sequencer, next.Version = op.Sequencer, VersionDigest(op.VersionID)
			next.NewestMarker = op.Action == ActionDeleteMarker
			newest = true
		}
	}
	return next, newest
}
