//! # llm-cache-fuzz
//!
//! Fuzzing on stable Rust (no libFuzzer, no sanitizers): every parser that sees outside bytes is
//! driven by structure-aware [`proptest`] generators with shrinking, one [`Target`] per module
//! of [`targets`], registered in [`TARGETS`].
//!
//! * A case that panics, breaks its property, or takes longer than [`RunOptions::slow_case`]
//!   fails; proptest shrinks it to a minimal input.
//! * A case that runs longer than [`RunOptions::hang`] is a hang: a watchdog thread saves the
//!   input and ends the process.
//! * Unbounded allocation: `cargo xtask fuzz` runs the binary under an address-space limit, so a
//!   runaway allocation aborts it; the binary's supervisor then replays the batch recording each
//!   input to find the one that crashed (see `src/main.rs`).
//! * Every file in `testing/fuzz/regressions/` is replayed by `tests/fuzz.rs`. A file whose
//!   `status` is `open` records a known, unfixed bug: the replay expects it to still fail, and
//!   the fuzzer skips failures matching its `signature` so it can look for others.
//!
//! `docs/reliability.md` describes every target and the latest results.

use std::cell::{Cell, RefCell};
use std::fmt::Debug;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use proptest::strategy::BoxedStrategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub mod strategies;
pub mod targets;

/// One fuzz target.
pub trait Target {
    /// Name on the command line and in regression files.
    const NAME: &'static str;
    /// What it generates and checks, in one line.
    const ABOUT: &'static str;
    /// One generated case. Serializable, so a failing case is kept as a regression file.
    type Input: Clone + Debug + Serialize + DeserializeOwned + Send + 'static;
    /// The generator.
    fn strategy() -> BoxedStrategy<Self::Input>;
    /// The property: `Err` (or a panic) is a failure.
    ///
    /// # Errors
    /// A message saying which property broke.
    fn check(input: &Self::Input) -> Result<(), String>;
}

/// A registered target.
#[derive(Debug, Clone, Copy)]
pub struct TargetInfo {
    /// [`Target::NAME`].
    pub name: &'static str,
    /// [`Target::ABOUT`].
    pub about: &'static str,
    /// Runs a batch.
    pub run: fn(&RunOptions) -> Outcome,
    /// Runs one input (a regression file's `input`) once.
    pub replay: fn(&Value, &[KnownBug]) -> Result<Verdict, String>,
}

const fn info<T: Target>() -> TargetInfo {
    TargetInfo {
        name: T::NAME,
        about: T::ABOUT,
        run: run_target::<T>,
        replay: replay_target::<T>,
    }
}

/// Every target, in the order `all` runs them.
pub static TARGETS: [TargetInfo; 8] = [
    info::<targets::directives::Directives>(),
    info::<targets::cache_control::CacheControlHeader>(),
    info::<targets::config::ConfigTarget>(),
    info::<targets::envelope::Envelope>(),
    info::<targets::sse::Sse>(),
    info::<targets::key::Key>(),
    info::<targets::embeddings::Embeddings>(),
    info::<targets::semantic_guard::SemanticGuard>(),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static TargetInfo> {
    TARGETS.iter().find(|t| t.name == name)
}

/// A known, unfixed bug (a regression file with `"status": "open"`): failures whose message
/// contains `signature` are counted, not reported.
#[derive(Debug, Clone)]
pub struct KnownBug {
    /// The regression file.
    pub file: String,
    /// The target it belongs to.
    pub target: String,
    /// A substring of the failure message (e.g. the panic location).
    pub signature: String,
}

/// How to run a batch.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Number of cases.
    pub cases: u32,
    /// Seed of the generator (the whole batch is a function of it).
    pub seed: u64,
    /// A case slower than this fails (and is shrunk).
    pub slow_case: Duration,
    /// A case running longer than this is a hang: its input is saved and the process exits.
    pub hang: Duration,
    /// Write each input here before running it (crash reproduction).
    pub record: Option<PathBuf>,
    /// Where a hang is saved.
    pub regressions: Option<PathBuf>,
    /// Known bugs to skip.
    pub known: Vec<KnownBug>,
    /// Time budget for shrinking a failure.
    pub max_shrink: Duration,
}

