package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/s3replicad/s3replicad/admin"
	"github.com/s3replicad/s3replicad/config"
	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/internal/units"
	"github.com/s3replicad/s3replicad/s3store"
	"github.com/s3replicad/s3replicad/serve"
	"github.com/s3replicad/s3replicad/sqsqueue"
)

// replicator is the engine wired to its adapters and state file.
type replicator struct {
	cfg    *config.Config
	log    *slog.Logger
	state  stateStore
	source *s3store.Store
	dests  map[string]*s3store.Store
	engine *engine.Engine
	reg    *prometheus.Registry
}

// warnLogger is the logger of the one-shot commands: warnings only.
func warnLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// stores builds the source and destination adapters.
func stores(ctx context.Context, cfg *config.Config, log *slog.Logger) (*s3store.Store, map[string]*s3store.Store, error) {
	conns := cfg.Transfer.Workers*cfg.Transfer.PartConcurrency + 16
	sc := cfg.Source.StoreConfig(conns, cfg.Transfer.StallTimeout.D())
	sc.Logger = log.With("component", "source")
	src, err := s3store.New(ctx, sc)
	if err != nil {
		return nil, nil, fmt.Errorf("source: %w", err)
	}
	dests := map[string]*s3store.Store{}
	for _, d := range cfg.Destinations {
		dc := d.StoreConfig(conns, cfg.Transfer.StallTimeout.D())
		dc.Logger = log.With("component", "destination", "destination", d.Name)
		st, err := s3store.New(ctx, dc)
		if err != nil {
			return nil, nil, fmt.Errorf("destination %s: %w", d.Name, err)
		}
		dests[d.Name] = st
	}
	return src, dests, nil
}

