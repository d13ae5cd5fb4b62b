//! Helpers shared by the end-to-end test binaries: reading the runner's
//! JSON events.

// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::process::Output;

use serde_json::Value;

/// The parsed JSON events of one run.
pub struct Run {
    pub code: i32,
    pub events: Vec<Value>,
    pub stderr: String,
}

impl Run {
    pub fn from_output(output: Output) -> Run {
        let stdout = String::from_utf8_lossy(&output.stdout);
        let events = stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event {l:?}: {e}")))
            .collect();
        Run {
            code: output.status.code().unwrap_or(-1),
            events,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn finished(&self) -> impl Iterator<Item = &Value> {
        self.events.iter().filter(|e| e["event"] == "test-finished")
    }

    pub fn result(&self, name: &str) -> &Value {
        self.finished()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no result for {name}; stderr:\n{}", self.stderr))
    }

    pub fn outcome(&self, name: &str) -> &str {
        self.result(name)["outcome"].as_str().unwrap()
    }

    /// Returns whether the run had cgroups, from its start event.
    pub fn has_cgroups(&self) -> bool {
        self.events
            .iter()
            .any(|e| e["event"] == "run-started" && e["cgroups"] != "none")
    }
}
