package dynamostate

import (
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/s3replicad/s3replicad/checkpoint"
	"github.com/s3replicad/s3replicad/engine"
)

// Counters. Pending, in-flight and failed ops are counted exactly from
// the queue index. Completed, skipped and superseded ops (and late
// versions) are counted by
// each node as it saves them and added to counter items (one per rule and
// slot; a node writes one slot) every few seconds: a node that dies loses
// the counts of its last unflushed seconds, and a flush whose answer was
// lost and that is sent again counts twice. They go down as Prune deletes
// finished ops, as checkpoint's do.

// flushEvery is how often a node adds its counts to the counter items.
const flushEvery = 5 * time.Second

// counterSlots spreads the counter items of a rule so that nodes seldom
// write the same one.
const counterSlots = 8

var countedStates = []engine.State{engine.Completed, engine.Skipped, engine.Superseded}

// stateLate is the counter of late versions written with the newest put
// back on top (checkpoint's LateVersions); like checkpoint's, it only
// grows.
const stateLate engine.State = "late_versions"

// flushedCounters are the counter items' attributes.
var flushedCounters = append(slices.Clone(countedStates), stateLate)

func (s *Store) countLateLocked(rule string) {
	if s.counts[rule] == nil {
		s.counts[rule] = map[engine.State]int64{}
	}
	s.counts[rule][stateLate]++
}

func counted(st engine.State) bool { return slices.Contains(countedStates, st) }

// countLocked notes an op of rule that went from old ("" when new) to new.
func (s *Store) countLocked(rule string, old, new engine.State) {
	if old == new {
		return
	}
	m := s.counts[rule]
	if m == nil {
		m = map[engine.State]int64{}
		s.counts[rule] = m
	}
	if counted(old) {
		m[old]--
	}
	if counted(new) {
		m[new]++
	}
}

func (s *Store) counterSlot() string {
	h := fnv.New32a()
	_, _ = io.WriteString(h, s.cfg.NodeID)
	return fmt.Sprint(h.Sum32() % counterSlots)
}

// flushCounters adds the counts noted since the last flush to the table
// (when due, or always when force).
func (s *Store) flushCounters(ctx context.Context, force bool) {
	s.mu.Lock()
	if !force && time.Since(s.flushed) < flushEvery {
		s.mu.Unlock()
		return
	}
	s.flushed = time.Now()
	pending := s.counts
	s.counts = map[string]map[engine.State]int64{}
	s.mu.Unlock()
	for rule, m := range pending {
		var adds []string
		vals := map[string]types.AttributeValue{}
		for i, st := range flushedCounters {
			if m[st] != 0 {
				adds = append(adds, fmt.Sprintf("%s :v%d", st, i))
				vals[fmt.Sprintf(":v%d", i)] = num(m[st])
			}
		}
		if len(adds) == 0 {
			continue
		}
		vals[":rule"] = str(rule)
		rctx, cancel := s.request(ctx)
		_, err := s.db.UpdateItem(rctx, &dynamodb.UpdateItemInput{
			TableName: aws.String(s.cfg.Table), Key: key(pkCount, rule+"#"+s.counterSlot()),
			UpdateExpression:          aws.String("SET #r = :rule ADD " + strings.Join(adds, ", ")),
			ExpressionAttributeNames:  map[string]string{"#r": "rule"},
			ExpressionAttributeValues: vals,
		})
		cancel()
		if err != nil {
			// Keep them for the next flush.
			s.mu.Lock()
			for st, n := range m {
				if s.counts[rule] == nil {
					s.counts[rule] = map[engine.State]int64{}
				}
				s.counts[rule][st] += n
			}
			s.mu.Unlock()
			s.logEvery("cannot flush the finished-op counters; trying again", err)
		}
	}
}

// Status is the cluster's state summarised: checkpoint's shape (so that
// `status -json` reads the same with either backend) plus the nodes.
type Status struct {
	checkpoint.Status
	Shards int          `json:"shards"`
	Nodes  []NodeStatus `json:"nodes"`
}

// NodeStatus is one node as its item and the lease items tell.
type NodeStatus struct {
	ID   string `json:"id"`
	Host string `json:"host"`
	// LastRenewal is when the node last wrote its heartbeat, by its own
	// clock.
	LastRenewal time.Time `json:"last_renewal"`
	Started     time.Time `json:"started"`
	Leases      int       `json:"leases"`
	Held        int64     `json:"ops_held"`
	InFlight    int64     `json:"in_flight"`
	// Live says the node renewed within a lease of the status's time (by
	// the reader's clock: for display only).
	Live    bool `json:"live"`
	Stopped bool `json:"stopped"`
}

