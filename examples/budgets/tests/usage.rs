//! Three tests that all pass under `cargo test`; under `cargo sandbox-test`
//! two of them are over their budgets.

/// Returns the CPU time this process has used, in clock ticks (10 ms on
/// most Linux builds), from /proc/self/stat.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let user: u64 = fields[11].parse().unwrap();
    let system: u64 = fields[12].parse().unwrap();
    user + system
}

fn touch(megabytes: usize) -> Vec<u8> {
    let mut v = vec![0u8; megabytes << 20];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    v
}

#[test]
fn within_budget() {
    let v = touch(8);
    assert_eq!(v[4096], 1);
}

#[test]
fn over_memory_budget() {
    // 96 MiB against a 64 MiB budget: the cap (512 MiB) lets it finish.
    let v = touch(96);
    assert_eq!(v[4096], 1);
}

#[test]
fn over_cpu_budget() {
    // About 400 ms of CPU time against a 150 ms budget, however busy the
    // machine is: the loop counts CPU ticks, not wall time.
    let start = cpu_ticks();
    let mut x: u64 = 1;
    while cpu_ticks() < start + 40 {
        for _ in 0..100_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
    }
    std::hint::black_box(x);
}
