package dynamostate

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// Leases. Each shard has one lease item: its owner, an epoch that grows by
// one on every change of owner, a counter that grows on every write (the
// owner's renewals), and two flags: rel says the current owner got it from
// a clean release or handover (nothing of the previous owner's can still
// be in flight), want names a node that asks the owner for it.
//
// Every node reads all lease items and node items once per tick (Lease/8)
// and then, with a conditional write on the values it read:
//   - renews the leases it holds every other tick (condition: owner and
//     epoch are its own);
//   - takes a free lease (released cleanly, or never owned) at once;
//   - takes a lease whose counter has not moved for Lease on its own clock
//     (a dead or cut-off owner) — clocks of different nodes are never
//     compared;
//   - balances: a node with two or more leases fewer than another live
//     node marks one of that node's leases wanted; the owner hands it over
//     at its next tick, after the engine stopped writing for it (Handoff).
//
// Ownership in this process ends at the deadline Owned reports: the send
// time of the last successful renewal plus Lease minus a margin. A taker
// waits at least Lease after it saw the counter's last value, which it
// can only see after the renewal that set it was sent: the old owner has
// stopped by then, with the margin to spare for clock rate drift and a
// request still on the wire.

// lease is a shard this node holds.
type lease struct {
	epoch int64
	// renewed is the send time (this process's clock) of the last write
	// that moved the lease's counter and succeeded.
	renewed time.Time
	// suspectBefore is set when the shard was taken from an expired
	// lease: ops recorded before it may have been written by the
	// previous owner and are handed out as such.
	suspectBefore time.Time
	// settleUntil is, for a shard taken from an expired lease, when its
	// ops may run here: the previous owner stopped its requests a margin
	// before the lease expired, and a request it had sent may still be
	// finishing at the store; another margin lets it land, so that the
	// replica lookup before each write finds it.
	settleUntil time.Time

	releasing    bool
	releaseTo    string    // the node that wanted it ("" frees it)
	releaseBy    time.Time // when it goes without the engine's word
	releaseReady bool
	releaseClean bool
}

type leaseItem struct {
	shard   int
	owner   string
	epoch   int64
	cnt     int64
	rel     bool
	want    string
	renewed string
	// sus (unix nanoseconds) is the suspect time of the last takeover
	// from an expired lease: ops recorded before it may have been written
	// by the node that died. It stays on the item through clean handovers,
	// so that a node handed the shard before those ops ran still looks
	// for their replicas first.
	sus int64
}

type nodeItem struct {
	id, host, renewed   string
	hb                  int64
	stopped             bool
	held, inFlight, nLe int64
	started             string
}

// sighting is when this node last saw a value change.
type sighting struct {
	val string
	at  time.Time
}

func (s *Store) margin() time.Duration {
	return min(max(s.cfg.Lease/4, 2*time.Second), s.cfg.Lease/2)
}

// every is the lease manager's tick: it reads the lease items this often,
// so that an expired lease is seen (and taken) at most a tick late.
func (s *Store) every() time.Duration { return s.cfg.Lease / 8 }

// renewEvery is how often a lease is renewed (and the heartbeat written):
// the writes, which cost more than the reads, go every other tick.
func (s *Store) renewEvery() time.Duration { return s.cfg.Lease / 4 }

// renewDue reports whether a write made at last is old enough to be made
// again at this tick.
func (s *Store) renewDue(last time.Time, now time.Time) bool {
	return now.Sub(last) >= s.renewEvery()-s.every()/2
}

func (s *Store) deadline(l *lease) time.Time { return l.renewed.Add(s.cfg.Lease - s.margin()) }

// Owned reports whether this node holds destKeyID's shard now, and the
// local time by which it must have stopped writing to the destination
// for it (every request for the key should carry it as its deadline).
// Past the deadline Owned reports false, even while the table cannot be
// reached to learn more; a shard being handed over is not owned either.
func (s *Store) Owned(destKeyID string) (time.Time, bool) {
	shard := shardOf(destKeyID, s.shards)
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.held[shard]
	if l == nil || l.releasing {
		return time.Time{}, false
	}
	dl := s.deadline(l)
	if now := time.Now(); !now.Before(dl) || now.Before(l.settleUntil) {
		return time.Time{}, false
	}
	return dl, true
}

