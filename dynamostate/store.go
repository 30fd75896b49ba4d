package dynamostate

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"golang.org/x/sync/errgroup"

	"github.com/s3replicad/s3replicad/engine"
)

// Store is the DynamoDB-backed engine.StateStore of one node of a cluster.
type Store struct {
	peers  Peers // what the lease manager last saw of the nodes
	cfg    Config
	db     *dynamodb.Client
	log    *slog.Logger
	shards int

	stepMu   sync.Mutex // one lease step (or Release) at a time
	running  atomic.Bool
	released atomic.Bool
	changes  chan struct{}
	kick     chan struct{}

	mu            sync.Mutex
	held          map[int]*lease
	lastEpoch     map[int]int64 // epochs of shards held before, by shard
	leaseSeen     map[int]sighting
	nodeSeen      map[string]sighting
	wants         map[int]time.Time // shards asked for, when
	handoff       func(ctx context.Context, lost func(destKeyID string) bool) error
	activity      func() (held, inFlight int)
	lastComplaint time.Time
	lastCleanup   time.Time
	lastBeat      time.Time
	stats         LeaseStats
	forgetAfter   time.Duration

	handed  map[string]handedOp  // op ID -> where it came from (ops the engine has)
	recent  map[string]time.Time // op ID -> finished here lately (the index lags)
	cursors map[cursorKey]*shardCursor
	rescan  time.Duration
	seq     seqGen
	keys    map[string]keyCache
	uploads map[string]*uploadMemo
	counts  map[string]map[engine.State]int64 // rule -> state -> not flushed yet
	flushed time.Time
	oldest  struct {
		at    time.Time
		value time.Time
		ok    bool
	}
}

var (
	_ engine.StateStore = (*Store)(nil)
	_ engine.Cluster    = (*Store)(nil)
)

type handedOp struct {
	shard  int
	origin engine.Origin
}

type cursorKey struct {
	shard  int
	origin engine.Origin
}

// shardCursor is where Pending goes on in a shard's queue: everything
// before it was handed out or had finished. From time to time Pending
// reads the queue from its start again, for ops that arrived behind the
// cursor (the index lags, other nodes' clocks differ, retried ops keep
// their old place).
type shardCursor struct {
	seq    uint64
	rescan time.Time
}

// rescanEvery is how often Pending reads a shard's queue from its start.
const rescanEvery = 10 * time.Second

// recentFor is how long an op finished here is not handed out again
// because the index still lists it.
const recentFor = 30 * time.Second

type keyCache struct {
	ks     engine.KeyState
	rev    int64
	exists bool
}

// maxKeyCache bounds the key states remembered between LastWritten and
// the Save that follows it.
const maxKeyCache = 20000

// forgetNodesAfter is how long status goes on listing a node that stopped
// or died.
const forgetNodesAfter = time.Hour

// parallelism bounds the requests one call makes at once.
const parallelism = 16

// Open connects to an initialised table (CreateTable) as node cfg.NodeID.
// The node holds no shard until Run has taken some.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	db, err := client(ctx, &cfg)
	if err != nil {
		return nil, err
	}
	shards, err := readMeta(ctx, db, cfg.Table)
	if err != nil {
		return nil, err
	}
	if _, err := ensureLeases(ctx, db, cfg.Table, shards); err != nil {
		return nil, err
	}
	var b [2]byte
	_, _ = rand.Read(b[:])
	s := &Store{
		cfg: cfg, db: db, log: cfg.Logger.With("node", cfg.NodeID), shards: shards,
		changes: make(chan struct{}, 1),
		held:    map[int]*lease{}, lastEpoch: map[int]int64{}, leaseSeen: map[int]sighting{}, nodeSeen: map[string]sighting{},
		wants: map[int]time.Time{}, kick: make(chan struct{}, 1),
		handed: map[string]handedOp{}, recent: map[string]time.Time{}, cursors: map[cursorKey]*shardCursor{}, rescan: rescanEvery,
		seq:  seqGen{node: uint64(binary.BigEndian.Uint16(b[:]))},
		keys: map[string]keyCache{}, uploads: map[string]*uploadMemo{}, counts: map[string]map[engine.State]int64{},
		flushed: time.Now(), forgetAfter: max(10*cfg.Lease, forgetNodesAfter),
	}
	return s, nil
}

// Close flushes the counters. It does not release the leases (Release).
func (s *Store) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
	defer cancel()
	s.flushCounters(ctx, true)
	return nil
}

// NodeID is this node's identity in the table.
func (s *Store) NodeID() string { return s.cfg.NodeID }

