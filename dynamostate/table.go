package dynamostate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// Actions lists the DynamoDB IAM actions a node uses at run time (and
// status, retry, backfill and check-config). `cluster init` needs
// dynamodb:CreateTable besides (InitActions). The policy's resource must
// cover the table and its indexes: arn:aws:dynamodb:REGION:ACCOUNT:table/NAME
// and arn:aws:dynamodb:REGION:ACCOUNT:table/NAME/index/*.
func Actions() []string {
	return []string{
		"dynamodb:DeleteItem",
		"dynamodb:DescribeTable",
		"dynamodb:GetItem",
		"dynamodb:PutItem",
		"dynamodb:Query",
		"dynamodb:UpdateItem",
	}
}

// InitActions lists what `s3replicad cluster init` needs on top of Actions.
func InitActions() []string { return []string{"dynamodb:CreateTable"} }

func tableDefinition(table string) *dynamodb.CreateTableInput {
	s := types.ScalarAttributeTypeS
	return &dynamodb.CreateTableInput{
		TableName:   aws.String(table),
		BillingMode: types.BillingModePayPerRequest,
		AttributeDefinitions: []types.AttributeDefinition{
			{AttributeName: aws.String(attrPK), AttributeType: s},
			{AttributeName: aws.String(attrSK), AttributeType: s},
			{AttributeName: aws.String(attrQ), AttributeType: s},
			{AttributeName: aws.String(attrQS), AttributeType: s},
			{AttributeName: aws.String(attrDQ), AttributeType: s},
			{AttributeName: aws.String(attrDQS), AttributeType: s},
		},
		KeySchema: []types.KeySchemaElement{
			{AttributeName: aws.String(attrPK), KeyType: types.KeyTypeHash},
			{AttributeName: aws.String(attrSK), KeyType: types.KeyTypeRange},
		},
		GlobalSecondaryIndexes: []types.GlobalSecondaryIndex{
			{
				IndexName: aws.String(indexQueue),
				KeySchema: []types.KeySchemaElement{
					{AttributeName: aws.String(attrQ), KeyType: types.KeyTypeHash},
					{AttributeName: aws.String(attrQS), KeyType: types.KeyTypeRange},
				},
				Projection: &types.Projection{ProjectionType: types.ProjectionTypeAll},
			},
			{
				IndexName: aws.String(indexDone),
				KeySchema: []types.KeySchemaElement{
					{AttributeName: aws.String(attrDQ), KeyType: types.KeyTypeHash},
					{AttributeName: aws.String(attrDQS), KeyType: types.KeyTypeRange},
				},
				Projection: &types.Projection{ProjectionType: types.ProjectionTypeKeysOnly},
			},
		},
	}
}

// CreateTable creates the table, its indexes, the meta item (with the
// number of shards) and one lease item per shard; whatever exists already
// is kept. It says what it did. It is what `s3replicad cluster init` runs.
func CreateTable(ctx context.Context, cfg Config) (string, error) {
	if err := cfg.setDefaults(); err != nil {
		return "", err
	}
	db, err := client(ctx, &cfg)
	if err != nil {
		return "", err
	}
	var done []string
	_, err = db.CreateTable(ctx, tableDefinition(cfg.Table))
	var inUse *types.ResourceInUseException
	switch {
	case err == nil:
		done = append(done, fmt.Sprintf("created table %q (on-demand capacity, indexes %q and %q)", cfg.Table, indexQueue, indexDone))
	case errors.As(err, &inUse):
		done = append(done, fmt.Sprintf("table %q exists", cfg.Table))
	default:
		return "", classify(ctx, cfg.Table, "create table", err)
	}
	if err := waitActive(ctx, db, cfg.Table); err != nil {
		return "", err
	}
	if err := describeOK(ctx, db, cfg.Table); err != nil {
		return "", err
	}
	shards, created, err := ensureMeta(ctx, db, cfg.Table, cfg.Shards)
	if err != nil {
		return "", err
	}
	if created {
		done = append(done, fmt.Sprintf("initialised it with %d shards", shards))
	} else {
		msg := fmt.Sprintf("already initialised with %d shards", shards)
		if shards != cfg.Shards {
			msg += fmt.Sprintf(" (kept: the number of shards is fixed when a table is initialised; %d asked)", cfg.Shards)
		}
		done = append(done, msg)
	}
	n, err := ensureLeases(ctx, db, cfg.Table, shards)
	if err != nil {
		return "", err
	}
	if n > 0 && !created {
		done = append(done, fmt.Sprintf("added %d missing lease items", n))
	}
	return joinSentences(done), nil
}