// Leads reports whether this node holds shard 0 now: the one node that
// reports cluster-wide figures (the pending gauges), so that a sum over the
// nodes counts them once.
func (s *Store) Leads() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.held[0]
	return l != nil && !l.releasing && time.Now().Before(s.deadline(l))
}

// Shard returns the shard a destination key belongs to.
func (s *Store) Shard(destKeyID string) int { return shardOf(destKeyID, s.shards) }

// Shards is the table's number of shards.
func (s *Store) Shards() int { return s.shards }

// Held lists the shards this node holds now (for tests and status).
func (s *Store) Held() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int
	for sh, l := range s.held {
		if !l.releasing && time.Now().Before(s.deadline(l)) {
			out = append(out, sh)
		}
	}
	slices.Sort(out)
	return out
}

// LeaseStats counts what happened to this node's leases since Open (for
// metrics: a node whose leases expire locally or whose renewals fail is
// in trouble with the table).
type LeaseStats struct {
	Held int // now
	// Gained counts leases taken or received; GainedSuspect those whose
	// previous owner may still have had writes landing (taken after
	// expiry, or regained after this node gave them up locally).
	Gained, GainedSuspect int64
	// TakenOver counts leases taken from a node that stopped renewing.
	TakenOver int64
	// Lost counts leases another node took; Expired those this node gave
	// up because it could not renew them before its deadline.
	Lost, Expired int64
	// HandedOver counts leases handed over cleanly (asked for, Release).
	HandedOver    int64
	RenewFailures int64
}

// Peers counts the nodes as this node last saw them: Live (itself
// included) renew their heartbeat; Silent have not renewed it for a lease
// without stopping cleanly (dead, or cut off from the table).
type Peers struct{ Live, Silent int }

// Peers returns what this node last saw of the cluster's nodes.
func (s *Store) Peers() Peers {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peers
}

// LeaseStats returns the lease counters.
func (s *Store) LeaseStats() LeaseStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Held = len(s.held)
	return st
}

// Changes is signalled whenever shards are gained or lost; the engine
// then drops the ops of keys it no longer owns and asks Pending for more.
func (s *Store) Changes() <-chan struct{} { return s.changes }

func (s *Store) signal() {
	select {
	case s.changes <- struct{}{}:
	default:
	}
}

// SetHandoff sets what the store calls before it hands shards over to a
// node that asked for them: the engine stops starting writes for the keys
// lost reports, waits for the writes in flight on them, saves the write
// marks (Op.WriteStarted) of the ops of those keys it holds, and drops
// them. When it returns nil the shards go over cleanly (the new owner
// hands their ops out as they are); without a handoff, or when it fails,
// the store waits until its Owned deadline for them has passed and hands
// them over as a crash would (the new owner looks for replicas first).
func (s *Store) SetHandoff(f func(ctx context.Context, lost func(destKeyID string) bool) error) {
	s.mu.Lock()
	s.handoff = f
	s.mu.Unlock()
}

// SetActivity sets what the node item reports as this node's work: the
// ops the engine holds and those being copied now.
func (s *Store) SetActivity(f func() (held, inFlight int)) {
	s.mu.Lock()
	s.activity = f
	s.mu.Unlock()
}

// Run manages this node's leases until ctx ends: heartbeat, renewals,
// takeovers and balance, once every Lease/8. Without Release afterwards
// the leases expire after Lease and other nodes take them over.
func (s *Store) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return fmt.Errorf("dynamodb table %q: the lease manager is already running", s.cfg.Table)
	}
	defer s.running.Store(false)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.watchDeadlines(runCtx) }()
	defer wg.Wait()
	tick := time.NewTicker(s.every())
	defer tick.Stop()
	for {
		s.step(runCtx)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-s.kick:
		}
	}
}

// wake makes the lease manager take its next step now (a shard is ready
// to be handed over).
func (s *Store) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// watchDeadlines drops shards whose deadline passed without a renewal
// (the table is slow or unreachable), and says so at once: the engine
// must not wait for the next tick, which may be stuck on the network.
func (s *Store) watchDeadlines(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		next := now.Add(min(s.every()/2, 250*time.Millisecond))
		s.mu.Lock()
		for sh, l := range s.held {
			dl := s.deadline(l)
			if !now.Before(dl) {
				s.log.Warn("lease not renewed in time: stopped working on its shard", "shard", sh, "epoch", l.epoch)
				s.stats.Expired++
				s.loseLocked(sh)
			} else if dl.Before(next) {
				next = dl
			}
		}
		s.mu.Unlock()
		t.Reset(time.Until(next))
	}
}

