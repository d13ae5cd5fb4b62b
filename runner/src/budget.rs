//! Budgets: limits on a test's measured usage, judged after it ends.
//!
//! A cap makes the kernel stop a test. A budget lets it finish, then turns
//! a passing test whose usage grew past the budget into `over budget`. A budget whose figure the host cannot measure is reported as
//! unchecked, never as met.

use std::time::Duration;

use crate::config::Budgets;
use crate::outcome::Usage;
use crate::report::mib;

/// The effect of budget breaches on the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BudgetMode {
    /// A breach fails the test
    #[default]
    Enforce,
    /// A breach is reported, and the test keeps its verdict
    Warn,
}

/// One budgeted figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Figure {
    Memory,
    CpuTime,
    WallTime,
    Tasks,
}

impl Figure {
    fn describe(self) -> &'static str {
        match self {
            Figure::Memory => "peak memory",
            Figure::CpuTime => "CPU time",
            Figure::WallTime => "wall time",
            Figure::Tasks => "peak tasks",
        }
    }
}

/// A budget the test's usage exceeded.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Breach {
    pub figure: Figure,
    /// The budget, in bytes, seconds or tasks.
    pub budget: f64,
    /// The measured value, in the same unit.
    pub measured: f64,
    /// The breach for people: `peak memory 312.0 MiB > budget 256.0 MiB`.
    pub message: String,
}

/// The budget verdict of one test.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Judgement {
    pub breaches: Vec<Breach>,
    /// Budgets set for the test whose figure was unavailable.
    pub unchecked: Vec<Figure>,
}

fn format_figure(figure: Figure, value: f64) -> String {
    match figure {
        Figure::Memory => mib(value as u64),
        Figure::CpuTime | Figure::WallTime => format!("{:.3}s", value),
        Figure::Tasks => format!("{value}"),
    }
}

/// Judges a test's usage against its budgets.
pub fn judge(usage: &Usage, budgets: &Budgets) -> Judgement {
    let cpu = match (usage.cpu_user, usage.cpu_system) {
        (Some(u), Some(s)) => Some(u + s),
        _ => None,
    };
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    let checks = [
        (
            Figure::Memory,
            budgets.memory.map(|b| b as f64),
            usage.memory_peak.map(|m| m as f64),
        ),
        (Figure::CpuTime, secs(budgets.cpu_time), secs(cpu)),
        (
            Figure::WallTime,
            secs(budgets.wall_time),
            secs(usage.wall_time),
        ),
        (
            Figure::Tasks,
            budgets.tasks.map(|t| t as f64),
            usage.tasks_peak.map(|t| t as f64),
        ),
    ];
    let mut judgement = Judgement::default();
    for (figure, budget, measured) in checks {
        let Some(budget) = budget else { continue };
        let Some(measured) = measured else {
            judgement.unchecked.push(figure);
            continue;
        };
        if measured > budget {
            judgement.breaches.push(Breach {
                figure,
                budget,
                measured,
                message: format!(
                    "{} {} > budget {}",
                    figure.describe(),
                    format_figure(figure, measured),
                    format_figure(figure, budget)
                ),
            });
        }
    }
    judgement
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage() -> Usage {
        Usage {
            memory_peak: Some(312 << 20),
            cpu_user: Some(Duration::from_millis(700)),
            cpu_system: Some(Duration::from_millis(300)),
            wall_time: Some(Duration::from_secs(2)),
            tasks_peak: Some(8),
            ..Usage::default()
        }
    }

    #[test]
    fn memory_breach_names_both_values() {
        let budgets = Budgets {
            memory: Some(256 << 20),
            ..Budgets::default()
        };
        let judgement = judge(&usage(), &budgets);
        assert_eq!(judgement.breaches.len(), 1);
        assert_eq!(
            judgement.breaches[0].message,
            "peak memory 312.0 MiB > budget 256.0 MiB"
        );
        assert!(judgement.unchecked.is_empty());
    }

    #[test]
    fn cpu_time_is_user_plus_system() {
        let within = Budgets {
            cpu_time: Some(Duration::from_millis(1000)),
            ..Budgets::default()
        };
        assert!(judge(&usage(), &within).breaches.is_empty());
        let over = Budgets {
            cpu_time: Some(Duration::from_millis(999)),
            ..Budgets::default()
        };
        let judgement = judge(&usage(), &over);
        assert_eq!(judgement.breaches[0].figure, Figure::CpuTime);
        assert_eq!(
            judgement.breaches[0].message,
            "CPU time 1.000s > budget 0.999s"
        );
    }

    #[test]
    fn unavailable_figure_is_unchecked() {
        let budgets = Budgets {
            memory: Some(1),
            tasks: Some(1),
            ..Budgets::default()
        };
        let judgement = judge(&Usage::default(), &budgets);
        assert!(judgement.breaches.is_empty());
        assert_eq!(judgement.unchecked, [Figure::Memory, Figure::Tasks]);
    }

    #[test]
    fn every_figure_is_judged() {
        let budgets = Budgets {
            memory: Some(1 << 20),
            cpu_time: Some(Duration::from_millis(10)),
            wall_time: Some(Duration::from_millis(10)),
            tasks: Some(2),
        };
        let figures: Vec<Figure> = judge(&usage(), &budgets)
            .breaches
            .iter()
            .map(|b| b.figure)
            .collect();
        assert_eq!(
            figures,
            [
                Figure::Memory,
                Figure::CpuTime,
                Figure::WallTime,
                Figure::Tasks
            ]
        );
    }

    #[test]
    fn no_budgets_no_judgement() {
        assert_eq!(judge(&usage(), &Budgets::default()), Judgement::default());
    }
}