// Table is the table's name.
func (s *Store) Table() string { return s.cfg.Table }

// request bounds one request to the table.
func (s *Store) request(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.cfg.RequestTimeout)
}

func (s *Store) queryAll(ctx context.Context, in *dynamodb.QueryInput) ([]map[string]types.AttributeValue, error) {
	var items []map[string]types.AttributeValue
	for {
		rctx, cancel := s.request(ctx)
		out, err := s.db.Query(rctx, in)
		cancel()
		if err != nil {
			return nil, err
		}
		items = append(items, out.Items...)
		if out.LastEvaluatedKey == nil {
			return items, nil
		}
		next := *in
		next.ExclusiveStartKey = out.LastEvaluatedKey
		in = &next
	}
}

// parallel runs f for 0..n-1 with a bounded number at once; the first
// error is returned.
func parallel(ctx context.Context, n int, f func(ctx context.Context, i int) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallelism)
	for i := 0; i < n; i++ {
		g.Go(func() error { return f(gctx, i) })
	}
	return g.Wait()
}

// fence returns the epoch this node writes a shard's items with, or
// ErrLeaseLost when it does not hold the shard.
func (s *Store) fence(shard int) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.held[shard]
	if l == nil || !time.Now().Before(s.deadline(l)) {
		return 0, fmt.Errorf("shard %d: %w", shard, ErrLeaseLost)
	}
	return l.epoch, nil
}

// Record implements engine.StateStore. Any node records ops of any shard:
// one conditional put per op (it must not exist yet), so that duplicates
// are detected and left as they are. Returns after the new ops are
// durable, each numbered (Op.Seq; see seqGen).
func (s *Store) Record(ctx context.Context, ops []*engine.Op) ([]*engine.Op, error) {
	seen := map[string]bool{}
	var cand []*engine.Op
	for _, op := range ops {
		id := op.ID()
		if seen[id] {
			continue
		}
		seen[id] = true
		cand = append(cand, op)
	}
	s.mu.Lock()
	now := time.Now()
	for _, op := range cand {
		op.Seq = s.seq.next(now)
	}
	s.mu.Unlock()
	added := make([]bool, len(cand))
	err := parallel(ctx, len(cand), func(ctx context.Context, i int) error {
		op := cand[i]
		item, err := opItem(op, shardOf(op.DestKeyID(), s.shards), 0)
		if err != nil {
			return err
		}
		rctx, cancel := s.request(ctx)
		defer cancel()
		_, err = s.db.PutItem(rctx, &dynamodb.PutItemInput{
			TableName: aws.String(s.cfg.Table), Item: item,
			ConditionExpression: aws.String("attribute_not_exists(pk)"),
		})
		if conditionFailed(err) {
			// Recorded before (or by our own request whose answer was
			// lost and was sent again): it stays as it is.
			return nil
		}
		if err != nil {
			return s.classify(ctx, "record "+op.String(), err)
		}
		added[i] = true
		return nil
	})
	var out []*engine.Op
	for i, op := range cand {
		if err == nil && added[i] {
			out = append(out, op)
		} else {
			op.Seq = 0
		}
	}
	if err != nil {
		return nil, fmt.Errorf("record %d operations: %w", len(ops), err)
	}
	s.mu.Lock()
	for _, op := range out {
		s.countLocked(op.Rule, "", op.State)
	}
	s.mu.Unlock()
	return out, nil
}

// Save implements engine.StateStore for an op of a shard this node holds.
// A completed op first moves its destination key's state forward, then
// is written itself: two writes, as there are no transactions. A crash
// between them leaves the key state ahead of its op; Current sees that
// and finishes the op.
func (s *Store) Save(ctx context.Context, op *engine.Op) error {
	shard := shardOf(op.DestKeyID(), s.shards)
	ep, err := s.fence(shard)
	if err != nil {
		return fmt.Errorf("save %s: %w", op, err)
	}
	if engine.MovesKey(op) {
		if err := s.advanceKey(ctx, op, shard, ep); err != nil {
			return fmt.Errorf("save %s: %w", op, err)
		}
	}
	if err := s.putOp(ctx, op, shard, ep); err != nil {
		return fmt.Errorf("save %s: %w", op, err)
	}
	return nil
}

// SaveAll implements engine.StateStore: the ops are saved in parallel, and
// the first failure is returned (the others may have been saved).
func (s *Store) SaveAll(ctx context.Context, ops []*engine.Op) error {
	return parallel(ctx, len(ops), func(ctx context.Context, i int) error { return s.Save(ctx, ops[i]) })
}