// loseLocked forgets a shard: its ops are no longer handed out here.
func (s *Store) loseLocked(shard int) {
	l := s.held[shard]
	if l == nil {
		return
	}
	s.lastEpoch[shard] = l.epoch
	delete(s.held, shard)
	for id, h := range s.handed {
		if h.shard == shard {
			delete(s.handed, id)
		}
	}
	for ck := range s.cursors {
		if ck.shard == shard {
			delete(s.cursors, ck)
		}
	}
	s.signal()
}

func (s *Store) readLeases(ctx context.Context) ([]leaseItem, error) {
	items, err := s.queryAll(ctx, &dynamodb.QueryInput{
		TableName: aws.String(s.cfg.Table), ConsistentRead: aws.Bool(true),
		KeyConditionExpression:    aws.String("pk = :pk"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":pk": str(pkLease)},
	})
	if err != nil {
		return nil, s.classify(ctx, "read leases", err)
	}
	out := make([]leaseItem, 0, len(items))
	for _, it := range items {
		sh, err := strconv.Atoi(getS(it, attrSK))
		if err != nil || sh >= s.shards {
			continue
		}
		out = append(out, leaseItem{shard: sh, owner: getS(it, "owner"), epoch: getN(it, "ep"), cnt: getN(it, "cnt"),
			rel: getBool(it, "rel"), want: getS(it, "want"), renewed: getS(it, "renewed"), sus: getN(it, "sus")})
	}
	return out, nil
}

func (s *Store) readNodes(ctx context.Context) ([]nodeItem, error) {
	items, err := s.queryAll(ctx, &dynamodb.QueryInput{
		TableName: aws.String(s.cfg.Table), ConsistentRead: aws.Bool(true),
		KeyConditionExpression:    aws.String("pk = :pk"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":pk": str(pkNode)},
	})
	if err != nil {
		return nil, s.classify(ctx, "read nodes", err)
	}
	out := make([]nodeItem, 0, len(items))
	for _, it := range items {
		out = append(out, nodeItem{id: getS(it, attrSK), host: getS(it, "host"), renewed: getS(it, "renewed"),
			hb: getN(it, "hb"), stopped: getBool(it, "stopped"), held: getN(it, "held"), inFlight: getN(it, "inflight"),
			nLe: getN(it, "leases"), started: getS(it, "started")})
	}
	return out, nil
}

// heartbeat moves this node's counter: other nodes count it as live
// (for balance only) while it moves.
func (s *Store) heartbeat(ctx context.Context, stopped bool) error {
	s.mu.Lock()
	act := s.activity
	nheld := len(s.held)
	s.mu.Unlock()
	var held, inFlight int
	if act != nil {
		held, inFlight = act()
	}
	_, err := s.db.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName: aws.String(s.cfg.Table), Key: key(pkNode, s.cfg.NodeID),
		UpdateExpression: aws.String("SET host = :host, renewed = :now, leases = :n, held = :held, inflight = :inf, stopped = :stopped, " +
			"started = if_not_exists(started, :now) ADD hb :one"),
		ExpressionAttributeValues: map[string]types.AttributeValue{
			":host": str(s.cfg.Host), ":now": str(time.Now().UTC().Format(time.RFC3339Nano)), ":n": num(nheld),
			":held": num(held), ":inf": num(inFlight), ":stopped": boolean(stopped), ":one": num(1),
		},
	})
	return s.classify(ctx, "heartbeat", err)
}

// leaseWrite is one conditional write to a lease item decided by a step.
type leaseWrite struct {
	kind  string // renew, gain, take, want, handover
	item  leaseItem
	clean bool   // take/gain: the lease came cleanly; handover: goes cleanly
	to    string // handover: the new owner ("" frees it)
	clear bool   // renew: drop a stale want
}

func (s *Store) step(ctx context.Context) {
	s.stepMu.Lock()
	defer s.stepMu.Unlock()
	if s.released.Load() {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, max(s.every(), time.Second))
	defer cancel()
	leases, err := s.readLeases(sctx)
	var nodes []nodeItem
	if err == nil {
		nodes, err = s.readNodes(sctx)
	}
	if err != nil {
		if ctx.Err() == nil {
			s.logEvery("cannot read the lease table; shards are dropped at their deadline if this goes on", err)
		}
		return
	}
	now := time.Now()
	if s.renewDue(s.lastBeat, now) {
		if err := s.heartbeat(sctx, false); err != nil && ctx.Err() == nil {
			s.logEvery("cannot write this node's heartbeat", err)
		} else if err == nil {
			s.lastBeat = now
		}
	}
	writes := s.decide(leases, nodes, now)
	s.apply(sctx, writes)
	s.flushCounters(sctx, false)
	s.forgetNodes(sctx, leases, nodes, now)
}

