//! How long work reports where it is, without knowing who is watching: the command line shows
//! a spinner per task (indicatif), tests and `--json` runs show nothing or plain lines.

/// A sink for one task's progress.
pub trait Progress: Send + Sync {
    /// The task's current state, replacing the previous one (a spinner's message).
    fn set(&self, msg: &str);
    /// A line that stays, shown whether or not stderr is a terminal.
    fn note(&self, msg: &str);
    /// The task ended well; `msg` stays as its last word.
    fn done(&self, msg: &str) {
        self.note(msg)
    }
    /// The task ended badly; `msg` says how (the caller's error says it again in full).
    fn failed(&self, msg: &str) {
        self.set(msg)
    }
    /// The task ended with nothing worth keeping on screen.
    fn clear(&self) {}
    /// How far a task of known size is: `done` of `total` units.
    fn advance(&self, _done: u64, _total: u64) {}
}

/// Where several tasks at once report, one `Progress` each (`up` waits on every service).
pub trait Tasks: Send + Sync {
    fn task(&self, name: &str) -> Box<dyn Progress>;
    /// A line that belongs to no task.
    fn note(&self, msg: &str);
}

/// Notes of work that belongs to no task, shown as `Tasks`' own lines.
pub struct TasksNote<'a>(pub &'a dyn Tasks);

impl Progress for TasksNote<'_> {
    fn set(&self, _msg: &str) {}
    fn note(&self, msg: &str) {
        self.0.note(msg)
    }
}

/// Shows nothing (tests, library use).
pub struct Quiet;

impl Progress for Quiet {
    fn set(&self, _msg: &str) {}
    fn note(&self, _msg: &str) {}
}

impl Tasks for Quiet {
    fn task(&self, _name: &str) -> Box<dyn Progress> {
        Box::new(Quiet)
    }
    fn note(&self, _msg: &str) {}
}

/// Plain lines on stderr: every state change is logged at debug level, notes are printed.
pub struct Lines;

impl Progress for Lines {
    fn set(&self, msg: &str) {
        tracing::debug!("{msg}");
    }
    fn note(&self, msg: &str) {
        eprintln!("{msg}");
    }
}