// unfinishedSummary is what the queue index says of the unfinished ops.
type unfinishedSummary struct {
	ops, bytes map[string]int64
	byState    map[string]map[engine.State]int64
	origins    map[engine.Origin]int64
	oldest     time.Time
}

func (s *Store) summariseUnfinished(ctx context.Context) (*unfinishedSummary, error) {
	items, err := s.queueItems(ctx, queuePending)
	if err != nil {
		return nil, err
	}
	sum := &unfinishedSummary{ops: map[string]int64{}, bytes: map[string]int64{},
		byState: map[string]map[engine.State]int64{}, origins: map[engine.Origin]int64{}}
	for _, it := range items {
		op, err := decodeOp(it)
		if err != nil {
			return nil, err
		}
		if !unfinished(op.State) {
			continue
		}
		sum.ops[op.Rule]++
		if op.Size > 0 {
			sum.bytes[op.Rule] += op.Size
		}
		if sum.byState[op.Rule] == nil {
			sum.byState[op.Rule] = map[engine.State]int64{}
		}
		sum.byState[op.Rule][op.State]++
		sum.origins[op.Origin]++
		if since := op.Since(); !since.IsZero() && (sum.oldest.IsZero() || since.Before(sum.oldest)) {
			sum.oldest = since
		}
	}
	return sum, nil
}

// Counts implements engine.StateStore: the unfinished ops of the whole
// cluster and their bytes, by rule, from the queue index.
func (s *Store) Counts(ctx context.Context) (map[string]int64, map[string]int64, error) {
	sum, err := s.summariseUnfinished(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("count unfinished operations: %w", err)
	}
	return sum.ops, sum.bytes, nil
}

// oldestScan is how many of the first unfinished ops of each shard and
// origin the oldest pending age is taken from (as checkpoint does).
const oldestScan = 64

// oldestCache is how long OldestPending's answer is reused: the metrics
// scrape asks for it, and it costs a query per shard.
const oldestCache = 5 * time.Second

// OldestPending implements engine.StateStore for the whole cluster: the
// earliest event time among the ops that arrived first in every shard.
func (s *Store) OldestPending(ctx context.Context) (time.Time, bool, error) {
	s.mu.Lock()
	if !s.oldest.at.IsZero() && time.Since(s.oldest.at) < oldestCache {
		v, ok := s.oldest.value, s.oldest.ok
		s.mu.Unlock()
		return v, ok, nil
	}
	s.mu.Unlock()
	per := make([]time.Time, s.shards*2)
	err := parallel(ctx, s.shards*2, func(ctx context.Context, i int) error {
		origin := engine.OriginEvent
		if i%2 == 1 {
			origin = engine.OriginBackfill
		}
		rctx, cancel := s.request(ctx)
		defer cancel()
		out, err := s.db.Query(rctx, &dynamodb.QueryInput{
			TableName: aws.String(s.cfg.Table), IndexName: aws.String(indexQueue),
			KeyConditionExpression: aws.String("q = :q AND begins_with(qs, :o)"),
			ExpressionAttributeValues: map[string]types.AttributeValue{
				":q": str(queuePending(i / 2)), ":o": str(originDigit(origin))},
			Limit: aws.Int32(oldestScan),
		})
		if err != nil {
			return s.classify(ctx, "read the oldest pending operations", err)
		}
		for _, it := range out.Items {
			op, err := decodeOp(it)
			if err != nil {
				return err
			}
			if since := op.Since(); unfinished(op.State) && !since.IsZero() && (per[i].IsZero() || since.Before(per[i])) {
				per[i] = since
			}
		}
		return nil
	})
	if err != nil {
		return time.Time{}, false, err
	}
	var oldest time.Time
	for _, t := range per {
		if !t.IsZero() && (oldest.IsZero() || t.Before(oldest)) {
			oldest = t
		}
	}
	s.mu.Lock()
	s.oldest.at, s.oldest.value, s.oldest.ok = time.Now(), oldest, !oldest.IsZero()
	s.mu.Unlock()
	return oldest, !oldest.IsZero(), nil
}