// putOp writes an op's record with this node's epoch, unless a newer
// holder of the shard wrote it since.
func (s *Store) putOp(ctx context.Context, op *engine.Op, shard int, ep int64) error {
	if op.Seq == 0 {
		// Not from Record or Pending: keep the number it was recorded with.
		cur, err := s.getOp(ctx, op)
		if err != nil {
			return err
		}
		if cur != nil {
			op.Seq = cur.Seq
		} else {
			s.mu.Lock()
			op.Seq = s.seq.next(time.Now())
			s.mu.Unlock()
			if op.Recorded.IsZero() {
				op.Recorded = time.Now()
			}
		}
	}
	item, err := opItem(op, shard, ep)
	if err != nil {
		return err
	}
	rctx, cancel := s.request(ctx)
	defer cancel()
	out, err := s.db.PutItem(rctx, &dynamodb.PutItemInput{
		TableName: aws.String(s.cfg.Table), Item: item,
		ConditionExpression:       aws.String("attribute_not_exists(pk) OR ep <= :ep"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":ep": num(ep)},
		ReturnValues:              types.ReturnValueAllOld,
	})
	if conditionFailed(err) {
		return fmt.Errorf("a newer holder of shard %d wrote the operation: %w", shard, ErrLeaseLost)
	}
	if err != nil {
		return s.classify(ctx, "write operation", err)
	}
	old := engine.State(getS(out.Attributes, attrState))
	s.mu.Lock()
	s.countLocked(op.Rule, old, op.State)
	late := op.State == engine.Completed && old != engine.Completed && op.Late()
	if late {
		s.countLateLocked(op.Rule)
	}
	s.finishedLocked(op)
	s.mu.Unlock()
	if late {
		// Each late version made one extra copy on the destination: its
		// count is what explains them, so it is not left to the periodic
		// flush, which a node that dies loses.
		s.flushCounters(ctx, true)
	}
	return nil
}

// finishedLocked forgets an op the engine is done with. One that finished
// for good is also not handed out again while the lagging index may still
// list it; a failed one may come back any time (retry).
func (s *Store) finishedLocked(op *engine.Op) {
	if !op.State.Terminal() {
		return
	}
	id := op.ID()
	delete(s.handed, id)
	if finishedOK(op.State) {
		s.recent[id] = time.Now()
	}
}

func (s *Store) getOp(ctx context.Context, op *engine.Op) (*engine.Op, error) {
	item, err := s.getOpItem(ctx, op)
	if err != nil || item == nil {
		return nil, err
	}
	return decodeOp(item)
}

