//! The one way labctl waits for something: `poll_until` asks a check at a fixed interval until
//! it says `Ready` or the time is up. The check is a pure question about the world (is the job
//! RUNNING? are the slots there?) that also says why not yet; what a timeout means is left to
//! the caller, which knows the fix to name (as kube-runtime's `await_condition` leaves it).

use std::{
    future::Future,
    time::{Duration, Instant},
};

use anyhow::Result;

/// One look at the world.
#[derive(Debug)]
pub enum Check<T> {
    /// The condition holds; the value is what the caller waited for.
    Ready(T),
    /// Not yet, and why (kept for the timeout message).
    NotYet(String),
}

/// How a wait ended short of an error from the check itself.
#[derive(Debug)]
pub enum Waited<T> {
    Ready(T),
    /// The time ran out; `last` is the check's last reason.
    TimedOut {
        last: String,
        after: Duration,
    },
}

impl<T> Waited<T> {
    /// The ready value, or the caller's error built from the last reason.
    pub fn or_else(self, timed_out: impl FnOnce(&str, Duration) -> anyhow::Error) -> Result<T> {
        match self {
            Waited::Ready(v) => Ok(v),
            Waited::TimedOut { last, after } => Err(timed_out(&last, after)),
        }
    }
}

/// How often to look and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Every {
    pub interval: Duration,
    pub within: Duration,
}

impl Every {
    pub fn millis(interval_ms: u64) -> Self {
        Self { interval: Duration::from_millis(interval_ms), within: Duration::ZERO }
    }

    pub fn within(self, within: Duration) -> Self {
        Self { within, ..self }
    }
}

/// Runs `check` until it is `Ready`, an error (returned at once), or `every.within` has passed
/// since the first look (the check is asked at least once, and once more at the deadline).
/// `on_not_yet` sees each reason, e.g. to tell the user once what is being waited for.
pub async fn poll_until<T, F, Fut>(
    every: Every,
    mut check: F,
    mut on_not_yet: impl FnMut(&str),
) -> Result<Waited<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Check<T>>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await? {
            Check::Ready(v) => return Ok(Waited::Ready(v)),
            Check::NotYet(why) => why,
        };
        on_not_yet(&last);
        let elapsed = start.elapsed();
        if elapsed >= every.within {
            return Ok(Waited::TimedOut { last, after: elapsed });
        }
        tokio::time::sleep(every.interval.min(every.within - elapsed)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn ready_after_some_looks() {
        let n = AtomicU32::new(0);
        let got = poll_until(
            Every::millis(1).within(Duration::from_secs(5)),
            || async {
                let i = n.fetch_add(1, Ordering::SeqCst);
                Ok(if i == 3 { Check::Ready(i) } else { Check::NotYet(format!("look {i}")) })
            },
            |_| {},
        )
        .await
        .unwrap();
        assert!(matches!(got, Waited::Ready(3)));
    }

    #[tokio::test]
    async fn times_out_with_the_last_reason_after_at_least_one_look() {
        let mut seen = Vec::new();
        let got: Waited<()> = poll_until(
            Every::millis(5).within(Duration::ZERO),
            || async { Ok(Check::NotYet("no slots".into())) },
            |why| seen.push(why.to_string()),
        )
        .await
        .unwrap();
        assert_eq!(seen, ["no slots"]);
        let err = got.or_else(|last, _| anyhow::anyhow!("gave up: {last}")).unwrap_err();
        assert_eq!(err.to_string(), "gave up: no slots");
    }

    #[tokio::test]
    async fn an_error_of_the_check_ends_the_wait_at_once() {
        let n = AtomicU32::new(0);
        let got: Result<Waited<()>> = poll_until(
            Every::millis(1).within(Duration::from_secs(5)),
            || async {
                n.fetch_add(1, Ordering::SeqCst);
                anyhow::bail!("refused")
            },
            |_| {},
        )
        .await;
        assert_eq!(got.unwrap_err().to_string(), "refused");
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
