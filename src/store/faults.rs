//! Fault injection for the reliability tests, in one place: each hook reads one
//! environment variable that only tests set, and none changes how a number is
//! computed. They make a process fail the way a full disk or a diverging run would,
//! so tests can check that nothing recorded before the fault is lost.

/// `GRAFT_FAIL_JOURNAL_AFTER_BYTES=N`: a journal accepts N bytes, then every later
/// append fails as a full disk would.
pub fn journal_byte_limit() -> Option<u64> {
    std::env::var("GRAFT_FAIL_JOURNAL_AFTER_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// `GRAFT_FAIL_OBJECT_WRITES_AFTER=N`: the process writes N objects, then every later
/// object write fails as a full disk would.
pub fn object_write_limit() -> Option<u64> {
    static LIMIT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("GRAFT_FAIL_OBJECT_WRITES_AFTER")
            .ok()
            .and_then(|v| v.parse().ok())
    })
}

/// `GRAFT_INJECT_NAN_AT_STEP=N`: the trainer sees a NaN loss at step N.
pub fn nan_loss_step() -> Option<u64> {
    std::env::var("GRAFT_INJECT_NAN_AT_STEP").ok()?.parse().ok()
}

/// `GRAFT_SLOW_TRANSFER_MS=N`: every file a push or pull moves (object,
/// manifest, commit) waits N ms first, so a test can kill the process part
/// way through a transfer.
pub fn transfer_delay() -> Option<std::time::Duration> {
    std::env::var("GRAFT_SLOW_TRANSFER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_millis)
}

/// `GRAFT_LOCK_TIMEOUT_MS=N`: how long a command waits for another process's index
/// lock (the tests raise it on a loaded machine). It changes no number either.
pub fn lock_timeout_ms() -> Option<u64> {
    std::env::var("GRAFT_LOCK_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// `GRAFT_PAUSE_BEFORE_TAG_WRITE=PATH`: before each conditional write of a
/// tag, a push creates PATH and waits (a minute at most) until it is gone,
/// so a test can move the tag on the remote between the push's read and its
/// write, where only the remote's compare-and-swap can catch it.
pub fn pause_before_tag_write() {
    let Some(path) = std::env::var_os("GRAFT_PAUSE_BEFORE_TAG_WRITE") else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    if std::fs::write(&path, b"").is_err() {
        return;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while path.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
