// Package dynamostate keeps the replicator's durable state in a DynamoDB
// table that the nodes of a cluster share: it is the cluster mode's
// engine.StateStore, and it splits the work between the nodes with fenced
// leases.
//
// # Design
//
// Only single-item conditional writes are used (no transactions, TTL or
// streams), so that it runs on DynamoDB-compatible servers that lack them.
//
// The work is split into a fixed number of shards (Config.Shards, set when
// the table is initialised): an op belongs to shard
// fnv64a(op.DestKeyID()) mod Shards, so every version of a destination key
// is in one shard and written by one node at a time, in sequencer order.
// Each shard has a lease item (see lease.go); a node writes a shard's ops
// and key states only while it holds the shard's lease, and every such
// write carries its lease epoch and is conditional on the item's stored
// epoch being no newer: a node that lost a lease cannot overwrite what the
// new owner wrote (ErrLeaseLost). Owned tells the engine until when it may
// write to the destination for a key.
//
// Any node records ops of any shard (the one that received the queue
// message): Record is one conditional put per op, so a queue message is
// deleted only after what it asks for is in the table. The shard's owner
// finds them through a sparse index (Pending).
//
// # Table
//
// One table, hash key pk (S) and range key sk (S), on-demand capacity:
//
//	item         pk                          sk              attributes
//	meta         "meta"                      "meta"          shards, schema, created
//	lease        "lease"                     shard, %05d     owner, ep, cnt, rel, want, renewed
//	node         "node"                      node id         host, hb, renewed, started, stopped, leases, held, inflight
//	op           "o#"+h(rule,bucket,key,v)   "o#"+h(op id)   op (JSON), st, seq, sh, ep; q/qs or dq/dqs
//	key state    "k#"+h(dest key)            "k"             ks (JSON engine.KeyState), rev, ep, sh, lop, lrep, lont, lfin
//	upload       "u#"+h(op id)               "h" | "p#%05d"  up (JSON header) | part (JSON), ep; header: sh, q/qs
//	counter      "count"                     rule#slot       rule, completed, skipped, superseded, late_versions
//	cursor       "cursor"                    rule            c (JSON engine.Cursor)
//
// h is a 120-bit SHA-256 digest (keys stay short whatever the object key).
// All ops of one source version share a partition, so that OpsOf (backfill)
// is one query. Two global secondary indexes, both sparse:
//
//	queue  hash q, range qs, projection ALL:
//	         "p#shard", origin digit + seq (16 hex)   unfinished ops (pending, in flight)
//	         "f#shard", seq                           failed ops
//	         "u#shard", h(op id)                      uploads in progress
//	done   hash dq, range dqs, projection KEYS_ONLY:
//	         "d#shard", finish time (16 hex ns)       completed, skipped, superseded ops (Prune)
//
// # Cost per replicated version
//
// On the normal path (one attempt, an item of at most 1 KB) a version
// costs 3 write requests and 6 write units:
//
//	Record       PutItem op             1 unit + 1 unit (queue index entry)
//	completion   PutItem key state      1 unit (in no index)
//	             PutItem op             1 unit + 1 (queue entry removed) + 1 (done entry, keys only)
//
// and, with the engine calling them, 2 strongly consistent reads (Current
// before running, LastWritten before writing; Save reuses LastWritten's
// read: an unsequenced op, for which the engine does not call it, costs
// that read in Save instead) plus its share of a Pending query (about 1/8
// of a read unit). Pruning it later costs 1 or 2 deletes (the op, 1 unit
// plus its done entry; the key state when the op was the key's last
// write). Each further attempt (a retry saved with its error) is one more
// PutItem (2 units), each multipart part one PutItem (1 unit).
//
// Background, not per version: every node reads the lease and node items
// every Lease/8 (2.5 s by default; 2 strongly consistent queries of a few
// KB), and every Lease/4 (5 s) writes its heartbeat and renews each lease
// it holds (one UpdateItem each: with 32 shards and a 20 s lease, 6.4
// writes/s for the whole cluster, plus one per node every 5 s);
// finished-op counters are flushed every 5 s (one UpdateItem per rule
// with news). Pending costs two queries per owned shard each time the
// engine asks (one per origin). A dead node's shards are taken over
// between Lease and Lease + 2 ticks (20 to 25 s by default) after its
// last renewal.
//
// # Using it from the engine
//
// Beyond engine.StateStore, a node's engine:
//   - runs Run beside itself, and at a clean stop, once its own Run has
//     returned (write marks saved), calls Release, then Close;
//   - asks Pending on a tick and whenever Changes fires (ops recorded by
//     other nodes arrive only that way; after is ignored, more is a hint);
//   - after Record, schedules only what Claim returns (ops of its own
//     shards); the rest wait for their owners;
//   - calls Current before running an op it got from Pending, and before
//     running again an op that has WriteStarted: drop it when it is nil or
//     finished;
//   - calls Owned before every write to the destination and gives the
//     write's requests its deadline; when Owned says no, or on Changes,
//     drops the ops of keys it no longer owns;
//   - treats a Save that fails with ErrLeaseLost (LeaseLost) as "not mine
//     any more": drops the op, does not retry it. After a Save of a
//     completed op fails otherwise, saves it again as completed (the key
//     state may already name it) rather than putting it back to pending;
//   - sets SetHandoff (let go of keys cleanly) and SetActivity (what
//     status shows), and runs Prune on a timer with the retention.
//
// # What a DynamoDB without transactions, TTL or streams means here
//
// A completion is two writes: the key state first, then the op. A node
// that dies between them leaves the key state naming the op (lop) while
// the op is still unfinished; Current completes such an op instead of
// letting it be copied again. Finished ops are deleted by Prune (a TTL
// attribute would do it for free on AWS, but not adjust the counters or
// the key states). Nothing needs streams.
package dynamostate
