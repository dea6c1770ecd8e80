//! `llm-cache-fuzz`: runs the fuzz targets for a time budget (`cargo xtask fuzz` builds and
//! starts it under an address-space limit).
//!
//! ```text
//! llm-cache-fuzz [TARGET|all] [--minutes N | --seconds N] [--seed S]
//! llm-cache-fuzz list
//! llm-cache-fuzz replay FILE...
//! ```
//!
//! The default command is a supervisor: for each target it starts a worker process (this binary,
//! `worker TARGET`) that runs batches with fresh seeds (`S`, `S+1`, ...) until the budget is
//! used. A failure (panic, broken property, slow case) is shrunk by proptest and saved as
//! `testing/fuzz/regressions/<target>-<seed>.json`; a hang is saved by the watchdog. A worker
//! that dies (an abort on a failed allocation under the memory limit, a stack overflow) is a
//! crash: the supervisor runs the batch again with every input recorded before it runs, and
//! saves the one that crashed. The exit code is non-zero when anything was found.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use llm_cache_fuzz::{
    EXIT_FAILURE_FOUND, EXIT_HANG, RunOptions, TARGETS, TargetInfo, known_bugs, load_regressions,
    regressions_dir, replay_regression, save_regression, target,
};

fn usage() -> String {
    let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
    format!(
        "usage: llm-cache-fuzz [TARGET|all] [--minutes N | --seconds N] [--seed S]\n       \
         llm-cache-fuzz list | replay FILE...\ntargets: {}",
        names.join(", ")
    )
}

struct Args {
    positional: Vec<String>,
    seconds: Option<u64>,
    seed: Option<u64>,
    cases: Option<u32>,
    record: Option<PathBuf>,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        positional: Vec::new(),
        seconds: None,
        seed: None,
        cases: None,
        record: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--minutes" => {
                let m: f64 = value("--minutes")?
                    .parse()
                    .map_err(|_| "--minutes needs a number")?;
                a.seconds = Some((m * 60.0).round() as u64);
            }
            "--seconds" => {
                a.seconds = Some(
                    value("--seconds")?
                        .parse()
                        .map_err(|_| "--seconds needs a number")?,
                );
            }
            "--seed" => {
                a.seed = Some(
                    value("--seed")?
                        .parse()
                        .map_err(|_| "--seed needs a number")?,
                );
            }
            "--cases" => {
                a.cases = Some(
                    value("--cases")?
                        .parse()
                        .map_err(|_| "--cases needs a number")?,
                );
            }
            "--record" => a.record = Some(PathBuf::from(value("--record")?)),
            "-h" | "--help" => return Err(usage()),
            other if other.starts_with("--") => {
                return Err(format!("unknown option `{other}`\n{}", usage()));
            }
            other => a.positional.push(other.to_owned()),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match parse_args(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let result = match parsed.positional.first().map(String::as_str) {
        Some("list") => {
            for t in &TARGETS {
                println!("{:14} {}", t.name, t.about);
            }
            Ok(true)
        }
        Some("replay") => replay(&parsed.positional[1..]),
        Some("worker") => return worker(&parsed),
        Some("batch") => return batch(&parsed),
        name => supervise(name.unwrap_or("all"), &parsed),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_FAILURE_FOUND as u8),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn replay(files: &[String]) -> Result<bool, String> {
    let mut all = Vec::new();
    if files.is_empty() {
        all = load_regressions(&regressions_dir())?;
    }
    for f in files {
        let path = PathBuf::from(f);
        let dir = path.parent().map(PathBuf::from).unwrap_or_default();
        let found = load_regressions(&dir)?;
        all.extend(found.into_iter().filter(|r| r.path == path));
    }
    let mut ok = true;
    for r in &all {
        match replay_regression(r) {
            Ok(msg) => println!("{}: ok, {msg}", r.path.display()),
            Err(msg) => {
                ok = false;
                println!("{}: FAILED: {msg}", r.path.display());
            }
        }
    }
    Ok(ok)
}

fn now_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn info_of(args: &Args) -> Result<&'static TargetInfo, String> {
    let name = args.positional.get(1).ok_or("which target?")?;
    target(name).ok_or_else(|| format!("unknown target `{name}`\n{}", usage()))
}

/// One batch (the supervisor's crash reproduction).
fn batch(args: &Args) -> ExitCode {
    let Ok(t) = info_of(args) else {
        return ExitCode::from(2);
    };
    let mut opts = RunOptions::new(args.cases.unwrap_or(100), args.seed.unwrap_or(0));
    opts.record = args.record.clone();
    opts.known = known_bugs(&regressions_dir()).unwrap_or_default();
    let outcome = (t.run)(&opts);
    println!(
        "cases={} failure={}",
        outcome.cases,
        outcome.failure.is_some()
    );
    ExitCode::SUCCESS
}

