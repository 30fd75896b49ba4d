package main

import (
	"context"
	"errors"
	"io"
)

type backfills struct{ r *replicator }

type backfillProgress struct{}

func newBackfills(r *replicator) *backfills                       { return &backfills{r: r} }
func (b *backfills) run(ctx context.Context)                      { <-ctx.Done() }
func (b *backfills) start(rule string) (*backfillProgress, error) { return nil, errors.New("todo") }
func (b *backfills) progress(id string) (*backfillProgress, bool) { return nil, false }
func cmdBackfill(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("todo")
}
func cmdVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("todo")
}
