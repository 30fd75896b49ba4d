package dynamostate

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/s3replicad/s3replicad/engine"
)

// Attribute and index names (see the package documentation).
const (
	attrPK = "pk"
	attrSK = "sk"

	indexQueue = "queue" // q, qs: unfinished, failed ops and uploads per shard (ALL)
	attrQ      = "q"
	attrQS     = "qs"
	indexDone  = "done" // dq, dqs: finished ops per shard by finish time (KEYS_ONLY)
	attrDQ     = "dq"
	attrDQS    = "dqs"

	// SchemaVersion is the table layout's version, kept in the meta item.
	SchemaVersion = 1
)

// Fixed partition keys.
const (
	pkMeta   = "meta"
	pkLease  = "lease"
	pkNode   = "node"
	pkCount  = "count"
	pkCursor = "cursor"
)

// digest is a short, URL-safe digest: the key of an item named by a string
// that may be longer than DynamoDB's key limits (an op's identity holds
// the object key, up to 1 KiB, and more).
func digest(s string) string {
	h := sha256.Sum256([]byte(s))
	return base64.RawURLEncoding.EncodeToString(h[:15])
}

// opKey is an op item's primary key: every op of one rule and source
// version (passes, writes of the null version) shares a partition, so that
// OpsOf is one query.
func opKey(op *engine.Op) (pk, sk string) {
	return "o#" + digest(engine.OpID(op.Rule, op.Bucket, op.Key, op.VersionID)), "o#" + digest(op.ID())
}

func keyItemPK(destKeyID string) string { return "k#" + digest(destKeyID) }

func uploadPK(opID string) string { return "u#" + digest(opID) }

// shardOf maps a destination key to its shard. The hash must never change:
// the number of shards is fixed when the table is initialised, and a key
// must stay in its shard for as long as the table lives.
func shardOf(destKeyID string, shards int) int {
	h := fnv.New64a()
	_, _ = io.WriteString(h, destKeyID)
	return int(h.Sum64() % uint64(shards))
}

func leaseSK(shard int) string { return fmt.Sprintf("%05d", shard) }

func queuePending(shard int) string { return fmt.Sprintf("p#%05d", shard) }
func queueFailed(shard int) string  { return fmt.Sprintf("f#%05d", shard) }
func queueUpload(shard int) string  { return fmt.Sprintf("u#%05d", shard) }
func doneKey(shard int) string      { return fmt.Sprintf("d#%05d", shard) }

func originDigit(o engine.Origin) string {
	if o == engine.OriginBackfill {
		return "1"
	}
	return "0"
}

func seqHex(seq uint64) string { return fmt.Sprintf("%016x", seq) }

func timeHex(t time.Time) string { return fmt.Sprintf("%016x", uint64(max(t.UnixNano(), 0))) }

func unfinished(s engine.State) bool { return s == engine.Pending || s == engine.InFlight }

func finishedOK(s engine.State) bool {
	return s == engine.Completed || s == engine.Skipped || s == engine.Superseded
}

// Attribute value helpers.

func str(s string) types.AttributeValue { return &types.AttributeValueMemberS{Value: s} }

func num[T int | int64 | uint64](n T) types.AttributeValue {
	return &types.AttributeValueMemberN{Value: fmt.Sprint(n)}
}

func boolean(b bool) types.AttributeValue { return &types.AttributeValueMemberBOOL{Value: b} }

func key(pk, sk string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{attrPK: str(pk), attrSK: str(sk)}
}

func getS(item map[string]types.AttributeValue, name string) string {
	if v, ok := item[name].(*types.AttributeValueMemberS); ok {
		return v.Value
	}
	return ""
}

func getN(item map[string]types.AttributeValue, name string) int64 {
	if v, ok := item[name].(*types.AttributeValueMemberN); ok {
		n, _ := strconv.ParseInt(v.Value, 10, 64)
		return n
	}
	return 0
}