func newReplicator(ctx context.Context, cfg *config.Config, log *slog.Logger, rules []engine.Rule, withQueue bool) (*replicator, error) {
	src, dests, err := stores(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	st, err := openState(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	r := &replicator{cfg: cfg, log: log, state: st, source: src, dests: dests, reg: serve.NewRegistry()}
	var reg prometheus.Registerer = r.reg
	if cs, ok := st.(clusterState); ok {
		// Every node's series carry its id: sums over the nodes count each
		// copy once; the cluster's pending gauges come from one node.
		reg = prometheus.WrapRegistererWith(prometheus.Labels{"node": cs.NodeID()}, r.reg)
		reg.MustRegister(cs.Collectors()...)
	}
	if ls, ok := st.(localState); ok {
		reg.MustRegister(ls.Collectors()...)
	}
	ec := engine.Config{
		Rules: rules, Source: src, Destinations: map[string]engine.Destination{}, State: st,
		Workers: cfg.Transfer.Workers, Pollers: cfg.Queue.Pollers,
		PartSize: int64(cfg.Transfer.PartSize), PartConcurrency: cfg.Transfer.PartConcurrency,
		MultipartThreshold: int64(cfg.Transfer.MultipartThreshold),
		BufferMemory:       int64(cfg.Transfer.BufferMemory),
		ServerSideCopy:     cfg.ServerSideCopy(),
		BandwidthLimit:     map[string]int64{},
		VisibilityTimeout:  cfg.Queue.VisibilityTimeout.D(),
		OrderWindow:        cfg.Transfer.OrderWindow.D(),
		DrainTimeout:       max(cfg.ShutdownTimeout.D()-2*time.Second, cfg.ShutdownTimeout.D()/2),
		StatePath:          st.where(),
		Registerer:         reg,
		Logger:             log.With("component", "engine"),
	}
	for name, d := range dests {
		ec.Destinations[name] = d
		ec.BandwidthLimit[name] = int64(cfg.Destination(name).BandwidthLimit)
	}
	if withQueue {
		q, err := sqsqueue.New(ctx, cfg.Queue.SQSConfig(cfg.Transfer.StallTimeout.D()))
		if err != nil {
			st.Close()
			return nil, fmt.Errorf("queue: %w", err)
		}
		ec.Queue = q
	}
	if r.engine, err = engine.New(ec); err != nil {
		st.Close()
		return nil, err
	}
	return r, nil
}

// tuneGC trades a little memory for CPU: copy buffers live outside the Go
// heap, which holds little but the backlog, so collecting at three times
// the live heap instead of twice costs a few MiB and saves about a sixth of
// the CPU on small objects. GOGC in the environment wins.
//
// Heap profiles sample one allocation in 4 MiB rather than the runtime's
// 512 KiB: every sample walks the allocating goroutine's stack, the SDK's
// stacks are deep, and at the default rate the walks cost about 2% of the
// CPU spent per small object. Over the minutes a profile of a busy daemon
// covers, 4 MiB still gives thousands of samples. GODEBUG=memprofilerate
// wins.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(200)
	}
	if !strings.Contains(os.Getenv("GODEBUG"), "memprofilerate=") {
		runtime.MemProfileRate = 4 << 20
	}
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cfgFlag := flags("run", stderr)
	cfg, log, err := loadFor(fs, cfgFlag, args, stderr)
	if err != nil {
		return err
	}
	tuneGC()
	r, err := newReplicator(ctx, cfg, log, cfg.EngineRules(), true)
	if err != nil {
		return err
	}
	defer r.state.Close()

	jobs := newJobs(r)
	srv, err := serve.Listen(cfg.Listen, r.reg, r.engine.Ready)
	if err != nil {
		return err
	}
	admin, err := serve.Socket(adminSocket(cfg), admin.Handler(daemonService{r, jobs}))
	if err != nil {
		return err
	}
	log.Info("s3replicad starting", "version", version, "listen", srv.Addr(), "admin", adminSocket(cfg), "state", r.state.where(),
		"queue", cfg.Queue.URL, "rules", len(cfg.Rules), "workers", cfg.Transfer.Workers,
		"buffer_memory", units.Bytes(int64(cfg.Transfer.BufferMemory)))
	for name, on := range cfg.ServerSideCopy() {
		if on {
			log.Info("destination shares the source's endpoint: copying inside the store", "destination", name)
		}
	}

	// A shutdown that hangs past its budget must not hang systemd.
	stopWatchdog := context.AfterFunc(ctx, func() {
		log.Info("shutting down: no new messages; finishing copies in flight", "timeout", cfg.ShutdownTimeout.D())
		notifySystemd("STOPPING=1")
		time.AfterFunc(cfg.ShutdownTimeout.D()+5*time.Second, func() {
			log.Error("shutdown did not finish in time; exiting")
			os.Exit(exitFailure)
		})
	})
	defer stopWatchdog()

	g, gctx := errgroup.WithContext(ctx)
	if cs, ok := r.state.(clusterState); ok {
		// The leases outlive the engine: once it has stopped (its write
		// marks saved), they are handed over at once rather than left to
		// expire.
		leaseCtx, stopLeases := context.WithCancel(context.WithoutCancel(ctx))
		leasesDone := make(chan error, 1)
		go func() { leasesDone <- cs.Run(leaseCtx) }()
		defer func() { stopLeases(); <-leasesDone }()
		g.Go(func() error {
			err := r.engine.Run(gctx)
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if rerr := cs.Release(rctx); rerr != nil {
				log.Warn("cannot hand this node's keys over; the other nodes take them when its leases expire", "err", rerr)
			} else {
				log.Info("this node's keys handed over to the other nodes")
			}
			return err
		})
	} else {
		g.Go(func() error { return r.engine.Run(gctx) })
	}
	g.Go(func() error { return srv.Run(gctx) })
	g.Go(func() error { return admin.Run(gctx) })
	g.Go(func() error { jobs.Run(gctx); return nil })
	g.Go(func() error { r.prune(gctx); return nil })
	notifySystemd("READY=1")
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	log.Info("s3replicad stopped", "backlog", r.engine.Backlog())
	return nil
}

// prune drops finished operations older than the retention from the state
// file, once an hour.
func (r *replicator) prune(ctx context.Context) {
	for {
		n, err := r.state.prune(ctx, time.Now().Add(-r.cfg.Retention.Finished.D()))
		if err != nil {
			r.log.Warn("pruning the state file failed", "err", err)
		} else if n > 0 {
			r.log.Info("pruned finished operations from the state file", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Hour):
		}
	}
}

// notifySystemd sends a state line to systemd when run as Type=notify.
func notifySystemd(state string) {
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return
	}
	if sock[0] == '@' {
		sock = "\x00" + sock[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return
	}
	defer conn.Close()
	_, _ = conn.Write([]byte(state))
}
