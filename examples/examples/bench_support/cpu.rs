//! CPU time for the bench examples (included with `#[path]`): on a machine shared with other
//! work, events per CPU-second are the stable figure; wall-clock rates move with the load.

#![allow(dead_code)]

/// CPU time of the calling thread, in seconds (`/proc/thread-self/schedstat`, nanoseconds).
pub fn thread_secs() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// CPU time of the waited-for children, in seconds (`/proc/self/stat`, in 1/100 s).
pub fn children_secs() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which may hold spaces: cutime and cstime are the
            // 14th and 15th.
            let rest = s.get(s.rfind(')')? + 2..)?.to_owned();
            let fields: Vec<u64> = rest
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            Some(fields.get(13)? + fields.get(14)?)
        })
        .map_or(0.0, |ticks| ticks as f64 / 100.0)
}

/// Cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// A rate measured against wall time and against CPU time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rate {
    /// Per second of wall time.
    pub wall: f64,
    /// Per second of CPU time.
    pub cpu: f64,
}

impl Rate {
    /// `count` things in `wall_secs` of wall time and `cpu_secs` of CPU time. A run too short
    /// for the CPU clock to advance (smoke sizes) gets its wall-time rate as its CPU rate.
    pub fn of(count: usize, wall_secs: f64, cpu_secs: f64) -> Rate {
        let wall = count as f64 / wall_secs.max(1e-9);
        Rate {
            wall,
            cpu: if cpu_secs > 0.0 {
                count as f64 / cpu_secs
            } else {
                wall
            },
        }
    }

    /// The better of each.
    pub fn best(self, other: Rate) -> Rate {
        Rate {
            wall: self.wall.max(other.wall),
            cpu: self.cpu.max(other.cpu),
        }
    }
}