/// Runs batches of one target until the budget is used.
fn worker(args: &Args) -> ExitCode {
    let t = match info_of(args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let budget = Duration::from_secs(args.seconds.unwrap_or(600));
    let base = args.seed.unwrap_or_else(now_seed);
    let dir = regressions_dir();
    let known = match known_bugs(&dir) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    let mut cases_per_batch: u32 = 100;
    let (mut total, mut known_hits, mut batches) = (0u64, 0u64, 0u64);
    let mut slowest = Duration::ZERO;
    while start.elapsed() < budget {
        let seed = base.wrapping_add(batches);
        println!("BATCH seed={seed} cases={cases_per_batch}");
        let _ = std::io::stdout().flush();
        let mut opts = RunOptions::new(cases_per_batch, seed);
        opts.regressions = Some(dir.clone());
        opts.known = known.clone();
        let outcome = (t.run)(&opts);
        batches += 1;
        total += outcome.cases;
        known_hits += outcome.known_hits;
        slowest = slowest.max(outcome.slowest);
        if let Some(f) = outcome.failure {
            println!("FAILURE seed={seed}: {}", f.message);
            println!(
                "minimal input: {}",
                llm_cache_fuzz::strategies::short(&f.input)
            );
            match save_regression(&dir, t.name, seed, &f.message, &f.input) {
                Ok(p) => println!("saved {}", p.display()),
                Err(e) => println!("cannot save the input: {e}"),
            }
            println!(
                "TOTAL target={} seconds={} cases={total} batches={batches} known={known_hits} slowest_ms={} result=failure",
                t.name,
                start.elapsed().as_secs(),
                slowest.as_millis()
            );
            return ExitCode::from(EXIT_FAILURE_FOUND as u8);
        }
        // Aim at ~15 s batches, never past the budget by much.
        let secs = outcome.elapsed.as_secs_f64().max(0.01);
        let left = budget.saturating_sub(start.elapsed()).as_secs_f64();
        let per_case = secs / f64::from(cases_per_batch.max(1));
        let target_secs = left.clamp(1.0, 15.0);
        cases_per_batch = ((target_secs / per_case) as u32).clamp(10, 100_000);
        println!(
            "  batch {batches}: {} cases in {secs:.1}s, {total} so far, slowest case {} ms",
            outcome.cases,
            outcome.slowest.as_millis()
        );
    }
    println!(
        "TOTAL target={} seconds={} cases={total} batches={batches} seeds={base}..={} known={known_hits} slowest_ms={} result=ok",
        t.name,
        start.elapsed().as_secs(),
        base.wrapping_add(batches.saturating_sub(1)),
        slowest.as_millis()
    );
    ExitCode::SUCCESS
}

/// Starts one worker per target, in sequence; reproduces crashes.
fn supervise(name: &str, args: &Args) -> Result<bool, String> {
    let targets: Vec<&TargetInfo> = if name == "all" {
        TARGETS.iter().collect()
    } else {
        vec![target(name).ok_or_else(|| format!("unknown target `{name}`\n{}", usage()))?]
    };
    let seconds = args.seconds.unwrap_or(600);
    let seed = args.seed.unwrap_or_else(now_seed);
    let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
    println!(
        "fuzzing {} for {seconds}s each, base seed {seed}",
        targets
            .iter()
            .map(|t| t.name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut summary = Vec::new();
    let mut ok = true;
    for t in targets {
        println!("\n=== {} ({})", t.name, t.about);
        let mut child = Command::new(&exe)
            .args([
                "worker",
                t.name,
                "--seconds",
                &seconds.to_string(),
                "--seed",
                &seed.to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start a worker: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let mut last_batch: Option<(u64, u32)> = None;
        let mut total_line = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            if let Some(rest) = line.strip_prefix("BATCH ") {
                let field = |k: &str| {
                    rest.split_whitespace()
                        .find_map(|f| f.strip_prefix(k))
                        .and_then(|v| v.parse::<u64>().ok())
                };
                if let (Some(s), Some(c)) = (field("seed="), field("cases=")) {
                    last_batch = Some((s, c as u32));
                }
            }
            if line.starts_with("TOTAL ") {
                total_line = Some(line.clone());
            }
        }
        let status = child.wait().map_err(|e| format!("worker: {e}"))?;
        let result = match status.code() {
            Some(0) => "ok".to_owned(),
            Some(c) if c == EXIT_FAILURE_FOUND => "failure (saved)".to_owned(),
            Some(c) if c == EXIT_HANG => "hang (saved)".to_owned(),
            _ => {
                let what = format!("crash: the worker died ({status})");
                println!("{what}");
                match last_batch {
                    Some((s, c)) => reproduce(&exe, t, s, c, &what),
                    None => what,
                }
            }
        };
        if result != "ok" {
            ok = false;
        }
        summary.push(format!(
            "{:12} {}",
            t.name,
            total_line.unwrap_or_else(|| format!("result={result}"))
        ));
    }
    println!("\n=== summary");
    for s in &summary {
        println!("{s}");
    }
    Ok(ok)
}

/// Runs a crashed batch again, recording each input before it runs; saves the last one.
fn reproduce(exe: &Path, t: &TargetInfo, seed: u64, cases: u32, what: &str) -> String {
    let record = std::env::temp_dir().join(format!("llm-cache-fuzz-{}-{seed}.json", t.name));
    let _ = std::fs::remove_file(&record);
    println!("reproducing batch seed={seed} ({cases} cases), recording every input");
    let status = Command::new(exe)
        .args([
            "batch",
            t.name,
            "--seed",
            &seed.to_string(),
            "--cases",
            &cases.to_string(),
        ])
        .arg("--record")
        .arg(&record)
        .status();
    let crashed_again = status.as_ref().is_ok_and(|s| !s.success());
    let input = std::fs::read_to_string(&record)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    match (crashed_again, input) {
        (true, Some(input)) => {
            match save_regression(&regressions_dir(), t.name, seed, what, &input) {
                Ok(p) => format!("crash (input saved to {})", p.display()),
                Err(e) => format!("crash (cannot save the input: {e})"),
            }
        }
        (false, _) => format!("crash, not reproduced by re-running seed {seed} ({status:?})"),
        (true, None) => "crash (no input recorded)".to_owned(),
    }
}