func (s *Store) getOpItem(ctx context.Context, op *engine.Op) (map[string]types.AttributeValue, error) {
	pk, sk := opKey(op)
	rctx, cancel := s.request(ctx)
	defer cancel()
	out, err := s.db.GetItem(rctx, &dynamodb.GetItemInput{
		TableName: aws.String(s.cfg.Table), Key: key(pk, sk), ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		return nil, s.classify(ctx, "read operation", err)
	}
	return out.Item, nil
}

// Key state items: the engine.KeyState of a destination key as JSON (so
// that fields added to it later are kept), a revision for optimistic
// updates, the epoch that wrote it, and the op that last completed on it
// with its replicas and finish time (lop, lrep, lont, lfin), which Current
// and Prune read.

// advanceKey moves a destination key's state forward (advance) with a
// conditional update on the revision read, fenced by the epoch.
func (s *Store) advanceKey(ctx context.Context, op *engine.Op, shard int, ep int64) error {
	dk := op.DestKeyID()
	pk, sk := opKey(op)
	for attempt := 0; ; attempt++ {
		s.mu.Lock()
		cur, ok := s.keys[dk]
		s.mu.Unlock()
		if !ok || attempt > 0 {
			var err error
			if cur, _, err = s.readKey(ctx, dk); err != nil {
				return err
			}
		}
		next, _ := engine.Advance(cur.ks, op)
		raw, err := json.Marshal(next)
		if err != nil {
			return err
		}
		// An update, not a put: the record of the op that last completed
		// on the key (lop...) stays when a late op's first write moves
		// the last replica only.
		sets := []string{"ks = :ks", "rev = :rev1", "ep = :ep", "sh = :sh"}
		var removes []string
		vals := map[string]types.AttributeValue{":ks": str(string(raw)), ":rev1": num(cur.rev + 1), ":ep": num(ep), ":sh": num(shard)}
		if op.State == engine.Completed {
			fin := op.Finished
			if fin.IsZero() {
				fin = time.Now()
			}
			sets = append(sets, "lop = :lop", "lfin = :lfin")
			vals[":lop"], vals[":lfin"] = str(pk+"|"+sk), str(fin.UTC().Format(time.RFC3339Nano))
			for attr, v := range map[string]string{"lrep": op.Replica, "lont": op.OnTopReplica} {
				if v != "" {
					sets = append(sets, attr+" = :"+attr)
					vals[":"+attr] = str(v)
				} else {
					removes = append(removes, attr)
				}
			}
		}
		slices.Sort(removes)
		update := "SET " + strings.Join(sets, ", ")
		if len(removes) > 0 {
			update += " REMOVE " + strings.Join(removes, ", ")
		}
		in := &dynamodb.UpdateItemInput{TableName: aws.String(s.cfg.Table), Key: key(keyItemPK(dk), "k"),
			UpdateExpression: aws.String(update), ExpressionAttributeValues: vals}
		if cur.exists {
			in.ConditionExpression = aws.String("rev = :rev AND ep <= :ep")
			vals[":rev"] = num(cur.rev)
		} else {
			in.ConditionExpression = aws.String("attribute_not_exists(pk)")
		}
		rctx, cancel := s.request(ctx)
		_, err = s.db.UpdateItem(rctx, in)
		cancel()
		if err == nil {
			s.cacheKey(dk, keyCache{ks: next, rev: cur.rev + 1, exists: true})
			return nil
		}
		if !conditionFailed(err) {
			s.forgetKey(dk)
			return s.classify(ctx, "write key state", err)
		}
		// Changed since it was read: by a newer holder of the shard (the
		// fence), or the cache was stale. Read it again and see which.
		now, storedEp, err := s.readKey(ctx, dk)
		if err != nil {
			return err
		}
		if now.exists && storedEp > ep {
			return fmt.Errorf("a newer holder of shard %d wrote the key state: %w", shard, ErrLeaseLost)
		}
		if attempt >= 4 {
			return &engine.Error{Class: engine.Transient, Reason: engine.ReasonOther,
				Err: fmt.Errorf("dynamodb table %q: the key state of %s keeps changing under this node", s.cfg.Table, op)}
		}
	}
}

// keyMoves reports whether saving op moves its destination key's state:
// a completed op, or a late op whose late version is written (in flight,
// with its replica) before the newest is put back on top of it.
// readKey reads a key state strongly consistently; it returns the epoch
// that wrote it too.
func (s *Store) readKey(ctx context.Context, dk string) (keyCache, int64, error) {
	item, err := s.readKeyItem(ctx, dk)
	if err != nil {
		return keyCache{}, 0, err
	}
	if item == nil {
		s.cacheKey(dk, keyCache{})
		return keyCache{}, 0, nil
	}
	kc := keyCache{rev: getN(item, "rev"), exists: true}
	if err := json.Unmarshal([]byte(getS(item, "ks")), &kc.ks); err != nil {
		return keyCache{}, 0, fmt.Errorf("dynamodb table %q: key state of %q: %w", s.cfg.Table, dk, err)
	}
	s.cacheKey(dk, kc)
	return kc, getN(item, attrEpoch), nil
}

func (s *Store) readKeyItem(ctx context.Context, dk string) (map[string]types.AttributeValue, error) {
	rctx, cancel := s.request(ctx)
	defer cancel()
	out, err := s.db.GetItem(rctx, &dynamodb.GetItemInput{
		TableName: aws.String(s.cfg.Table), Key: key(keyItemPK(dk), "k"), ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		return nil, s.classify(ctx, "read key state", err)
	}
	return out.Item, nil
}

func (s *Store) cacheKey(dk string, kc keyCache) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.keys) >= maxKeyCache {
		clear(s.keys)
	}
	s.keys[dk] = kc
}

func (s *Store) forgetKey(dk string) {
	s.mu.Lock()
	delete(s.keys, dk)
	s.mu.Unlock()
}

// LastWritten implements engine.StateStore: a strongly consistent read.
func (s *Store) LastWritten(ctx context.Context, destKeyID string) (engine.KeyState, bool, error) {
	kc, _, err := s.readKey(ctx, destKeyID)
	if err != nil {
		return engine.KeyState{}, false, fmt.Errorf("last written to %q: %w", destKeyID, err)
	}
	return kc.ks, kc.exists, nil
}