impl RunOptions {
    /// `cases` cases from `seed`, with the default limits.
    pub fn new(cases: u32, seed: u64) -> Self {
        RunOptions {
            cases,
            seed,
            slow_case: Duration::from_secs(2),
            hang: Duration::from_secs(60),
            record: None,
            regressions: None,
            known: Vec::new(),
            max_shrink: Duration::from_secs(120),
        }
    }
}

/// What a batch found.
#[derive(Debug)]
pub struct Outcome {
    /// Cases run (including shrinking steps).
    pub cases: u64,
    /// Cases that hit a known bug.
    pub known_hits: u64,
    /// The slowest passing case.
    pub slowest: Duration,
    /// Wall time of the batch.
    pub elapsed: Duration,
    /// The failure, if any (shrunk).
    pub failure: Option<Failure>,
}

/// A failing case.
#[derive(Debug)]
pub struct Failure {
    /// Why it failed.
    pub message: String,
    /// The minimal input, as JSON.
    pub input: Value,
}

/// How one case went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The property held.
    Pass,
    /// It failed the way a known bug does.
    Known,
}

/// Exit code of a process that found a failure (saved as a regression file).
pub const EXIT_FAILURE_FOUND: i32 = 1;
/// Exit code of a process whose watchdog saw a hang.
pub const EXIT_HANG: i32 = 3;

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

/// Installs a panic hook that records (instead of printing) panics inside fuzz cases, with
/// their location, and leaves every other panic to the default hook.
fn install_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let payload = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "<non-string panic>".to_owned());
                let at = info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                    .unwrap_or_default();
                let msg = format!("panicked at {at}: {payload}");
                LAST_PANIC.with(|p| {
                    // Keep the first panic of a case (later ones are usually consequences).
                    p.borrow_mut().get_or_insert(msg);
                });
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `check` on one input: panics caught (with their location), known bugs recognised.
fn guarded<T: Target>(input: &T::Input, known: &[KnownBug]) -> Result<Verdict, String> {
    install_hook();
    LAST_PANIC.with(|p| p.borrow_mut().take());
    QUIET.with(|q| q.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(|| T::check(input)));
    QUIET.with(|q| q.set(false));
    // A panic anywhere in the case counts, even one caught on the way (a spawned task's).
    let panicked = LAST_PANIC.with(|p| p.borrow_mut().take());
    let failure = match (result, panicked) {
        (_, Some(p)) => Some(p),
        (Err(_), None) => Some("panicked (no message)".to_owned()),
        (Ok(Err(e)), None) => Some(e),
        (Ok(Ok(())), None) => None,
    };
    match failure {
        None => Ok(Verdict::Pass),
        Some(msg) => {
            if known
                .iter()
                .any(|k| k.target == T::NAME && matches_signature(&msg, &k.signature))
            {
                Ok(Verdict::Known)
            } else {
                Err(msg)
            }
        }
    }
}

struct WatchState<I> {
    started: Option<Instant>,
    input: Option<I>,
}

/// The hang watchdog of one batch.
struct Watchdog<I> {
    state: Arc<Mutex<WatchState<I>>>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<I: Serialize + Send + 'static> Watchdog<I> {
    fn start(target: &'static str, opts: &RunOptions) -> Self {
        let state = Arc::new(Mutex::new(WatchState {
            started: None,
            input: None,
        }));
        let done = Arc::new(AtomicBool::new(false));
        let (s, d) = (state.clone(), done.clone());
        let hang = opts.hang;
        let seed = opts.seed;
        let dir = opts.regressions.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fuzz-watchdog-{target}"))
            .spawn(move || {
                while !d.load(Ordering::Relaxed) {
                    std::thread::park_timeout(Duration::from_millis(200));
                    let st = s.lock().unwrap_or_else(|e| e.into_inner());
                    if let (Some(t), Some(input)) = (st.started, st.input.as_ref())
                        && t.elapsed() > hang
                    {
                        let input = serde_json::to_value(input).unwrap_or(Value::Null);
                        let msg = format!("hang: one case ran for more than {hang:?}");
                        eprintln!("\n[{target}] {msg} (seed {seed})");
                        match &dir {
                            Some(dir) => match save_regression(dir, target, seed, &msg, &input) {
                                Ok(p) => eprintln!("[{target}] input saved to {}", p.display()),
                                Err(e) => eprintln!("[{target}] cannot save the input: {e}"),
                            },
                            None => eprintln!("[{target}] input: {}", strategies::short(&input)),
                        }
                        std::process::exit(EXIT_HANG);
                    }
                }
            })
            .expect("spawn the watchdog");
        Watchdog {
            state,
            done,
            thread: Some(thread),
        }
    }

