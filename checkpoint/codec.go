package checkpoint

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/s3replicad/s3replicad/engine"
)

// Ops are stored in a compact binary form: a million of them must fit in a
// few hundred MB, and JSON spelled every field name in every record. The
// layout is positional, behind a format byte so that it can change.
//
// An unfinished or failed op is kept whole (opFormat). A finished one
// (completed, skipped, superseded) is read afterwards only for its state,
// time, replica and reason, and by pruning for the keys of its index
// entries: it keeps those, with its identity and destination key hashed
// (finishedFormat), at about half the size.
const (
	opFormat       = 1
	finishedFormat = 2
)

var states = []engine.State{engine.Pending, engine.InFlight, engine.Completed, engine.Failed, engine.Skipped, engine.Superseded}

func stateByte(s engine.State) byte {
	for i, x := range states {
		if x == s {
			return byte(i)
		}
	}
	return 0
}

func actionByte(a engine.Action) byte {
	if a == engine.ActionDeleteMarker {
		return 1
	}
	return 0
}

func originByte(o engine.Origin) byte {
	if o == engine.OriginBackfill {
		return 1
	}
	return 0
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return binary.AppendVarint(b, 0)
	}
	return binary.AppendVarint(b, t.UnixNano())
}

// encodeOp renders an op.
func encodeOp(op *engine.Op) []byte {
	if finishedOK(op.State) {
		return encodeFinished(op)
	}
	b := make([]byte, 0, 160+len(op.Key)+len(op.LastError))
	b = append(b, opFormat, stateByte(op.State), actionByte(op.Action), originByte(op.Origin))
	for _, s := range []string{op.Rule, op.Bucket, op.Key, op.VersionID, op.Sequencer, op.Dest, op.DestBucket} {
		b = appendString(b, s)
	}
	// The destination key is almost always a prefix and the source key.
	if prefix, ok := strings.CutSuffix(op.DestKey, op.Key); ok {
		b = append(b, 1)
		b = appendString(b, prefix)
	} else {
		b = append(b, 0)
		b = appendString(b, op.DestKey)
	}
	finished := op.State == engine.Completed || op.State == engine.Skipped || op.State == engine.Superseded
	etag, lastError := op.ETag, op.LastError
	if finished {
		etag, lastError = "", ""
	}
	for _, s := range []string{op.Pass, etag, op.Reason, lastError, op.Replica} {
		b = appendString(b, s)
	}
	b = binary.AppendVarint(b, op.Size)
	b = binary.AppendUvarint(b, uint64(max(op.Attempts, 0)))
	next, started := op.NextAttempt, op.WriteStarted
	if finished {
		next, started = time.Time{}, time.Time{}
	}
	eventTime, recorded := op.EventTime, op.Recorded
	if finished {
		// Read only while unfinished (latency, age).
		eventTime, recorded = time.Time{}, time.Time{}
	}
	for _, t := range []time.Time{eventTime, recorded, next, started, op.Finished} {
		b = appendTime(b, t)
	}
	// An optional tail, absent from most records (and from those of older
	// releases): what a late version puts back on top.
	if op.Late() || op.OnTopReplica != "" {
		var flags byte
		if op.OnTopMarker {
			flags |= 1
		}
		if op.OnTopUnrecorded {
			flags |= 2
		}
		b = append(b, flags)
		b = appendString(b, op.OnTop)
		b = appendString(b, op.OnTopReplica)
	}
	return b
}

func encodeFinished(op *engine.Op) []byte {
	b := make([]byte, 0, 80+len(op.Rule)+len(op.Replica)+len(op.Reason))
	b = append(b, finishedFormat, stateByte(op.State), actionByte(op.Action), originByte(op.Origin))
	b = append(b, idKey(op)...)
	b = append(b, hash16(op.DestKeyID())...)
	b = appendString(b, op.Rule)
	b = appendString(b, op.Replica)
	b = appendString(b, op.Reason)
	b = binary.AppendVarint(b, op.Size)
	return appendTime(b, op.Finished)
}

// finishedKeys returns the identity and destination-key hashes a finished
// record keeps (nil for a whole record).
func finishedKeys(b []byte) (id, dest []byte) {
	if len(b) < 4+idKeyLen+16 || b[0] != finishedFormat {
		return nil, nil
	}
	return b[4 : 4+idKeyLen], b[4+idKeyLen : 4+idKeyLen+16]
}

var errCorrupt = errors.New("corrupt operation record")

