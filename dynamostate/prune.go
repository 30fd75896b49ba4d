package dynamostate

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/s3replicad/s3replicad/engine"
)

// Prune deletes the finished ops (completed, skipped, superseded) of the
// shards this node holds that finished before the given time, and the
// state of a destination key whose last write was one of them, as
// checkpoint's Prune does. Finished ops are kept for a retention so that a
// redelivered message is still recognised as a duplicate. Each node prunes
// its own shards, reading the done index (finish time order) and nothing
// else; each delete is fenced like any write for the shard. Failed ops
// stay until retried.
//
// dynalite has no TTL. On AWS a TTL attribute could delete finished ops
// for free instead; it would not adjust the finished-op counters, and the
// done index would still be needed to find key states to drop.
func (s *Store) Prune(ctx context.Context, before time.Time) (int, error) {
	s.mu.Lock()
	owned := s.ownedLocked(time.Now())
	s.mu.Unlock()
	var total atomic.Int64
	shards := make([]int, 0, len(owned))
	for sh := range owned {
		shards = append(shards, sh)
	}
	err := parallel(ctx, len(shards), func(ctx context.Context, i int) error {
		n, err := s.pruneShard(ctx, shards[i], owned[shards[i]], before)
		total.Add(int64(n))
		return err
	})
	s.flushCounters(ctx, true)
	return int(total.Load()), err
}

func (s *Store) pruneShard(ctx context.Context, shard int, ep int64, before time.Time) (int, error) {
	items, err := s.queryAll(ctx, &dynamodb.QueryInput{
		TableName: aws.String(s.cfg.Table), IndexName: aws.String(indexDone),
		KeyConditionExpression: aws.String("dq = :dq AND dqs < :before"),
		ExpressionAttributeValues: map[string]types.AttributeValue{
			":dq": str(doneKey(shard)), ":before": str(timeHex(before))},
	})
	if err != nil {
		return 0, s.classify(ctx, "read finished operations", err)
	}
	var n atomic.Int64
	err = parallel(ctx, len(items), func(ctx context.Context, i int) error {
		pk, sk := getS(items[i], attrPK), getS(items[i], attrSK)
		rctx, cancel := s.request(ctx)
		defer cancel()
		out, err := s.db.DeleteItem(rctx, &dynamodb.DeleteItemInput{
			TableName: aws.String(s.cfg.Table), Key: key(pk, sk),
			// Still finished (not re-saved since the index was read), and
			// not written by a newer holder of the shard.
			ConditionExpression:       aws.String("attribute_exists(dq) AND ep <= :ep"),
			ExpressionAttributeValues: map[string]types.AttributeValue{":ep": num(ep)},
			ReturnValues:              types.ReturnValueAllOld,
		})
		if conditionFailed(err) {
			return nil
		}
		if err != nil {
			return s.classify(ctx, "prune", err)
		}
		n.Add(1)
		op, err := decodeOp(out.Attributes)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.countLocked(op.Rule, op.State, "")
		s.mu.Unlock()
		if op.State != engine.Completed {
			return nil
		}
		// The key's state goes with the op that last wrote it.
		dk := op.DestKeyID()
		_, err = s.db.DeleteItem(rctx, &dynamodb.DeleteItemInput{
			TableName: aws.String(s.cfg.Table), Key: key(keyItemPK(dk), "k"),
			ConditionExpression:       aws.String("lop = :lop AND ep <= :ep"),
			ExpressionAttributeValues: map[string]types.AttributeValue{":lop": str(pk + "|" + sk), ":ep": num(ep)},
		})
		if err != nil && !conditionFailed(err) {
			return s.classify(ctx, "prune key state", err)
		}
		s.forgetKey(dk)
		return nil
	})
	if err != nil {
		return int(n.Load()), fmt.Errorf("prune shard %d: %w", shard, err)
	}
	return int(n.Load()), nil
}