// forgetNodes deletes the items of nodes that have not moved their
// heartbeat for forgetAfter (seen here) and hold no lease: every restart
// makes a new node id, and status should not list them for ever. Each
// delete is conditional on the heartbeat read, so a node that comes back
// meanwhile keeps its item.
func (s *Store) forgetNodes(ctx context.Context, leases []leaseItem, nodes []nodeItem, now time.Time) {
	s.mu.Lock()
	if now.Sub(s.lastCleanup) < s.forgetAfter/10 {
		s.mu.Unlock()
		return
	}
	s.lastCleanup = now
	holds := map[string]bool{}
	for _, l := range leases {
		holds[l.owner] = true
	}
	var gone []nodeItem
	for _, n := range nodes {
		if n.id != s.cfg.NodeID && !holds[n.id] && now.Sub(s.nodeSeen[n.id].at) >= s.forgetAfter {
			gone = append(gone, n)
		}
	}
	s.mu.Unlock()
	for _, n := range gone {
		_, err := s.db.DeleteItem(ctx, &dynamodb.DeleteItemInput{
			TableName: aws.String(s.cfg.Table), Key: key(pkNode, n.id),
			ConditionExpression:       aws.String("hb = :hb"),
			ExpressionAttributeValues: map[string]types.AttributeValue{":hb": num(n.hb)},
		})
		if err == nil {
			s.log.Info("forgot a node that stopped long ago", "gone", n.id, "host", n.host)
		}
	}
}

// logEvery logs table trouble at most once per lease period.
func (s *Store) logEvery(msg string, err error) {
	s.mu.Lock()
	due := time.Since(s.lastComplaint) >= s.cfg.Lease
	if due {
		s.lastComplaint = time.Now()
	}
	s.mu.Unlock()
	if due {
		s.log.Warn(msg, "table", s.cfg.Table, "err", err)
	}
}