// onDecode, when set (by tests), is called for every op record decoded:
// the scale tests count reads rather than time them.
var onDecode func()

type reader struct {
	b   []byte
	err error
	// countsOnly skips every string but the rule (see decodeCounted).
	countsOnly bool
}

func (r *reader) byte() byte {
	if r.err != nil || len(r.b) == 0 {
		r.err = errCorrupt
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errCorrupt
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = errCorrupt
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) string() string {
	n := r.uvarint()
	if r.err != nil || n > uint64(len(r.b)) {
		r.err = errCorrupt
		return ""
	}
	var s string
	if !r.countsOnly {
		s = string(r.b[:n])
	}
	r.b = r.b[n:]
	return s
}

// rule reads the rule's id, which decodeCounted keeps too.
func (r *reader) rule() string {
	only := r.countsOnly
	r.countsOnly = false
	s := r.string()
	r.countsOnly = only
	return s
}

func (r *reader) time() time.Time {
	v := r.varint()
	if v == 0 {
		return time.Time{}
	}
	return time.Unix(0, v)
}

// decodeOp reads an op stored under seq. It copies what it keeps, so the
// bytes may belong to a transaction that ends.
func decodeOp(seq uint64, b []byte) (*engine.Op, error) {
	return decode(seq, &reader{b: b})
}

// decodeCounted reads of a record only what its indexes and counters
// depend on: state, action, origin, rule, size and times. Saving an op
// reads its previous record for them, and copying its other strings (a
// dozen allocations per small object) would be for nothing.
func decodeCounted(seq uint64, b []byte) (*engine.Op, error) {
	return decode(seq, &reader{b: b, countsOnly: true})
}

func decode(seq uint64, r *reader) (*engine.Op, error) {
	if onDecode != nil {
		onDecode()
	}
	switch v := r.byte(); v {
	case opFormat:
	case finishedFormat:
		return decodeFinished(seq, r)
	default:
		return nil, fmt.Errorf("operation %d: record format %d, this build reads %d and %d", seq, v, opFormat, finishedFormat)
	}
	op := r.header(seq)
	op.Rule = r.rule()
	op.Bucket, op.Key, op.VersionID = r.string(), r.string(), r.string()
	op.Sequencer, op.Dest, op.DestBucket = r.string(), r.string(), r.string()
	if r.byte() == 1 {
		op.DestKey = r.string() + op.Key
	} else {
		op.DestKey = r.string()
	}
	op.Pass, op.ETag, op.Reason, op.LastError, op.Replica = r.string(), r.string(), r.string(), r.string(), r.string()
	op.Size = r.varint()
	op.Attempts = int(r.uvarint())
	op.EventTime, op.Recorded, op.NextAttempt, op.WriteStarted, op.Finished = r.time(), r.time(), r.time(), r.time(), r.time()
	if r.err == nil && len(r.b) > 0 {
		flags := r.byte()
		op.OnTopMarker, op.OnTopUnrecorded = flags&1 != 0, flags&2 != 0
		op.OnTop, op.OnTopReplica = r.string(), r.string()
	}
	if r.err != nil {
		return nil, fmt.Errorf("operation %d: %w", seq, r.err)
	}
	return op, nil
}

// header reads what both record formats start with after the format
// byte: state, action and origin.
func (r *reader) header(seq uint64) *engine.Op {
	op := &engine.Op{Seq: seq, Action: engine.ActionCopy, Origin: engine.OriginEvent}
	if s := int(r.byte()); s < len(states) {
		op.State = states[s]
	} else {
		r.err = errCorrupt
	}
	if r.byte() == 1 {
		op.Action = engine.ActionDeleteMarker
	}
	if r.byte() == 1 {
		op.Origin = engine.OriginBackfill
	}
	return op
}

// decodeFinished reads a finished record: the op's state and outcome, its
// rule and size; its identity is there only as hashes.
func decodeFinished(seq uint64, r *reader) (*engine.Op, error) {
	op := r.header(seq)
	if len(r.b) < idKeyLen+16 {
		r.err = errCorrupt
	} else {
		r.b = r.b[idKeyLen+16:]
	}
	op.Rule = r.rule()
	op.Replica, op.Reason = r.string(), r.string()
	op.Size = r.varint()
	op.Finished = r.time()
	if r.err != nil {
		return nil, fmt.Errorf("operation %d: %w", seq, r.err)
	}
	return op, nil
}

// keyState is what was last written to a destination key, and by which op
// (so that pruning that op can forget it).
type keyState struct {
	engine.KeyState
	Seq uint64
}

// Per-key records are the state file's most numerous after ops: the
// sequencer is kept as bytes when it is hexadecimal (it always is from S3),
// the version as its digest.
func encodeKeyState(k keyState) []byte {
	b := appendHex(nil, k.Sequencer)
	b = binary.BigEndian.AppendUint64(b, k.Version)
	b = binary.AppendUvarint(b, k.Seq)
	b = binary.BigEndian.AppendUint64(b, k.LastReplica)
	if k.NewestMarker {
		b = append(b, 1) // a tail of flags, absent from older records
	}
	return b
}

func decodeKeyState(b []byte) (keyState, error) {
	r := &reader{b: b}
	k := keyState{KeyState: engine.KeyState{Sequencer: r.hex()}}
	if len(r.b) < 8 {
		r.err = errCorrupt
	} else {
		k.Version, r.b = binary.BigEndian.Uint64(r.b), r.b[8:]
	}
	k.Seq = r.uvarint()
	if len(r.b) >= 8 {
		k.LastReplica, r.b = binary.BigEndian.Uint64(r.b), r.b[8:]
	}
	if len(r.b) > 0 {
		k.NewestMarker = r.b[0]&1 != 0
	}
	if r.err != nil {
		return keyState{}, fmt.Errorf("key state: %w", r.err)
	}
	return k, nil
}

// appendHex stores an even-length lowercase or uppercase hex string as its
// bytes (flag 1, and 2 for uppercase), anything else as a string (flag 0).
func appendHex(b []byte, s string) []byte {
	if raw, err := hex.DecodeString(s); err == nil && len(s) > 0 {
		flag := byte(1)
		if strings.ToUpper(s) == s && strings.ToLower(s) != s {
			flag = 2
		}
		if hexString(raw, flag == 2) == s {
			b = append(b, flag)
			b = binary.AppendUvarint(b, uint64(len(raw)))
			return append(b, raw...)
		}
	}
	return appendString(append(b, 0), s)
}

func hexString(raw []byte, upper bool) string {
	s := hex.EncodeToString(raw)
	if upper {
		return strings.ToUpper(s)
	}
	return s
}

func (r *reader) hex() string {
	switch r.byte() {
	case 0:
		return r.string()
	case 1:
		return hexString([]byte(r.string()), false)
	case 2:
		return hexString([]byte(r.string()), true)
	}
	r.err = errCorrupt
	return ""
}

// Keys of the index buckets. Long identifiers (a key can be 1,024 bytes)
// are hashed: SHA-256 truncated to 128 bits, which no object key can be
// chosen to collide with.

func hash16(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:16]
}

