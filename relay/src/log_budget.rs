//! A budget of log lines for events strangers can cause at will (refused
//! connections, wrong secrets): a few lines per window, and each line says how
//! many like it were left out, so a flood cannot fill the disk with logs.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines of one kind written per window at most.
const LINES_PER_WINDOW: u32 = 10;
/// The window those lines are counted in.
const WINDOW: Duration = Duration::from_secs(10);

/// The lines of one kind written in the current window.
#[derive(Debug)]
pub(crate) struct LogBudget {
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Option<Instant>,
    written: u32,
    left_out: u64,
}

impl LogBudget {
    /// A budget with nothing written yet.
    pub(crate) const fn new() -> Self {
        Self {
            state: Mutex::new(Window {
                started: None,
                written: 0,
                left_out: 0,
            }),
        }
    }

    /// `Some(lines left out since the last one written)` if a line may be
    /// written at `now`, else `None` (and the line is counted as left out).
    pub(crate) fn allow(&self, now: Instant) -> Option<u64> {
        let mut window = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let expired = window
            .started
            .is_none_or(|started| now.saturating_duration_since(started) >= WINDOW);
        if expired {
            window.started = Some(now);
            window.written = 0;
        }
        if window.written >= LINES_PER_WINDOW {
            window.left_out += 1;
            return None;
        }
        window.written += 1;
        Some(std::mem::take(&mut window.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_writes_a_few_lines_per_window_and_says_how_many_it_left_out() {
        let budget = LogBudget::new();
        let start = Instant::now();
        let written = (0..1000).filter(|_| budget.allow(start).is_some()).count();
        assert_eq!(written, LINES_PER_WINDOW as usize);
        assert_eq!(
            budget.allow(start + WINDOW),
            Some(1000 - u64::from(LINES_PER_WINDOW))
        );
        assert_eq!(budget.allow(start + WINDOW), Some(0));
    }
}