func joinSentences(parts []string) string {
	out := ""
	for i, p := range parts {
		if i > 0 {
			out += "; "
		}
		out += p
	}
	return out
}

func waitActive(ctx context.Context, db *dynamodb.Client, table string) error {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		out, err := db.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(table)})
		if err != nil {
			return classify(ctx, table, "describe table", err)
		}
		active := out.Table.TableStatus == types.TableStatusActive
		for _, g := range out.Table.GlobalSecondaryIndexes {
			if g.IndexStatus != types.IndexStatusActive {
				active = false
			}
		}
		if active {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dynamodb table %q is still %s after 5 minutes", table, out.Table.TableStatus)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// ensureMeta writes the meta item unless it exists, and returns the
// number of shards the table has.
func ensureMeta(ctx context.Context, db *dynamodb.Client, table string, shards int) (int, bool, error) {
	item := key(pkMeta, pkMeta)
	item["shards"] = num(shards)
	item["schema"] = num(SchemaVersion)
	item["created"] = str(time.Now().UTC().Format(time.RFC3339))
	_, err := db.PutItem(ctx, &dynamodb.PutItemInput{
		TableName: aws.String(table), Item: item,
		ConditionExpression: aws.String("attribute_not_exists(pk)"),
	})
	if err == nil {
		return shards, true, nil
	}
	if !conditionFailed(err) {
		return 0, false, classify(ctx, table, "write the meta item", err)
	}
	n, err := readMeta(ctx, db, table)
	return n, false, err
}

// readMeta returns the table's number of shards, checking its schema.
func readMeta(ctx context.Context, db *dynamodb.Client, table string) (int, error) {
	out, err := db.GetItem(ctx, &dynamodb.GetItemInput{
		TableName: aws.String(table), Key: key(pkMeta, pkMeta), ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		return 0, classify(ctx, table, "read the meta item", err)
	}
	if out.Item == nil {
		return 0, fmt.Errorf("dynamodb table %q has no meta item: it was not initialised by `s3replicad cluster init`", table)
	}
	shards, schema := int(getN(out.Item, "shards")), int(getN(out.Item, "schema"))
	if schema != SchemaVersion {
		return 0, fmt.Errorf("dynamodb table %q has schema version %d, this build reads %d", table, schema, SchemaVersion)
	}
	if shards <= 0 || shards > MaxShards {
		return 0, fmt.Errorf("dynamodb table %q: its meta item says %d shards", table, shards)
	}
	return shards, nil
}

// ensureLeases creates the lease items that are missing, free and marked
// as cleanly released (nobody wrote for them yet).
func ensureLeases(ctx context.Context, db *dynamodb.Client, table string, shards int) (int, error) {
	out, err := db.Query(ctx, &dynamodb.QueryInput{
		TableName: aws.String(table), ConsistentRead: aws.Bool(true),
		KeyConditionExpression:    aws.String("pk = :pk"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":pk": str(pkLease)},
		ProjectionExpression:      aws.String("sk"),
	})
	if err != nil {
		return 0, classify(ctx, table, "read the lease items", err)
	}
	have := map[string]bool{}
	for _, it := range out.Items {
		have[getS(it, attrSK)] = true
	}
	// The lease items are few and small: one page holds them all (1024
	// shards of a few dozen bytes), but page anyway for safety.
	for out.LastEvaluatedKey != nil {
		out, err = db.Query(ctx, &dynamodb.QueryInput{
			TableName: aws.String(table), ConsistentRead: aws.Bool(true), ExclusiveStartKey: out.LastEvaluatedKey,
			KeyConditionExpression:    aws.String("pk = :pk"),
			ExpressionAttributeValues: map[string]types.AttributeValue{":pk": str(pkLease)},
			ProjectionExpression:      aws.String("sk"),
		})
		if err != nil {
			return 0, classify(ctx, table, "read the lease items", err)
		}
		for _, it := range out.Items {
			have[getS(it, attrSK)] = true
		}
	}
	n := 0
	for i := 0; i < shards; i++ {
		if have[leaseSK(i)] {
			continue
		}
		item := key(pkLease, leaseSK(i))
		item["ep"], item["cnt"], item["rel"] = num(0), num(0), boolean(true)
		_, err := db.PutItem(ctx, &dynamodb.PutItemInput{
			TableName: aws.String(table), Item: item, ConditionExpression: aws.String("attribute_not_exists(pk)"),
		})
		if err != nil && !conditionFailed(err) {
			return n, classify(ctx, table, "create lease item "+strconv.Itoa(i), err)
		}
		if err == nil {
			n++
		}
	}
	return n, nil
}

// describeOK checks the table's key schema and indexes.
func describeOK(ctx context.Context, db *dynamodb.Client, table string) error {
	out, err := db.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(table)})
	if err != nil {
		return classify(ctx, table, "describe table", err)
	}
	t := out.Table
	if t.TableStatus != types.TableStatusActive {
		return fmt.Errorf("dynamodb table %q is %s, not ACTIVE", table, t.TableStatus)
	}
	types_ := map[string]types.ScalarAttributeType{}
	for _, d := range t.AttributeDefinitions {
		types_[aws.ToString(d.AttributeName)] = d.AttributeType
	}
	schemaOK := func(ks []types.KeySchemaElement, hash, rng string) bool {
		if len(ks) != 2 {
			return false
		}
		want := map[string]types.KeyType{hash: types.KeyTypeHash, rng: types.KeyTypeRange}
		for _, k := range ks {
			name := aws.ToString(k.AttributeName)
			if want[name] != k.KeyType || types_[name] != types.ScalarAttributeTypeS {
				return false
			}
		}
		return true
	}
	if !schemaOK(t.KeySchema, attrPK, attrSK) {
		return fmt.Errorf("dynamodb table %q does not have the key schema s3replicad uses (hash key %q and range key %q, both strings): it belongs to something else, or was not created by `s3replicad cluster init`", table, attrPK, attrSK)
	}
	want := map[string][2]string{indexQueue: {attrQ, attrQS}, indexDone: {attrDQ, attrDQS}}
	var found []string
	for _, g := range t.GlobalSecondaryIndexes {
		name := aws.ToString(g.IndexName)
		w, ok := want[name]
		if !ok {
			continue
		}
		found = append(found, name)
		if !schemaOK(g.KeySchema, w[0], w[1]) {
			return fmt.Errorf("dynamodb table %q: index %q does not have the key schema s3replicad uses (%q, %q)", table, name, w[0], w[1])
		}
		if name == indexQueue && (g.Projection == nil || g.Projection.ProjectionType != types.ProjectionTypeAll) {
			return fmt.Errorf("dynamodb table %q: index %q must project all attributes", table, name)
		}
		if g.IndexStatus != "" && g.IndexStatus != types.IndexStatusActive {
			return fmt.Errorf("dynamodb table %q: index %q is %s, not ACTIVE", table, name, g.IndexStatus)
		}
	}
	for name := range want {
		if !slices.Contains(found, name) {
			return fmt.Errorf("dynamodb table %q has no index %q: it was not created by `s3replicad cluster init`", table, name)
		}
	}
	return nil
}

// Check verifies that the table exists, is ACTIVE, has the expected key
// schema and indexes, and that its meta item is readable (check-config).
func Check(ctx context.Context, cfg Config) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	db, err := client(ctx, &cfg)
	if err != nil {
		return err
	}
	if err := describeOK(ctx, db, cfg.Table); err != nil {
		return err
	}
	_, err = readMeta(ctx, db, cfg.Table)
	return err
}