// decide looks at what the table says and what this node holds, and
// returns the writes to make.
func (s *Store) decide(leases []leaseItem, nodes []nodeItem, now time.Time) []leaseWrite {
	s.mu.Lock()
	defer s.mu.Unlock()
	me := s.cfg.NodeID

	// Liveness (for balance only): a node is live while its heartbeat
	// counter moves, as seen here. A node seen for the first time counts
	// as live when the time it wrote is close to ours: comparing clocks
	// is fine for sharing work out, never for taking a lease over.
	live := map[string]bool{me: true}
	seenNodes := map[string]bool{}
	for _, n := range nodes {
		seenNodes[n.id] = true
		val := strconv.FormatInt(n.hb, 10)
		o, ok := s.nodeSeen[n.id]
		switch {
		case !ok:
			at := now.Add(-s.cfg.Lease)
			if t, err := time.Parse(time.RFC3339Nano, n.renewed); err == nil && absDur(time.Since(t)) < s.cfg.Lease {
				at = now
			}
			s.nodeSeen[n.id] = sighting{val: val, at: at}
		case o.val != val:
			s.nodeSeen[n.id] = sighting{val: val, at: now}
		}
		if n.id != me && !n.stopped && now.Sub(s.nodeSeen[n.id].at) < s.cfg.Lease {
			live[n.id] = true
		}
	}
	s.peers = Peers{Live: len(live)}
	for _, n := range nodes {
		if n.id != me && !n.stopped && !live[n.id] {
			s.peers.Silent++
		}
	}
	for id := range s.nodeSeen {
		if !seenNodes[id] {
			delete(s.nodeSeen, id)
		}
	}
	// Expiry: a lease's counter (with its owner and epoch) unchanged for
	// Lease on this node's clock, counted from when this node first saw
	// that value.
	for _, l := range leases {
		val := fmt.Sprintf("%s/%d/%d", l.owner, l.epoch, l.cnt)
		if o, ok := s.leaseSeen[l.shard]; !ok || o.val != val {
			s.leaseSeen[l.shard] = sighting{val: val, at: now}
		}
	}

	count := map[string]int{}
	for _, l := range leases {
		if l.owner != "" {
			count[l.owner]++
		}
	}
	for _, l := range s.held {
		if l.releasing {
			count[me]--
		}
	}
	nlive := len(live)
	ceil := (s.shards + nlive - 1) / nlive
	mine := count[me]

	var writes []leaseWrite
	var stealable []leaseItem
	wantOf := map[int]string{}
	for _, l := range leases {
		wantOf[l.shard] = l.want
	}
	for _, l := range leases {
		h := s.held[l.shard]
		sinceChange := now.Sub(s.leaseSeen[l.shard].at)
		switch {
		case l.owner == me && h != nil && h.epoch == l.epoch:
			switch {
			case h.releasing && h.releaseReady:
				to := h.releaseTo
				if to != "" && !live[to] {
					to = ""
				}
				writes = append(writes, leaseWrite{kind: "handover", item: l, to: to, clean: h.releaseClean})
			case h.releasing:
				// Without the engine's word, the shard goes at the deadline
				// (the engine's writes for it carried that deadline); an
				// engine that never answers does not keep it for ever.
				if (s.handoff == nil && !now.Before(h.releaseBy)) || now.After(h.releaseBy.Add(s.cfg.Lease)) {
					h.releaseReady, h.releaseClean = true, false
				}
				if s.renewDue(h.renewed, now) {
					writes = append(writes, leaseWrite{kind: "renew", item: l})
				}
			case l.want != "" && l.want != me && live[l.want] && mine-count[l.want] >= 2:
				s.startReleaseLocked(l.shard, h, l.want)
				mine--
				count[l.want]++
				if s.renewDue(h.renewed, now) {
					writes = append(writes, leaseWrite{kind: "renew", item: l})
				}
			default:
				// A request this node will not grant is dropped: the asker
				// may then ask another node.
				stale := l.want != "" && (l.want == me || !live[l.want] || mine-count[l.want] < 2)
				if stale || s.renewDue(h.renewed, now) {
					writes = append(writes, leaseWrite{kind: "renew", item: l, clear: stale})
				}
			}
		case l.owner == me:
			// The table says it is ours but this process does not hold it
			// (yet): handed over to us, or our own earlier tenure that we
			// gave up locally, or a takeover whose answer was lost.
			writes = append(writes, leaseWrite{kind: "gain", item: l, clean: l.rel && s.lastEpoch[l.shard] != l.epoch})
		case h != nil:
			s.log.Info("lease taken by another node", "shard", l.shard, "owner", l.owner, "epoch", l.epoch)
			s.stats.Lost++
			s.loseLocked(l.shard)
		case l.owner == "":
			if mine < ceil || sinceChange >= s.cfg.Lease {
				writes = append(writes, leaseWrite{kind: "take", item: l, clean: l.rel})
				mine++
			}
		case sinceChange >= s.cfg.Lease:
			// Expired: the owner stopped renewing (dead, or cut off).
			if mine < ceil || sinceChange >= 2*s.cfg.Lease {
				writes = append(writes, leaseWrite{kind: "take", item: l, clean: false})
				mine++
			}
		case live[l.owner] && (l.want == "" || !live[l.want]):
			stealable = append(stealable, l)
		}
	}
	// Balance: ask the busiest live nodes for leases while one holds two
	// or more than this node would with what it asked for already.
	for sh, at := range s.wants {
		if s.held[sh] != nil || now.Sub(at) > 2*s.cfg.Lease || wantOf[sh] != me {
			delete(s.wants, sh)
		}
	}
	expected := mine + len(s.wants)
	for {
		var best *leaseItem
		for i := range stealable {
			l := &stealable[i]
			if _, asked := s.wants[l.shard]; asked {
				continue
			}
			if count[l.owner]-expected >= 2 && (best == nil || count[l.owner] > count[best.owner]) {
				best = l
			}
		}
		if best == nil {
			break
		}
		writes = append(writes, leaseWrite{kind: "want", item: *best})
		s.wants[best.shard] = now
		count[best.owner]--
		expected++
	}
	return writes
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

// startReleaseLocked stops owning a shard (Owned reports false from now)
// and asks the engine to let go of it.
func (s *Store) startReleaseLocked(shard int, l *lease, to string) {
	l.releasing, l.releaseTo, l.releaseBy = true, to, s.deadline(l)
	s.log.Info("handing a shard over to a node that asked for it", "shard", shard, "to", to)
	s.signal()
	if s.handoff == nil {
		return
	}
	f := s.handoff
	epoch := l.epoch
	go func() {
		ctx, cancel := context.WithDeadline(context.Background(), l.releaseBy)
		defer cancel()
		err := f(ctx, func(destKeyID string) bool { return shardOf(destKeyID, s.shards) == shard })
		s.mu.Lock()
		defer s.mu.Unlock()
		if cur := s.held[shard]; cur != nil && cur.epoch == epoch && cur.releasing {
			if err != nil {
				s.log.Warn("the engine did not let go of a shard cleanly; it goes over at its deadline", "shard", shard, "err", err)
				// Ready at the deadline, as without a handoff.
				cur.releaseClean = false
				time.AfterFunc(time.Until(cur.releaseBy), func() {
					s.mu.Lock()
					cur.releaseReady = true
					s.mu.Unlock()
				})
				return
			}
			cur.releaseReady, cur.releaseClean = true, true
			s.wake()
		}
	}()
}

// apply makes the writes in parallel and records what they achieved.
func (s *Store) apply(ctx context.Context, writes []leaseWrite) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, w := range writes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			s.applyOne(ctx, w)
		}()
	}
	wg.Wait()
}