// maxFailedListed bounds the failed items Status lists (counts stay exact).
const maxFailedListed = 1000

// Status summarises the whole cluster: exact counts of unfinished and
// failed ops from the queue index (it reads every entry: its cost grows
// with the backlog, not with the ops finished), counters for the finished
// ones, uploads in progress, backfill cursors and the nodes.
func (s *Store) Status(ctx context.Context, now time.Time) (*Status, error) {
	// This node's own counts first, so that what it just did shows.
	s.flushCounters(ctx, true)
	st := &Status{Status: *checkpoint.EmptyStatus(now), Shards: s.shards, Nodes: []NodeStatus{}}
	rule := func(id string) checkpoint.RuleStatus {
		rs, ok := st.Rules[id]
		if !ok {
			rs = checkpoint.RuleStatus{Counts: map[engine.State]int64{}}
			for _, state := range engine.States {
				rs.Counts[state] = 0
			}
		}
		return rs
	}
	sum, err := s.summariseUnfinished(ctx)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	for id, m := range sum.byState {
		rs := rule(id)
		for state, n := range m {
			rs.Counts[state] += n
			st.Counts[state] += n
		}
		rs.BytesPending += sum.bytes[id]
		st.BytesPending += sum.bytes[id]
		st.Rules[id] = rs
	}
	st.BackfillPending = sum.origins[engine.OriginBackfill]
	if !sum.oldest.IsZero() {
		o := sum.oldest.UTC()
		st.OldestPending = &o
		st.OldestPendingAge = max(now.Sub(sum.oldest).Seconds(), 0)
	}
	failed, err := s.queueItems(ctx, queueFailed)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	var failedOps []*engine.Op
	for _, it := range failed {
		op, err := decodeOp(it)
		if err != nil {
			return nil, err
		}
		failedOps = append(failedOps, op)
		rs := rule(op.Rule)
		rs.Counts[engine.Failed]++
		st.Rules[op.Rule] = rs
		st.Counts[engine.Failed]++
	}
	slices.SortFunc(failedOps, func(a, b *engine.Op) int { return a.Finished.Compare(b.Finished) })
	for _, op := range failedOps {
		if len(st.Failed) >= maxFailedListed {
			break
		}
		st.Failed = append(st.Failed, checkpoint.FailedItem{Rule: op.Rule, Bucket: op.Bucket, Key: op.Key, VersionID: op.VersionID,
			Reason: op.Reason, Error: op.LastError, Attempts: op.Attempts, Failed: op.Finished})
	}
	counters, err := s.queryAll(ctx, &dynamodb.QueryInput{
		TableName: aws.String(s.cfg.Table), ConsistentRead: aws.Bool(true),
		KeyConditionExpression:    aws.String("pk = :pk"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":pk": str(pkCount)},
	})
	if err != nil {
		return nil, s.classify(ctx, "status: read counters", err)
	}
	for _, it := range counters {
		id := getS(it, "rule")
		rs := rule(id)
		for _, state := range countedStates {
			n := getN(it, string(state))
			rs.Counts[state] += n
			st.Counts[state] += n
		}
		late := getN(it, string(stateLate))
		rs.LateVersions += late
		st.LateVersions += late
		st.Rules[id] = rs
	}
	uploads, err := s.queueItems(ctx, queueUpload)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	st.Uploads = len(uploads)
	if st.Backfill, err = s.Cursors(ctx); err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	nodes, err := s.readNodes(ctx)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	leases, err := s.readLeases(ctx)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	held := map[string]int{}
	for _, l := range leases {
		if l.owner != "" {
			held[l.owner]++
		}
	}
	for _, n := range nodes {
		ns := NodeStatus{ID: n.id, Host: n.host, Leases: held[n.id], Held: n.held, InFlight: n.inFlight, Stopped: n.stopped}
		ns.LastRenewal, _ = time.Parse(time.RFC3339Nano, n.renewed)
		ns.Started, _ = time.Parse(time.RFC3339Nano, n.started)
		ns.Live = !n.stopped && absDur(now.Sub(ns.LastRenewal)) < s.cfg.Lease
		st.DaemonRunning = st.DaemonRunning || ns.Live
		st.Nodes = append(st.Nodes, ns)
	}
	slices.SortFunc(st.Nodes, func(a, b NodeStatus) int { return strings.Compare(a.ID, b.ID) })
	return st, nil
}
