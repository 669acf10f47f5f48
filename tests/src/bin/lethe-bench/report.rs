//! Percentiles and the Markdown tables the benchmarks print.

/// Latency percentiles of `samples` (milliseconds).
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

pub fn percentiles(mut samples: Vec<f64>) -> Percentiles {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if samples.is_empty() {
            return 0.0;
        }
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[index.min(samples.len() - 1)]
    };
    Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: at(1.0),
    }
}

pub fn table(rows: &[(String, u64, f64, f64, &str, Percentiles)]) {
    println!();
    println!("| benchmark | requests | wall s | throughput | p50 ms | p90 ms | p99 ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, count, wall, rate, unit, p) in rows {
        println!(
            "| {name} | {count} | {wall:.1} | {rate:.0} {unit} | {:.1} | {:.1} | {:.1} | {:.1} |",
            p.p50, p.p90, p.p99, p.max
        );
    }
}
