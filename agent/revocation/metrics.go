package revocation

import "github.com/prometheus/client_golang/prometheus"

// RulesGauge is tokenwarden_revocation_rules, read from set at each scrape.
// The agent registers it once, wherever it serves metrics.
func RulesGauge(set *Set) prometheus.GaugeFunc {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tokenwarden_revocation_rules",
		Help: "Revocation rules held in memory by this node.",
	}, func() float64 { return float64(set.Len()) })
}

// CacheGauge is tokenwarden_token_cache_entries, read from c at each scrape.
func CacheGauge(c *Cache) prometheus.GaugeFunc {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tokenwarden_token_cache_entries",
		Help: "Verified tokens held in the LRU.",
	}, func() float64 { return float64(c.Len()) })
}
