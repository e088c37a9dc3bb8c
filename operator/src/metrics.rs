//! Prometheus metrics for the agent and the operator, in the text exposition format (0.0.4):
//! lock-free instruments for what is counted where it happens, a writer for the page, and the
//! `GET /metrics` endpoint both binaries serve.
//!
//! Hand-written rather than a client library: each binary has a dozen series, most of them read
//! from state at scrape time (sandboxes, flows, OVS's drop counters), which a registry of
//! long-lived series would have to be kept in sync with.

use std::fmt::{Display, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The Content-Type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) for durations from 1 ms to 10 s: an ADD on an idle node, a resync
/// that finds nothing to do, up to an ADD that waited for its pod's labels.
pub const SECONDS_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A count that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that is set, not counted.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Durations sorted into buckets. Observing is three relaxed atomic adds; a scrape that runs
/// meanwhile may see the sum one observation ahead of the buckets, never a count that
/// disagrees with the buckets (the count is their total).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket, not cumulative; the last one is above every bound (+Inf).
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// A histogram over [`SECONDS_BUCKETS`].
    pub fn seconds() -> Self {
        Self::new(&SECONDS_BUCKETS)
    }

    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// How many durations were observed.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// The kind of a metric family, as its `# TYPE` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A metrics page being written, family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

/// One family of a page: its samples follow its `# HELP` and `# TYPE` lines.
pub struct Family<'a> {
    text: &'a mut String,
    name: &'a str,
}

impl Exposition {
    /// Starts the family `name`.
    pub fn family<'a>(&'a mut self, name: &'a str, kind: Kind, help: &str) -> Family<'a> {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        // Writing to a String cannot fail.
        let _ = write!(
            self.text,
            "# HELP {name} {help}\n# TYPE {name} {}\n",
            kind.as_str()
        );
        Family {
            text: &mut self.text,
            name,
        }
    }

    pub fn finish(self) -> String {
        self.text
    }
}

impl Family<'_> {
    /// One sample of a counter or gauge.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Display) -> &mut Self {
        write_sample(self.text, self.name, "", labels, None, value);
        self
    }

    /// The buckets (cumulative), sum and count of one histogram.
    pub fn histogram(&mut self, labels: &[(&str, &str)], h: &Histogram) -> &mut Self {
        let mut cumulative = 0;
        for (i, c) in h.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = match h.bounds.get(i) {
                Some(b) => b.to_string(),
                None => "+Inf".to_string(),
            };
            write_sample(
                self.text,
                self.name,
                "_bucket",
                labels,
                Some(&le),
                cumulative,
            );
        }
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        write_sample(self.text, self.name, "_sum", labels, None, sum);
        write_sample(self.text, self.name, "_count", labels, None, cumulative);
        self
    }
}

fn write_sample(
    text: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&str, &str)],
    le: Option<&str>,
    value: impl Display,
) {
    text.push_str(name);
    text.push_str(suffix);
    let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
    for (i, (k, v)) in all.enumerate() {
        text.push(if i == 0 { '{' } else { ',' });
        text.push_str(k);
        text.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => text.push_str("\\\\"),
                '"' => text.push_str("\\\""),
                '\n' => text.push_str("\\n"),
                c => text.push(c),
            }
        }
        text.push('"');
    }
    if !labels.is_empty() || le.is_some() {
        text.push('}');
    }
    let _ = writeln!(text, " {value}");
}

/// Serves `GET /metrics` on `addr` (plain HTTP) until the process ends. `render` runs on a
/// blocking thread for each scrape, so it may read OVS or take a lock; the page is sent after it
/// returns, so nothing it holds waits on the scraper's network.
pub async fn serve(
    addr: SocketAddr,
    render: impl Fn() -> String + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    let render = Arc::new(render);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = render.clone();
            async move {
                match tokio::task::spawn_blocking(move || render()).await {
                    Ok(page) => Ok(([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], page)),
                    Err(e) => {
                        tracing::error!(error = %e, "rendering metrics failed");
                        Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
                    }
                }
            }
        }),
    );
    tracing::info!(%addr, "serving metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(%addr, error = %e, "metrics server stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_page_renders_exactly() {
        let requests = Counter::default();
        requests.inc();
        requests.inc();
        let h = Histogram::new(&[0.01, 0.1]);
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(80));
        h.observe(Duration::from_secs(2));
        let mut page = Exposition::default();
        page.family("t_requests_total", Kind::Counter, "Requests answered.")
            .sample(&[], requests.get());
        page.family("t_sandboxes", Kind::Gauge, "Sandboxes\\attached.\nNow.")
            .sample(&[("uplink", "up1")], 2)
            .sample(&[("uplink", "a\"b\\c\nd")], 0);
        page.family("t_seconds", Kind::Histogram, "Time taken.")
            .histogram(&[("result", "ok")], &h);
        assert_eq!(
            page.finish(),
            "# HELP t_requests_total Requests answered.\n\
             # TYPE t_requests_total counter\n\
             t_requests_total 2\n\
             # HELP t_sandboxes Sandboxes\\\\attached.\\nNow.\n\
             # TYPE t_sandboxes gauge\n\
             t_sandboxes{uplink=\"up1\"} 2\n\
             t_sandboxes{uplink=\"a\\\"b\\\\c\\nd\"} 0\n\
             # HELP t_seconds Time taken.\n\
             # TYPE t_seconds histogram\n\
             t_seconds_bucket{result=\"ok\",le=\"0.01\"} 1\n\
             t_seconds_bucket{result=\"ok\",le=\"0.1\"} 3\n\
             t_seconds_bucket{result=\"ok\",le=\"+Inf\"} 4\n\
             t_seconds_sum{result=\"ok\"} 2.135\n\
             t_seconds_count{result=\"ok\"} 4\n"
        );
    }

    #[test]
    fn a_duration_on_a_bound_falls_in_that_bucket() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(10));
        h.observe(Duration::ZERO);
        let mut page = Exposition::default();
        page.family("t", Kind::Histogram, "t").histogram(&[], &h);
        let text = page.finish();
        assert!(text.contains("t_bucket{le=\"0.001\"} 2\n"), "{text}");
        assert!(text.contains("t_bucket{le=\"0.01\"} 3\n"), "{text}");
        assert!(text.contains("t_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("t_count 3\n"), "{text}");
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn the_default_buckets_span_a_millisecond_to_ten_seconds() {
        assert_eq!(SECONDS_BUCKETS.first(), Some(&0.001));
        assert_eq!(SECONDS_BUCKETS.last(), Some(&10.0));
        assert!(SECONDS_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[tokio::test]
    async fn serves_the_page_over_http() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        serve(addr, || "t_up 1\n".to_string()).await.unwrap();
        let (status, content_type, body) = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).unwrap();
            let (head, body) = reply.split_once("\r\n\r\n").unwrap();
            let status = head.lines().next().unwrap().to_string();
            let content_type = head
                .lines()
                .find_map(|l| l.strip_prefix("content-type: "))
                .unwrap_or_default()
                .to_string();
            (status, content_type, body.to_string())
        })
        .await
        .unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(content_type, CONTENT_TYPE);
        assert_eq!(body, "t_up 1\n");
        // Taken: the error names the address.
        let e = serve(addr, String::new).await.unwrap_err().to_string();
        assert!(e.contains(&addr.to_string()), "{e}");
    }
}