// ownedLocked lists the shards whose ops this node hands out now.
func (s *Store) ownedLocked(now time.Time) map[int]int64 {
	out := map[int]int64{}
	for sh, l := range s.held {
		if !l.releasing && now.Before(s.deadline(l)) && !now.Before(l.settleUntil) {
			out[sh] = l.epoch
		}
	}
	return out
}

// markSuspectLocked gives an op of a shard taken from an expired lease a
// write mark, when it was recorded before the takeover: the previous
// owner may have written it, so the engine looks for a replica first.
func markSuspectLocked(l *lease, op *engine.Op) {
	if l == nil || l.suspectBefore.IsZero() || !op.WriteStarted.IsZero() {
		return
	}
	if op.Seq != 0 && !seqTime(op.Seq).Before(l.suspectBefore) {
		return
	}
	op.WriteStarted = op.Recorded
	if op.WriteStarted.IsZero() {
		op.WriteStarted = time.Unix(0, 0)
	}
}

// Pending implements engine.StateStore for a cluster: it returns up to
// limit unfinished ops of origin from the shards this node owns now that
// it has not handed out yet, oldest arrival first across shards, and
// whether there may be more. after is ignored: the store itself remembers
// what it handed out, until Save records the op finished or the shard is
// lost. The queue index it reads is eventually consistent: an op finished
// a moment ago may still come back (Current tells), and a new one may show
// up a moment late. Ops of a shard taken from an expired lease come with
// WriteStarted set.
func (s *Store) Pending(ctx context.Context, origin engine.Origin, after uint64, limit int) ([]*engine.Op, bool, error) {
	if limit <= 0 {
		return nil, false, nil
	}
	now := time.Now()
	s.mu.Lock()
	owned := s.ownedLocked(now)
	skip := make(map[string]bool, len(s.handed)+len(s.recent))
	for id := range s.handed {
		skip[id] = true
	}
	for id, at := range s.recent {
		if now.Sub(at) > recentFor {
			delete(s.recent, id)
			continue
		}
		skip[id] = true
	}
	var scans []*pendingScan
	for sh := range owned {
		sc := &pendingScan{shard: sh}
		if c := s.cursors[cursorKey{sh, origin}]; c != nil && now.Before(c.rescan) {
			sc.from, sc.fromSet = c.seq, true
		}
		scans = append(scans, sc)
	}
	s.mu.Unlock()
	slices.SortFunc(scans, func(a, b *pendingScan) int { return cmp.Compare(a.shard, b.shard) })

	// Rounds: each shard with more gets a share of what is still wanted,
	// so that a big backlog in one shard is not read in every shard.
	prefix := originDigit(origin)
	total := 0
	for total < limit {
		var open []*pendingScan
		for _, sc := range scans {
			if !sc.done {
				open = append(open, sc)
			}
		}
		if len(open) == 0 {
			break
		}
		share := (limit - total + len(open) - 1) / len(open)
		err := parallel(ctx, len(open), func(ctx context.Context, i int) error {
			return s.scanPending(ctx, open[i], prefix, share, skip)
		})
		if err != nil {
			return nil, false, err
		}
		total = 0
		for _, sc := range scans {
			total += len(sc.ops)
		}
	}
	type cand struct {
		op *engine.Op
		sc *pendingScan
		i  int
	}
	var all []cand
	more := false
	for _, sc := range scans {
		for i, op := range sc.ops {
			all = append(all, cand{op, sc, i})
		}
		if !sc.done {
			more = true
		}
	}
	slices.SortStableFunc(all, func(a, b cand) int { return cmp.Compare(a.op.Seq, b.op.Seq) })
	if len(all) > limit {
		all, more = all[:limit], true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*engine.Op
	taken := map[*pendingScan]int{} // a prefix of each scan's ops
	for _, c := range all {
		taken[c.sc] = max(taken[c.sc], c.i+1)
		l := s.held[c.sc.shard]
		if l == nil || l.releasing || l.epoch != owned[c.sc.shard] {
			continue // lost meanwhile
		}
		id := c.op.ID()
		if _, dup := s.handed[id]; dup {
			continue // claimed meanwhile
		}
		s.handed[id] = handedOp{shard: c.sc.shard, origin: origin}
		markSuspectLocked(l, c.op)
		out = append(out, c.op)
	}
	// Move each shard's cursor past what was handed out: everything
	// before it there was handed out or has finished.
	for _, sc := range scans {
		ck := cursorKey{sc.shard, origin}
		c := s.cursors[ck]
		if c == nil || !sc.fromSet {
			c = &shardCursor{rescan: now.Add(s.rescan)}
			s.cursors[ck] = c
		}
		through := sc.lastSeen
		if n := taken[sc]; n < len(sc.ops) {
			through = sc.before[n]
		}
		c.seq = max(c.seq, through)
	}
	return out, more, nil
}

// pendingScan reads one shard's queue for Pending.
type pendingScan struct {
	shard   int
	from    uint64 // read after this Seq (when fromSet)
	fromSet bool
	next    map[string]types.AttributeValue
	done    bool
	ops     []*engine.Op
	// before[i] is the Seq of the last entry read before ops[i] (all
	// entries up to it were skipped); lastSeen is the last entry read.
	before   []uint64
	lastSeen uint64
}

func (s *Store) scanPending(ctx context.Context, sc *pendingScan, prefix string, share int, skip map[string]bool) error {
	want := len(sc.ops) + share
	for len(sc.ops) < want && !sc.done {
		vals := map[string]types.AttributeValue{":q": str(queuePending(sc.shard)), ":o": str(prefix)}
		cond := "q = :q AND begins_with(qs, :o)"
		if sc.fromSet {
			// qs is the origin digit and the Seq in fixed-width hex: the
			// range is every later Seq of this origin.
			cond = "q = :q AND qs BETWEEN :from AND :to"
			vals = map[string]types.AttributeValue{":q": str(queuePending(sc.shard)),
				":from": str(prefix + seqHex(sc.from+1)), ":to": str(prefix + "g")}
		}
		rctx, cancel := s.request(ctx)
		out, err := s.db.Query(rctx, &dynamodb.QueryInput{
			TableName: aws.String(s.cfg.Table), IndexName: aws.String(indexQueue),
			KeyConditionExpression: aws.String(cond), ExpressionAttributeValues: vals,
			ExclusiveStartKey: sc.next, Limit: aws.Int32(int32(min(max(share*2, 50), 500))),
		})
		cancel()
		if err != nil {
			return s.classify(ctx, "read pending operations", err)
		}
		for _, item := range out.Items {
			op, err := decodeOp(item)
			if err != nil {
				return err
			}
			prev := sc.lastSeen
			sc.lastSeen = max(sc.lastSeen, op.Seq)
			if !unfinished(op.State) || skip[op.ID()] {
				continue
			}
			sc.ops = append(sc.ops, op)
			sc.before = append(sc.before, prev)
		}
		sc.next = out.LastEvaluatedKey
		sc.done = sc.next == nil
	}
	return nil
}

// Claim takes ops this node has just recorded (Record's result) for the
// engine to run at once, as a single node does: it returns those of shards
// this node owns that it has not handed out yet, and marks them handed
// out. The others wait in the table for their shard's owner.
func (s *Store) Claim(ops []*engine.Op) []*engine.Op {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	owned := s.ownedLocked(now)
	var out []*engine.Op
	for _, op := range ops {
		sh := shardOf(op.DestKeyID(), s.shards)
		if _, ok := owned[sh]; !ok || !unfinished(op.State) {
			continue
		}
		id := op.ID()
		if _, dup := s.handed[id]; dup {
			continue
		}
		s.handed[id] = handedOp{shard: sh, origin: op.Origin}
		markSuspectLocked(s.held[sh], op)
		out = append(out, op)
	}
	return out
}

// Current returns the op's record as stored now (strongly consistent), or
// nil when there is none. The engine calls it before running an op it got
// from Pending: the queue index may still list an op that has finished.
// An op whose destination key state says it completed (a node stopped
// between the two writes of its completion) is completed here.
func (s *Store) Current(ctx context.Context, op *engine.Op) (*engine.Op, error) {
	item, err := s.getOpItem(ctx, op)
	if err != nil {
		return nil, fmt.Errorf("current state of %s: %w", op, err)
	}
	if item == nil {
		return nil, nil
	}
	cur, err := decodeOp(item)
	if err != nil {
		return nil, err
	}
	if cur.WriteStarted.IsZero() {
		cur.WriteStarted = op.WriteStarted
	}
	if unfinished(cur.State) && !cur.WriteStarted.IsZero() {
		if done, err := s.repair(ctx, cur); err != nil {
			return nil, fmt.Errorf("current state of %s: %w", op, err)
		} else if done {
			return cur, nil
		}
	}
	s.mu.Lock()
	s.finishedLocked(cur)
	s.mu.Unlock()
	return cur, nil
}

// repair completes an op whose key state moved for it although the op
// itself was not written completed (Save stopped between its two writes).
func (s *Store) repair(ctx context.Context, op *engine.Op) (bool, error) {
	item, err := s.readKeyItem(ctx, op.DestKeyID())
	if err != nil || item == nil {
		return false, err
	}
	pk, sk := opKey(op)
	if getS(item, "lop") != pk+"|"+sk {
		return false, nil
	}
	shard := shardOf(op.DestKeyID(), s.shards)
	ep, err := s.fence(shard)
	if err != nil {
		return false, nil // its owner repairs it
	}
	op.State, op.Replica, op.OnTopReplica, op.Reason, op.NextAttempt = engine.Completed, getS(item, "lrep"), getS(item, "lont"), "", time.Time{}
	if t, err := time.Parse(time.RFC3339Nano, getS(item, "lfin")); err == nil {
		op.Finished = t
	} else {
		op.Finished = time.Now()
	}
	if err := s.putOp(ctx, op, shard, ep); err != nil {
		return false, err
	}
	s.log.Info("completed an operation whose completion was cut short", "key", op.Key, "version", op.VersionID, "replica", op.Replica)
	return true, nil
}

// OpsOf returns every op recorded for a rule and source version: the
// first copy, later passes and, for the null version, every write (one
// strongly consistent query).
func (s *Store) OpsOf(rule, bucket, key, version string) ([]*engine.Op, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*s.cfg.RequestTimeout)
	defer cancel()
	probe := &engine.Op{Rule: rule, Bucket: bucket, Key: key, VersionID: version}
	pk, _ := opKey(probe)
	items, err := s.queryAll(ctx, &dynamodb.QueryInput{
		TableName: aws.String(s.cfg.Table), ConsistentRead: aws.Bool(true),
		KeyConditionExpression:    aws.String("pk = :pk"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":pk": str(pk)},
	})
	if err != nil {
		return nil, s.classify(ctx, "read operations of "+key, err)
	}
	var ops []*engine.Op
	for _, it := range items {
		op, err := decodeOp(it)
		if err != nil {
			return nil, err
		}
		// The digest shares a partition only by accident otherwise.
		if op.Rule == rule && op.Bucket == bucket && op.Key == key && op.VersionID == version {
			ops = append(ops, op)
		}
	}
	slices.SortFunc(ops, func(a, b *engine.Op) int { return cmp.Compare(a.Seq, b.Seq) })
	return ops, nil
}

