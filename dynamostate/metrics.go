package dynamostate

import "github.com/prometheus/client_golang/prometheus"

// Collectors are the metrics of what this node sees of its leases and of
// the other nodes: a node that stops renewing shows as silent on the
// others, which is what the alert S3ReplicadClusterNodeSilent watches.
func (st *Store) Collectors() []prometheus.Collector {
	stat := func(f func(LeaseStats) int64) func() float64 {
		return func() float64 { return float64(f(st.LeaseStats())) }
	}
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "s3replicad_cluster_leases_held",
			Help: "Lease shards this node holds now."}, stat(func(s LeaseStats) int64 { return int64(s.Held) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "s3replicad_cluster_leases_taken_over_total",
			Help: "Leases this node took over from a node that stopped renewing."}, stat(func(s LeaseStats) int64 { return s.TakenOver })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "s3replicad_cluster_leases_lost_total",
			Help: "Leases another node took from this one."}, stat(func(s LeaseStats) int64 { return s.Lost })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "s3replicad_cluster_leases_expired_total",
			Help: "Leases this node gave up because it could not renew them in time (cut off from the table)."}, stat(func(s LeaseStats) int64 { return s.Expired })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "s3replicad_cluster_lease_renew_failures_total",
			Help: "Failed lease renewals."}, stat(func(s LeaseStats) int64 { return s.RenewFailures })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "s3replicad_cluster_nodes_live",
			Help: "Nodes this node sees renewing their heartbeat, itself included."}, func() float64 { return float64(st.Peers().Live) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "s3replicad_cluster_nodes_silent",
			Help: "Nodes that have not renewed their heartbeat for a lease without stopping cleanly (dead or cut off)."}, func() float64 { return float64(st.Peers().Silent) }),
	}
}
