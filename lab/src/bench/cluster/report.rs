//! `quiver bench cluster`'s report as a table, with the goals checked against the run's own figures.

use super::ClusterReport;

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT MET"
    }
}

impl ClusterReport {
    /// The report as a table, with the goals checked against figures of this run.
    pub fn table(&self) -> String {
        let r = &self.redis_rtt;
        let (s, c) = (&self.echo_single, &self.echo_cross);
        let p50_goal = s.p50_us + 2 * r.p50_us;
        let p99_goal = 3 * s.p99_us;
        let (fs, fc) = (&self.fanout_single, &self.fanout_cluster);
        let mut out = String::new();
        out.push_str("| series (ms) | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|\n");
        for (name, l) in [
            ("Redis PING round trip, paced like the echo", r),
            ("Redis PING round trip, back to back", &self.redis_rtt_hot),
            ("room echo, one node", s),
            ("room echo, node A -> node A through Redis", &self.echo_redis),
            ("room echo, node A -> node B", c),
            ("tick fan-out, one node", &fs.latency),
            ("tick fan-out, 3 nodes", &fc.latency),
        ] {
            out.push_str(&format!(
                "| {name} | {:.2} | {:.2} | {:.2} | {} | {:.2} |\n",
                ms(l.p50_us),
                ms(l.p90_us),
                ms(l.p99_us),
                // (Under 1,000 samples, the default echo's 900, a p99.9 is its max: not shown.)
                crate::bench::series::p999(l).map_or("–".to_string(), |us| format!("{:.2}", ms(us))),
                ms(l.max_us)
            ));
        }
        out.push_str(&format!(
            "\nposts/s ({} posters, {} rooms): one node {:.0}, through Redis over 3 nodes {:.0} (Redis busy {:.0} % of a core)\n",
            self.posters, self.rooms, self.posts_single_per_s, self.posts_cluster_per_s, self.redis_cpu_pct
        ));
        out.push_str(&format!(
            "tick fan-out delivered ({} subscribers): one node {:.1} %, 3 nodes {:.1} %\n\n",
            self.subscribers, fs.delivered_pct, fc.delivered_pct
        ));
        for (name, row) in [("one node", fs), ("3 nodes", fc)] {
            if row.superseded > 0 {
                out.push_str(&format!(
                    "note: tick fan-out, {name}: {} ticks arrived and were superseded in the subscriptions' backlogs \
                     (readers fell behind, warm-up included): not delivered, and not in the percentiles, which are \
                     the lower for it\n\n",
                    row.superseded
                ));
            }
        }
        out.push_str(&format!(
            "goal: cross-node echo p50 {:.3} ms <= one-node p50 + 2 x Redis RTT = {:.3} ms: {}\n",
            ms(c.p50_us),
            ms(p50_goal),
            verdict(c.p50_us <= p50_goal)
        ));
        out.push_str(&format!(
            "goal: cross-node echo p99 {:.3} ms <= 3 x one-node p99 = {:.3} ms: {}\n",
            ms(c.p99_us),
            ms(p99_goal),
            verdict(c.p99_us <= p99_goal)
        ));
        let [failed_single, failed_cluster] = self.posts_failed;
        out.push_str(&format!(
            "goal: posts through Redis {:.0}/s >= 30000/s: {}\n",
            self.posts_cluster_per_s,
            if failed_cluster > 0 {
                format!("not judged: {failed_cluster} posts failed through Redis ({failed_single} on one node)")
            } else {
                verdict(self.posts_cluster_per_s >= 30_000.0).to_string()
            }
        ));
        // (Judged only where both runs delivered nearly everything: a run that delivered nothing has a p99 of 0.)
        let complete = fs.delivered_pct >= 99.0 && fc.delivered_pct >= 99.0;
        out.push_str(&format!(
            "goal: 3-node fan-out p99 {:.2} ms <= 2 x one-node p99 = {:.2} ms: {}\n",
            ms(fc.latency.p99_us),
            ms(2 * fs.latency.p99_us),
            if complete {
                verdict(fc.latency.p99_us <= 2 * fs.latency.p99_us).to_string()
            } else {
                format!("not judged: delivered {:.1} % and {:.1} %", fs.delivered_pct, fc.delivered_pct)
            }
        ));
        out
    }
}