// Retry implements engine.StateStore for the whole cluster: failed ops of
// every shard (all, or those of the given source keys) go back to
// pending, whichever node runs it. The write keeps the op's epoch and is
// conditional on the op still being failed: the shard's owner does not
// touch failed ops, so this races with nothing. The ops returned that
// belong to shards this node owns are marked handed out (the engine
// schedules those; the rest are its owners' to find).
func (s *Store) Retry(ctx context.Context, keys []string) ([]*engine.Op, error) {
	want := map[string]bool{}
	for _, k := range keys {
		want[k] = true
	}
	failed, err := s.queueItems(ctx, queueFailed)
	if err != nil {
		return nil, fmt.Errorf("retry: %w", err)
	}
	type job struct {
		op    *engine.Op
		shard int
		ep    int64
	}
	var jobs []job
	for _, item := range failed {
		op, err := decodeOp(item)
		if err != nil {
			return nil, err
		}
		if len(want) > 0 && !want[op.Key] {
			continue
		}
		jobs = append(jobs, job{op, int(getN(item, attrShard)), getN(item, attrEpoch)})
	}
	done := make([]bool, len(jobs))
	err = parallel(ctx, len(jobs), func(ctx context.Context, i int) error {
		j := jobs[i]
		op := j.op
		op.State, op.Attempts, op.NextAttempt, op.Reason, op.Finished = engine.Pending, 0, time.Time{}, "", time.Time{}
		item, err := opItem(op, j.shard, j.ep)
		if err != nil {
			return err
		}
		rctx, cancel := s.request(ctx)
		defer cancel()
		_, err = s.db.PutItem(rctx, &dynamodb.PutItemInput{
			TableName: aws.String(s.cfg.Table), Item: item,
			ConditionExpression:       aws.String("st = :failed AND ep = :ep"),
			ExpressionAttributeValues: map[string]types.AttributeValue{":failed": str(string(engine.Failed)), ":ep": num(j.ep)},
		})
		if conditionFailed(err) {
			return nil // retried by someone else meanwhile
		}
		if err != nil {
			return s.classify(ctx, "retry "+op.String(), err)
		}
		done[i] = true
		return nil
	})
	var out []*engine.Op
	s.mu.Lock()
	owned := s.ownedLocked(time.Now())
	for i, j := range jobs {
		if !done[i] {
			continue
		}
		out = append(out, j.op)
		if _, ok := owned[j.shard]; ok {
			s.handed[j.op.ID()] = handedOp{shard: j.shard, origin: j.op.Origin}
		}
	}
	s.mu.Unlock()
	if err != nil {
		return out, fmt.Errorf("retry: %w", err)
	}
	return out, nil
}