func (s *Store) applyOne(ctx context.Context, w leaseWrite) {
	me := s.cfg.NodeID
	l := w.item
	now := str(time.Now().UTC().Format(time.RFC3339Nano))
	var update, cond string
	var vals map[string]types.AttributeValue
	switch w.kind {
	case "renew", "gain":
		update = "SET cnt = cnt + :one, renewed = :now"
		if w.clear {
			update += " REMOVE want"
		}
		cond = "#o = :me AND ep = :ep"
		vals = map[string]types.AttributeValue{":me": str(me), ":ep": num(l.epoch), ":one": num(1), ":now": now}
	case "take":
		update = "SET #o = :me, ep = :ep1, cnt = :cnt1, renewed = :now, rel = :rel REMOVE want"
		cond = "ep = :ep AND cnt = :cnt"
		vals = map[string]types.AttributeValue{":me": str(me), ":ep": num(l.epoch), ":cnt": num(l.cnt),
			":ep1": num(l.epoch + 1), ":cnt1": num(l.cnt + 1), ":rel": boolean(w.clean), ":now": now}
		if !w.clean {
			w.item.sus = suspectTime(time.Now(), s.cfg.Lease)
			update = strings.Replace(update, " REMOVE", ", sus = :sus REMOVE", 1)
			vals[":sus"] = num(w.item.sus)
		}
	case "want":
		update = "SET want = :me"
		cond = "#o = :owner AND ep = :ep AND attribute_not_exists(want)"
		vals = map[string]types.AttributeValue{":me": str(me), ":owner": str(l.owner), ":ep": num(l.epoch)}
		if l.want != "" {
			// Only the stale request that was read may be replaced.
			cond = "#o = :owner AND ep = :ep AND want = :stale"
			vals[":stale"] = str(l.want)
		}
	case "handover":
		cond = "#o = :me AND ep = :ep"
		vals = map[string]types.AttributeValue{":me": str(me), ":ep": num(l.epoch), ":ep1": num(l.epoch + 1),
			":one": num(1), ":rel": boolean(w.clean), ":now": now}
		if w.to != "" {
			vals[":to"] = str(w.to)
			update = "SET #o = :to, ep = :ep1, cnt = cnt + :one, rel = :rel, renewed = :now REMOVE want"
		} else {
			update = "SET ep = :ep1, cnt = cnt + :one, rel = :rel, renewed = :now REMOVE want, #o"
		}
	}
	sent := time.Now()
	_, err := s.db.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName: aws.String(s.cfg.Table), Key: key(pkLease, leaseSK(l.shard)),
		UpdateExpression: aws.String(update), ConditionExpression: aws.String(cond),
		ExpressionAttributeNames:  map[string]string{"#o": "owner"},
		ExpressionAttributeValues: vals,
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		if conditionFailed(err) {
			// Someone else changed it first: what holds now is read at the
			// next tick. A lease we held is lost.
			if h := s.held[l.shard]; h != nil && (w.kind == "renew" || w.kind == "handover") && h.epoch == l.epoch {
				s.log.Info("lease lost: another node changed it", "shard", l.shard, "epoch", l.epoch)
				s.stats.Lost++
				s.loseLocked(l.shard)
			}
			return
		}
		if w.kind == "renew" {
			s.stats.RenewFailures++
		}
		if ctx.Err() == nil || w.kind != "renew" {
			s.logEveryLocked("lease write failed", w.kind, l.shard, err)
		}
		return
	}
	switch w.kind {
	case "renew":
		if h := s.held[l.shard]; h != nil && h.epoch == l.epoch {
			h.renewed = sent
			return
		}
		// Given up locally meanwhile (deadline): back, but our own writes
		// from before may have landed late.
		s.gainLocked(l.shard, l.epoch, sent, false, l.sus)
	case "gain":
		s.gainLocked(l.shard, l.epoch, sent, w.clean, l.sus)
	case "take":
		if l.owner != "" {
			s.stats.TakenOver++
		}
		s.gainLocked(l.shard, l.epoch+1, sent, w.clean, w.item.sus)
	case "handover":
		s.log.Info("shard handed over", "shard", l.shard, "to", w.to, "clean", w.clean)
		s.stats.HandedOver++
		s.loseLocked(l.shard)
	}
}

