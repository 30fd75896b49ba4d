package checkpoint

import (
	bolt "go.etcd.io/bbolt"

	"github.com/prometheus/client_golang/prometheus"
)

// Collectors are the state file's series: how often it commits and how
// many pages those commits write, the two things a small object's cost in
// the state file comes down to (each commit is two fdatasyncs).
func (s *Store) Collectors() []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "s3replicad_state_commits_total",
			Help: "Transactions committed to the state file by this process."}, func() float64 { return float64(s.commits()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "s3replicad_state_pages_written_total",
			Help: "Pages the state file's commits wrote by this process."}, func() float64 { st := s.db.Stats(); return float64(st.TxStats.GetWrite()) }),
	}
}

// commits counts write transactions since Open: bbolt numbers each
// committed one, and a read transaction sees the latest number.
func (s *Store) commits() uint64 {
	var id int
	_ = s.db.View(func(t *bolt.Tx) error { id = t.ID(); return nil })
	return uint64(id) - s.openTx
}