func getU(item map[string]types.AttributeValue, name string) uint64 {
	if v, ok := item[name].(*types.AttributeValueMemberN); ok {
		n, _ := strconv.ParseUint(v.Value, 10, 64)
		return n
	}
	return 0
}

func getBool(item map[string]types.AttributeValue, name string) bool {
	if v, ok := item[name].(*types.AttributeValueMemberBOOL); ok {
		return v.Value
	}
	return false
}

// Op items. The op itself is kept whole as JSON (every field, including
// ones added later); beside it are the attributes that conditions and
// indexes need: its state, shard, arrival number and fence epoch.
const (
	attrOp    = "op"
	attrState = "st"
	attrSeq   = "seq"
	attrShard = "sh"
	attrEpoch = "ep"
)

// opItem renders an op as written by a holder of the shard's lease at
// epoch ep (0 for a record made by any node).
func opItem(op *engine.Op, shard int, ep int64) (map[string]types.AttributeValue, error) {
	raw, err := json.Marshal(op)
	if err != nil {
		return nil, err
	}
	pk, sk := opKey(op)
	item := key(pk, sk)
	item[attrOp] = str(string(raw))
	item[attrState] = str(string(op.State))
	item[attrSeq] = num(op.Seq)
	item[attrShard] = num(shard)
	item[attrEpoch] = num(ep)
	switch {
	case unfinished(op.State):
		item[attrQ] = str(queuePending(shard))
		item[attrQS] = str(originDigit(op.Origin) + seqHex(op.Seq))
	case op.State == engine.Failed:
		item[attrQ] = str(queueFailed(shard))
		item[attrQS] = str(seqHex(op.Seq))
	case finishedOK(op.State):
		fin := op.Finished
		if fin.IsZero() {
			fin = time.Now()
		}
		item[attrDQ] = str(doneKey(shard))
		item[attrDQS] = str(timeHex(fin))
	}
	return item, nil
}

// decodeOp reads an op item (or its projection in the queue index).
func decodeOp(item map[string]types.AttributeValue) (*engine.Op, error) {
	raw := getS(item, attrOp)
	if raw == "" {
		return nil, fmt.Errorf("item %s/%s holds no operation", getS(item, attrPK), getS(item, attrSK))
	}
	op := new(engine.Op)
	if err := json.Unmarshal([]byte(raw), op); err != nil {
		return nil, fmt.Errorf("item %s/%s: %w", getS(item, attrPK), getS(item, attrSK), err)
	}
	// The attributes are authoritative: Retry changes them without
	// rewriting the op's arrival number.
	if st := getS(item, attrState); st != "" {
		op.State = engine.State(st)
	}
	if seq := getU(item, attrSeq); seq != 0 {
		op.Seq = seq
	}
	return op, nil
}

// Sequence numbers. An op's Seq is its arrival number in the cluster:
// milliseconds since 2020 in the high 42 bits, ten bits that tell nodes
// apart and a 12-bit counter. It is unique per node and increasing per
// node; across nodes it orders arrival as far as their clocks agree. It
// is not a key: two nodes that drew the same ten bits in the same
// millisecond only make two ops share a number.
const seqEpochMs = 1577836800000 // 2020-01-01T00:00:00Z

type seqGen struct {
	node    uint64
	lastMs  uint64
	counter uint64
}

func (g *seqGen) next(now time.Time) uint64 {
	ms := uint64(max(now.UnixMilli()-seqEpochMs, 0))
	if ms <= g.lastMs {
		g.counter++
		if g.counter >= 1<<12 {
			g.lastMs++
			g.counter = 0
		}
	} else {
		g.lastMs, g.counter = ms, 0
	}
	return g.lastMs<<22 | (g.node&0x3ff)<<12 | g.counter
}

// seqTime is when (on the recording node's clock) an op with this Seq
// was recorded.
func seqTime(seq uint64) time.Time { return time.UnixMilli(int64(seq>>22) + seqEpochMs) }