// idKey indexes an op by its identity: the version it copies (12 bytes,
// so that every pass of a version is found by prefix) and the rest of its
// ID (4 bytes: the pass, or the sequencer of a null version). 96 bits make
// a collision between versions as unlikely as the full hash would; the
// suffix tells apart the few ops of one version.
func idKey(op *engine.Op) []byte {
	base := engine.OpID(op.Rule, op.Bucket, op.Key, op.VersionID)
	return idKeyOf(base, strings.TrimPrefix(op.ID(), base))
}

const idBaseLen, idKeyLen = 12, 16

func idKeyOf(base, rest string) []byte {
	k := make([]byte, 0, idKeyLen)
	k = append(k, hash16(base)[:idBaseLen]...)
	h := sha256.Sum256([]byte(rest))
	return append(k, h[:idKeyLen-idBaseLen]...)
}

func idPrefix(base string) []byte { return hash16(base)[:idBaseLen] }

// idValue and idSeq store an op's seq in the identity index, as a varint.
func idValue(seq uint64) []byte { return binary.AppendUvarint(nil, seq) }

func idSeq(v []byte) uint64 {
	seq, _ := binary.Uvarint(v)
	return seq
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

func seqOf(k []byte) uint64 { return binary.BigEndian.Uint64(k[len(k)-8:]) }

// pendingKey orders unfinished ops by class (live events before backfill),
// then arrival.
func pendingKey(op *engine.Op, seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{originByte(op.Origin)}, seq)
}

// finishedKey orders finished ops by when they finished, for pruning.
func finishedKey(t time.Time, seq uint64) []byte {
	k := binary.BigEndian.AppendUint64(nil, uint64(max(t.UnixNano(), 0)))
	return binary.BigEndian.AppendUint64(k, seq)
}