func (s *Store) logEveryLocked(msg, kind string, shard int, err error) {
	if time.Since(s.lastComplaint) < s.cfg.Lease {
		return
	}
	s.lastComplaint = time.Now()
	s.log.Warn(msg, "table", s.cfg.Table, "write", kind, "shard", shard, "err", err)
}

// suspectTime is when ops stop being suspect after a takeover at now:
// ops recorded until well after it (another node's clock may run ahead of
// ours by up to a lease) may have been written by the previous owner.
func suspectTime(now time.Time, lease time.Duration) int64 {
	return now.Add(lease).UnixNano()
}

// gainLocked starts holding a shard. sus is the suspect time the lease
// item carries from the last takeover from an expired lease (0: none).
func (s *Store) gainLocked(shard int, epoch int64, sent time.Time, clean bool, sus int64) {
	l := &lease{epoch: epoch, renewed: sent}
	if !clean {
		sus = max(sus, suspectTime(sent, s.cfg.Lease))
		l.settleUntil = time.Now().Add(s.margin())
	} else if sus != 0 {
		// Handed over by a node that took the shard from an expired lease:
		// the dead node's last requests may still be landing until a
		// margin after that takeover.
		if settle := time.Unix(0, sus).Add(s.margin() - s.cfg.Lease); settle.After(time.Now()) {
			l.settleUntil = settle
		}
	}
	if sus != 0 {
		l.suspectBefore = time.Unix(0, sus)
	}
	if !l.settleUntil.IsZero() {
		time.AfterFunc(time.Until(l.settleUntil), s.signal) // the engine asks for the shard's ops then
	}
	s.held[shard] = l
	s.stats.Gained++
	if !clean {
		s.stats.GainedSuspect++
	}
	delete(s.lastEpoch, shard)
	// Other nodes wrote this shard's key states meanwhile.
	clear(s.keys)
	s.log.Info("lease gained", "shard", shard, "epoch", epoch, "clean", clean)
	s.signal()
}

// Release hands every lease this node holds over at once, marked clean,
// and marks the node stopped; other nodes take the shards at their next
// tick. Call it after the engine stopped writing and saved the write marks
// of the ops it held (its Run returned): what it held goes over as is.
// The lease manager does nothing more afterwards.
func (s *Store) Release(ctx context.Context) error {
	s.released.Store(true)
	s.stepMu.Lock()
	defer s.stepMu.Unlock()
	s.mu.Lock()
	var writes []leaseWrite
	for sh, l := range s.held {
		writes = append(writes, leaseWrite{kind: "handover", item: leaseItem{shard: sh, owner: s.cfg.NodeID, epoch: l.epoch}, clean: true})
	}
	s.mu.Unlock()
	s.apply(ctx, writes)
	s.flushCounters(ctx, true)
	err := s.heartbeat(ctx, true)
	s.mu.Lock()
	left := len(s.held)
	for sh := range s.held {
		s.loseLocked(sh)
	}
	s.mu.Unlock()
	if left > 0 {
		return fmt.Errorf("dynamodb table %q: %d leases could not be handed over; other nodes take them after the lease expires", s.cfg.Table, left)
	}
	return err
}
