package engine

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the engine's Prometheus series (names fixed by the contract).
type metrics struct {
	events        *prometheus.CounterVec
	replicated    *prometheus.CounterVec
	bytes         *prometheus.CounterVec
	pending       *prometheus.GaugeVec
	bytesPending  *prometheus.GaugeVec
	failed        *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	deletes       *prometheus.CounterVec
	superseded    *prometheus.CounterVec
	markersMerged *prometheus.CounterVec
	late          *prometheus.CounterVec
	skipped       *prometheus.CounterVec
	sourceBytes   prometheus.Counter
	inStoreBytes  *prometheus.CounterVec
	concurrency   *prometheus.GaugeVec
	throttled     *prometheus.CounterVec
	queueErrors   prometheus.Counter
	queueRefused  prometheus.Gauge
	oldestPending prometheus.GaugeFunc
	intakePaused  prometheus.Gauge
	stateErrors   prometheus.Counter
	clusterMode   bool
}

// EventKinds are the label values of s3replicad_events_received_total.
var EventKinds = []string{"created", "removed", "test", "malformed", "other"}

func newMetrics(reg prometheus.Registerer, rules Rules, dests []string, oldest func() float64) *metrics {
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "s3replicad_events_received_total",
			Help: "Event records received from the queue, by kind; a message that cannot be decoded counts once as malformed.",
		}, []string{"kind"}),
		replicated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "s3replicad_replicated_objects_total",
			Help: "Object versions and delete markers written to the destination.",
		}, []string{"rule"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "s3replicad_replicated_bytes_total",
			Help: "Object bytes written to the destination.",
		}, []string{"rule"}),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "s3replicad_operations_pending",
			Help: "Operations recorded and not yet finished (pending or in flight).",
		}, []string{"rule"}),
		bytesPending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "s3replicad_bytes_pending",
			Help: "Bytes of the object versions still to be copied (as far as known from events).",
		}, []string{"rule"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "s3replicad_operations_failed_total",
			Help: "Failed copy attempts by reason; transient ones are retried, permanent ones become failed.",
		}, []string{"rule", "reason"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "s3replicad_replication_latency_seconds",
			Help: "Time from the source event to the replica being written.",
			// From 10 ms: a replica is typically written within tens of
			// milliseconds of its event, so p50 and p99 need buckets there.
			Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600, 4 * 3600, 24 * 3600},
		}, []string{"rule"}),
		deletes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "s3replicad_deletes_not_replicated_total",
			Help: "Version deletes (and delete markers of rules that do not replicate them) deliberately not propagated.",
		}, []string{"rule"}),
		superseded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "s3replicad_superseded_total",
			Help: "Versions not written: a null version replaced in place on the source before it was copied.",
		}, []string{"rule"}),
		markersMerged: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "s3replicad_delete_markers_merged_total",
			Help: "Delete markers the destination made no marker of its own for: its current version was a delete marker already (MinIO), and the existing marker stands for both; or the key had no version there (MinIO, versitygw), and reads as deleted already.",
		}, []string{"rule"}),
		late: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "s3replicad_late_versions_total",
			Help: "Versions written after a newer version of their key (their event came late), each followed by a copy of the newest on top so that it stays current.",
		}, []string{"rule"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "s3replicad_skipped_total",
			Help: "Versions skipped because they no longer existed on the source when copied.",
		}, []string{"rule"}),
		sourceBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "s3replicad_source_bytes_read_total",
			Help: "Object bytes read from the source.",
		}),
		inStoreBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "s3replicad_server_side_copy_bytes_total",
			Help: "Object bytes copied inside the store (CopyObject, UploadPartCopy), never read by the daemon.",
		}, []string{"destination"}),
		concurrency: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "s3replicad_destination_concurrency",
			Help: "Operations the daemon currently allows in flight to a destination (halved when it throttles or stalls, regained slowly).",
		}, []string{"destination"}),
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "s3replicad_destination_throttled_total",
			Help: "Write requests a destination answered with SlowDown, 503, 429 or a timeout.",
		}, []string{"destination"}),
		queueRefused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "s3replicad_queue_refused",
			Help: "1 while the queue refuses the daemon for good (a missing queue, refused credentials): fix it, nothing is received meanwhile.",
		}),
		queueErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "s3replicad_queue_errors_total",
			Help: "Failed queue calls (receive, delete, visibility).",
		}),
		intakePaused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "s3replicad_intake_paused",
			Help: "1 while intake and copies are paused because the state file's disk is full.",
		}),
		stateErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "s3replicad_state_errors_total",
			Help: "Failed writes to the state file (a full disk among them).",
		}),
		oldestPending: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "s3replicad_oldest_pending_seconds",
			Help: "Age of the oldest unfinished operation, 0 when there is none.",
		}, oldest),
	}
	reg.MustRegister(m.events, m.replicated, m.bytes, m.pending, m.bytesPending, m.failed, m.latency,
		m.deletes, m.superseded, m.markersMerged, m.late, m.skipped, m.sourceBytes, m.inStoreBytes, m.concurrency, m.throttled,
		m.queueErrors, m.queueRefused, m.oldestPending, m.intakePaused, m.stateErrors)
	// Every series whose labels are known now starts at zero so that rate()
	// and absence alerts work before the first event.
	for _, k := range EventKinds {
		m.events.WithLabelValues(k)
	}
	for _, d := range dests {
		m.inStoreBytes.WithLabelValues(d)
		m.throttled.WithLabelValues(d)
	}
	for _, r := range rules {
		m.replicated.WithLabelValues(r.ID)
		m.bytes.WithLabelValues(r.ID)
		m.pending.WithLabelValues(r.ID)
		m.bytesPending.WithLabelValues(r.ID)
		m.latency.WithLabelValues(r.ID)
		m.deletes.WithLabelValues(r.ID)
		m.superseded.WithLabelValues(r.ID)
		m.markersMerged.WithLabelValues(r.ID)
		m.late.WithLabelValues(r.ID)
		m.skipped.WithLabelValues(r.ID)
		for _, reason := range Reasons {
			m.failed.WithLabelValues(r.ID, reason)
		}
	}
	return m
}

// track moves the pending gauges when an op enters (+1) or leaves (-1) the
// unfinished set. In cluster mode they are the cluster's, set by one node
// from the table (see Engine.refreshClusterGauges).
func (m *metrics) track(op *Op, delta float64) {
	if m.clusterMode {
		return
	}
	m.pending.WithLabelValues(op.Rule).Add(delta)
	if op.Size > 0 {
		m.bytesPending.WithLabelValues(op.Rule).Add(delta * float64(op.Size))
	}
}

func (m *metrics) done(op *Op, now time.Time) {
	m.replicated.WithLabelValues(op.Rule).Inc()
	if op.Size > 0 {
		m.bytes.WithLabelValues(op.Rule).Add(float64(op.Size))
	}
	if !op.EventTime.IsZero() && op.Origin == OriginEvent {
		m.latency.WithLabelValues(op.Rule).Observe(now.Sub(op.EventTime).Seconds())
	}
}