    fn enter(&self, input: I) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.started = Some(Instant::now());
        st.input = Some(input);
    }

    fn leave(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.started = None;
        st.input = None;
    }
}

impl<I> Drop for Watchdog<I> {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn seed_bytes(seed: u64) -> [u8; 32] {
    // splitmix64 expands the 64-bit seed into ChaCha's 32-byte key.
    let mut x = seed;
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(8) {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

/// Runs a batch of `T`.
pub fn run_target<T: Target>(opts: &RunOptions) -> Outcome {
    install_hook();
    let config = Config {
        cases: opts.cases,
        failure_persistence: None,
        max_shrink_iters: 10_000,
        max_shrink_time: u32::try_from(opts.max_shrink.as_millis()).unwrap_or(u32::MAX),
        max_global_rejects: 100_000,
        ..Config::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes(opts.seed));
    let mut runner = TestRunner::new_with_rng(config, rng);
    let watchdog = Watchdog::<T::Input>::start(T::NAME, opts);
    let cases = AtomicU64::new(0);
    let known = AtomicU64::new(0);
    let slowest = Mutex::new(Duration::ZERO);
    let start = Instant::now();
    let result = runner.run(&T::strategy(), |input| {
        if let Some(path) = &opts.record {
            let json = serde_json::to_vec(&input).expect("inputs serialize");
            std::fs::write(path, json).expect("write the record file");
        }
        cases.fetch_add(1, Ordering::Relaxed);
        watchdog.enter(input.clone());
        let t = Instant::now();
        let verdict = guarded::<T>(&input, &opts.known);
        let took = t.elapsed();
        watchdog.leave();
        match verdict {
            Ok(Verdict::Known) => {
                known.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(Verdict::Pass) if took > opts.slow_case => Err(TestCaseError::fail(format!(
                "slow: one case took {took:?} (limit {:?})",
                opts.slow_case
            ))),
            Ok(Verdict::Pass) => {
                let mut s = slowest.lock().unwrap_or_else(|e| e.into_inner());
                *s = (*s).max(took);
                Ok(())
            }
            Err(msg) => Err(TestCaseError::fail(msg)),
        }
    });
    drop(watchdog);
    let failure = match result {
        Ok(()) => None,
        Err(TestError::Fail(reason, input)) => Some(Failure {
            message: reason.message().to_owned(),
            input: serde_json::to_value(&input).expect("inputs serialize"),
        }),
        Err(TestError::Abort(reason)) => Some(Failure {
            message: format!("proptest aborted: {}", reason.message()),
            input: Value::Null,
        }),
    };
    Outcome {
        cases: cases.into_inner(),
        known_hits: known.into_inner(),
        slowest: slowest.into_inner().unwrap_or_else(|e| e.into_inner()),
        elapsed: start.elapsed(),
        failure,
    }
}

/// Runs one input of `T` (from a regression file).
///
/// # Errors
/// The failure message, or an input that does not deserialize.
pub fn replay_target<T: Target>(input: &Value, known: &[KnownBug]) -> Result<Verdict, String> {
    let input: T::Input = serde_json::from_value(input.clone())
        .map_err(|e| format!("the input is not a `{}` input: {e}", T::NAME))?;
    let limit = RunOptions::new(1, 0).slow_case;
    let start = Instant::now();
    let verdict = guarded::<T>(&input, known)?;
    let took = start.elapsed();
    if took > limit {
        return Err(format!("slow: one case took {took:?} (limit {limit:?})"));
    }
    Ok(verdict)
}

/// Writes `<dir>/<target>-<seed>.json` and returns its path.
///
/// # Errors
/// An I/O error.
pub fn save_regression(
    dir: &Path,
    target: &str,
    seed: u64,
    message: &str,
    input: &Value,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{target}-{seed}.json"));
    let doc = json!({
        "target": target,
        "seed": seed,
        "found": message,
        // `fixed`: the replay must pass. `open` (a known bug, not fixed yet): the replay must
        // still fail with `signature` in its message, and the fuzzer skips that failure.
        "status": "fixed",
        "signature": signature_of(message),
        "input": input,
    });
    let text = serde_json::to_string_pretty(&doc).expect("JSON serializes");
    std::fs::write(&path, text + "\n")?;
    Ok(path)
}

/// Whether a failure message matches a signature: a substring, where `*` stands for any text
/// (`panicked at crates/x.rs:*: attempt to add with overflow`).
pub fn matches_signature(message: &str, signature: &str) -> bool {
    let mut rest = message;
    for part in signature.split('*') {
        match rest.find(part) {
            Some(p) => rest = &rest[p + part.len()..],
            _ => return false,
        }
    }
    true
}

/// The stable part of a failure message: the panic location, else the first line.
pub fn signature_of(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("panicked at ")
        && let Some((at, _)) = rest.split_once(": ")
    {
        // file:line (the column is kept too: it tells two panics on one line apart).
        return at.to_owned();
    }
    let first = message.lines().next().unwrap_or_default();
    // "slow: one case took 2.3s" → "slow": the stable part of a property message.
    first
        .split_once(": ")
        .map_or(first, |(head, _)| head)
        .to_owned()
}

/// The regression directory of this crate.
pub fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions")
}

/// A parsed regression file.
#[derive(Debug, Clone)]
pub struct Regression {
    /// Its path.
    pub path: PathBuf,
    /// Its target.
    pub target: String,
    /// `fixed` or `open`.
    pub status: String,
    /// Signature of the failure.
    pub signature: String,
    /// The input.
    pub input: Value,
}

/// Every regression file in `dir` (`*.json`), sorted by name.
///
/// # Errors
/// An unreadable or malformed file.
pub fn load_regressions(dir: &Path) -> Result<Vec<Regression>, String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let doc: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
        let field = |k: &str| doc.get(k).and_then(Value::as_str).map(str::to_owned);
        let target = field("target").ok_or_else(|| format!("{}: no `target`", path.display()))?;
        out.push(Regression {
            path: path.clone(),
            target,
            status: field("status").unwrap_or_else(|| "fixed".to_owned()),
            signature: field("signature").unwrap_or_default(),
            input: doc.get("input").cloned().unwrap_or(Value::Null),
        });
    }
    Ok(out)
}

/// The known (open) bugs recorded in `dir`.
///
/// # Errors
/// As [`load_regressions`].
pub fn known_bugs(dir: &Path) -> Result<Vec<KnownBug>, String> {
    Ok(load_regressions(dir)?
        .into_iter()
        .filter(|r| r.status == "open" && !r.signature.is_empty())
        .map(|r| KnownBug {
            file: r.path.display().to_string(),
            target: r.target,
            signature: r.signature,
        })
        .collect())
}

/// Replays one regression: `Ok` when it behaves as its `status` says.
///
/// # Errors
/// What went wrong.
pub fn replay_regression(r: &Regression) -> Result<String, String> {
    let t = target(&r.target).ok_or_else(|| format!("unknown target `{}`", r.target))?;
    let outcome = (t.replay)(&r.input, &[]);
    match (r.status.as_str(), outcome) {
        ("open", Err(msg)) if matches_signature(&msg, &r.signature) => Ok(format!(
            "still failing as recorded (open bug): {}",
            strategies::short(&msg)
        )),
        ("open", Err(msg)) => Err(format!(
            "an open bug now fails differently: {msg} (recorded signature: {})",
            r.signature
        )),
        ("open", Ok(_)) => Err(
            "this open bug does not fail any more: set its `status` to `fixed` so it stays a regression test"
                .to_owned(),
        ),
        (_, Ok(_)) => Ok("passes".to_owned()),
        (_, Err(msg)) => Err(format!("regression: {msg}")),
    }
}