// queueItems reads one kind of queue entry of every shard.
func (s *Store) queueItems(ctx context.Context, queue func(int) string) ([]map[string]types.AttributeValue, error) {
	per := make([][]map[string]types.AttributeValue, s.shards)
	err := parallel(ctx, s.shards, func(ctx context.Context, sh int) error {
		items, err := s.queryAll(ctx, &dynamodb.QueryInput{
			TableName: aws.String(s.cfg.Table), IndexName: aws.String(indexQueue),
			KeyConditionExpression:    aws.String("q = :q"),
			ExpressionAttributeValues: map[string]types.AttributeValue{":q": str(queue(sh))},
		})
		if err != nil {
			return s.classify(ctx, "read the queue index", err)
		}
		per[sh] = items
		return nil
	})
	if err != nil {
		return nil, err
	}
	var all []map[string]types.AttributeValue
	for _, p := range per {
		all = append(all, p...)
	}
	return all, nil
}

// BeginRun implements engine.StateStore. Crash suspicion is per shard in a
// cluster (a shard taken from an expired lease hands its ops out as
// possibly written), so this only announces the node; crashed is false.
func (s *Store) BeginRun(ctx context.Context) (bool, error) {
	rctx, cancel := s.request(ctx)
	defer cancel()
	return false, s.heartbeat(rctx, false)
}

