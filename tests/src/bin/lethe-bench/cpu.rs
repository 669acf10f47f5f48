//! Where the CPU went during a run: user plus system time per program, from `/proc`, so a
//! benchmark's table comes with the profile that explains it (which of the daemons, the stores
//! and the broker the machine's cores were busy with).

use std::collections::BTreeMap;
use std::time::Instant;

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU ticks per program name, at one instant.
pub struct Snapshot {
    at: Instant,
    ticks: BTreeMap<String, u64>,
}

impl Snapshot {
    /// Reads every process's CPU time, summed by program name (the kernel's `comm`, e.g.
    /// `postgres`, `mariadbd`, `lethe-eraser`). Processes that end before the next snapshot
    /// are not counted: take snapshots around runs whose programs live throughout.
    pub fn take() -> Self {
        let mut ticks = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                    continue;
                };
                if let Some((name, used)) = parse_stat(&stat) {
                    *ticks.entry(name).or_insert(0) += used;
                }
            }
        }
        Self {
            at: Instant::now(),
            ticks,
        }
    }

    /// Prints, as a Markdown table, the programs that used at least 1% of one core since
    /// `earlier`, busiest first.
    pub fn print_since(&self, earlier: &Snapshot) {
        let span = self.at.duration_since(earlier.at).as_secs_f64();
        let mut used: Vec<(String, f64)> = self
            .ticks
            .iter()
            .map(|(name, &now)| {
                let before = earlier.ticks.get(name).copied().unwrap_or(0);
                (
                    name.clone(),
                    now.saturating_sub(before) as f64 / TICKS_PER_SECOND,
                )
            })
            .filter(|(_, seconds)| span > 0.0 && seconds / span >= 0.01)
            .collect();
        used.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = used.iter().map(|(_, s)| s).sum();
        println!();
        println!(
            "CPU during the run ({span:.1} s, {:.2} cores busy on average):",
            total / span
        );
        println!();
        println!("| program | CPU s | cores |");
        println!("| --- | ---: | ---: |");
        for (name, seconds) in used {
            println!("| {name} | {seconds:.1} | {:.2} |", seconds / span);
        }
    }
}

/// The program name and user plus system ticks of one `/proc/<pid>/stat` line.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    // `pid (comm) state ...`: comm may hold spaces and parentheses, so split at the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the name: state is field 3 of the line, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_program_and_cpu_ticks() {
        let line = "42 (lethe (eraser)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        assert_eq!(parse_stat(line), Some(("lethe (eraser)".to_owned(), 300)));
    }
}