// EndRun implements engine.StateStore; Release marks the node stopped.
func (s *Store) EndRun(ctx context.Context) error { return nil }

// SuspectThrough implements engine.StateStore: 0, see BeginRun.
func (s *Store) SuspectThrough(ctx context.Context) (uint64, error) { return 0, nil }

// Backfill cursors: one item per rule, written by whichever node runs the
// backfill (not fenced: backfill is not sharded).

// LoadCursor returns the backfill cursor of a rule (zero when none).
func (s *Store) LoadCursor(rule string) (engine.Cursor, error) {
	var c engine.Cursor
	ctx, cancel := s.request(context.Background())
	defer cancel()
	out, err := s.db.GetItem(ctx, &dynamodb.GetItemInput{
		TableName: aws.String(s.cfg.Table), Key: key(pkCursor, rule), ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		return c, s.classify(ctx, "read the backfill cursor of rule "+rule, err)
	}
	if out.Item == nil {
		return c, nil
	}
	err = json.Unmarshal([]byte(getS(out.Item, "c")), &c)
	return c, err
}

// SaveCursor stores a backfill cursor.
func (s *Store) SaveCursor(rule string, c engine.Cursor) error {
	raw, err := json.Marshal(c)
	if err != nil {
		return err
	}
	item := key(pkCursor, rule)
	item["c"] = str(string(raw))
	ctx, cancel := s.request(context.Background())
	defer cancel()
	_, err = s.db.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(s.cfg.Table), Item: item})
	return s.classify(ctx, "save the backfill cursor of rule "+rule, err)
}

// ResetCursor forgets a rule's backfill position.
func (s *Store) ResetCursor(rule string) error {
	ctx, cancel := s.request(context.Background())
	defer cancel()
	_, err := s.db.DeleteItem(ctx, &dynamodb.DeleteItemInput{TableName: aws.String(s.cfg.Table), Key: key(pkCursor, rule)})
	return s.classify(ctx, "reset the backfill cursor of rule "+rule, err)
}

// Cursors returns every rule's backfill cursor.
func (s *Store) Cursors(ctx context.Context) (map[string]engine.Cursor, error) {
	items, err := s.queryAll(ctx, &dynamodb.QueryInput{
		TableName: aws.String(s.cfg.Table), ConsistentRead: aws.Bool(true),
		KeyConditionExpression:    aws.String("pk = :pk"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":pk": str(pkCursor)},
	})
	if err != nil {
		return nil, s.classify(ctx, "read backfill cursors", err)
	}
	out := map[string]engine.Cursor{}
	for _, it := range items {
		var c engine.Cursor
		if err := json.Unmarshal([]byte(getS(it, "c")), &c); err != nil {
			return nil, err
		}
		out[getS(it, attrSK)] = c
	}
	return out, nil
}
