//! The `backfill` command line: clap definitions, then one function per
//! command returning its [`ExitStatus`], the one place exit codes are
//! decided.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use backfill::core::interval::RangeValue;
use backfill::core::spec::EXAMPLE_JOB;
use backfill::demo::{self, DemoManifest};
use backfill::gaps::{Cadence, GapOptions};
use backfill::progress::BarAwareStderr;
use backfill::redact::redact;
use backfill::{Backfill, Cancel, Error, ProgressMode, RunOptions, ValidateOptions, report};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "backfill",
    version,
    about = "Checkpointed, parallel, exactly-once historical data backfills"
)]
struct Cli {
    /// Only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Debug logs (-vv for DataFusion's too).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate the demo dataset and job, then run it.
    Demo(DemoArgs),
    /// Write a commented example job file.
    Init {
        /// Where to write it.
        #[arg(default_value = "backfill.toml")]
        path: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Show the chunks a job splits into, with their status.
    Plan {
        /// The job file (TOML).
        job: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Run the chunks not yet committed (or those in --from/--to).
    Run(RunArgs),
    /// Per-chunk state, attempts, rows, bytes, durations and errors.
    Status {
        /// The job file (TOML).
        job: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Prove the target matches the source (exit 3 on a mismatch).
    ///
    /// Per chunk, and per group with --group-by: source rows = target +
    /// quarantined + dropped + duplicates, target counts and checksums equal
    /// those recorded at commit, and `[validate] sum` columns agree.
    Validate {
        /// The job file (TOML).
        job: PathBuf,
        /// Reconcile per group of these transformed columns, e.g. region,category.
        #[arg(long, value_delimiter = ',')]
        group_by: Vec<String>,
        /// Only these chunk ids.
        #[arg(long, value_delimiter = ',')]
        chunks: Vec<String>,
        #[command(flatten)]
        window: Window,
        #[arg(long)]
        json: bool,
    },
    /// Find periods missing or thin in the target and the chunks behind them.
    ///
    /// Counts the target's rows per period of the expected cadence along
    /// the range column; a period with no rows is missing, one under
    /// --min-ratio times its neighbours' median is thin. Adds chunks never
    /// committed and chunks committed empty while the source now has rows.
    /// Exit 4 when gaps exist and --fix was not given.
    Gaps {
        /// The job file (TOML).
        job: PathBuf,
        /// hourly, daily, weekly or monthly (default: hourly for chunks
        /// under a day, else daily).
        #[arg(long)]
        expect: Option<String>,
        /// Thin: fewer rows than this times the neighbours' median.
        #[arg(long, default_value_t = 0.5)]
        min_ratio: f64,
        /// Mark the chunks behind the gaps to run again.
        #[arg(long)]
        fix: bool,
        /// With --fix: run them now, then look again.
        #[arg(long, requires = "fix")]
        run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Mark chunks to run again (files stay visible until they do).
    Reset {
        /// The job file (TOML).
        job: PathBuf,
        #[command(flatten)]
        window: Window,
        /// Every chunk.
        #[arg(long, conflicts_with_all = ["from", "to"])]
        all: bool,
    },
    /// Remove the job's lock after its holder died on another machine.
    Unlock {
        /// The job file (TOML).
        job: PathBuf,
    },
}

#[derive(Args)]
struct Window {
    /// Only chunks overlapping [FROM, TO): a date, timestamp or integer.
    #[arg(long)]
    from: Option<String>,
    /// End of the window (exclusive).
    #[arg(long)]
    to: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    /// The job file (TOML).
    job: PathBuf,
    #[command(flatten)]
    window: Window,
    /// Chunks in flight at once (overrides [run] parallelism).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    parallel: Option<u16>,
    /// Accept a changed [range]: retire the old chunks and plan anew.
    #[arg(long)]
    replan: bool,
    /// Show what would run and stop.
    #[arg(long)]
    dry_run: bool,
    /// Only chunks whose last attempt failed.
    #[arg(long)]
    only_failed: bool,
    /// Extend the plan to now along the chunk grid, and re-run the last
    /// `[range] lookback` committed chunks for rows that arrived late.
    #[arg(long)]
    incremental: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DemoArgs {
    /// Directory for the data, the job file, the warehouse and the state.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = demo::DEFAULT_ROWS)]
    rows: u64,
    #[arg(long, default_value_t = demo::DEFAULT_SEED)]
    seed: u64,
    /// Only generate the data and the job file.
    #[arg(long)]
    no_run: bool,
    /// Replace a demo of another size in --dir.
    #[arg(long)]
    force: bool,
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    parallel: Option<u16>,
}

/// How a command ended, as its exit code: the CLI's contract (the README
/// lists it under *Using it*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExitStatus {
    Ok,
    /// Some chunks failed (the rest are committed), or another runtime
    /// error.
    Failed,
    /// Bad usage or job file: nothing ran.
    Usage,
    /// `validate` found a mismatch.
    Mismatch,
    /// `gaps` found gaps.
    Gaps,
    /// Stopped by Ctrl-C or SIGTERM; the next run resumes.
    Interrupted,
}

impl ExitStatus {
    fn code(self) -> u8 {
        match self {
            ExitStatus::Ok => 0,
            ExitStatus::Failed => 1,
            ExitStatus::Usage => 2,
            ExitStatus::Mismatch => 3,
            ExitStatus::Gaps => 4,
            ExitStatus::Interrupted => 130,
        }
    }

    fn of_run(summary: &backfill::RunSummary) -> ExitStatus {
        if summary.interrupted {
            ExitStatus::Interrupted
        } else if summary.failed.is_empty() {
            ExitStatus::Ok
        } else {
            ExitStatus::Failed
        }
    }

    fn of_error(e: &anyhow::Error) -> ExitStatus {
        match e.downcast_ref::<Error>() {
            Some(e) if e.is_usage() => ExitStatus::Usage,
            _ => ExitStatus::Failed,
        }
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    init_logging(cli.quiet, cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(ExitStatus::Failed.code());
        }
    };
    let progress = if cli.quiet {
        ProgressMode::Quiet
    } else {
        ProgressMode::Auto
    };
    let status = runtime.block_on(dispatch(cli.command, progress));
    ExitCode::from(status.code())
}

/// glibc hands each thread that finds the arenas busy a new arena, up to
/// eight per core, and memory freed into one arena serves only that arena:
/// chunk after chunk the resident size crept up although each chunk's
/// memory is bounded (10M-row demo in weekly chunks: peak 448 MiB; with one
/// arena per core 236 MiB, at the same speed). `MALLOC_ARENA_MAX` still
/// wins when set.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // SAFETY: runs first in main, before any other thread exists, and only
    // sets a tunable of the allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, i32::try_from(cores).unwrap_or(i32::MAX));
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn init_logging(quiet: bool, verbose: u8) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "warn,backfill=info",
        (false, 1) => "warn,backfill=debug,backfill_core=debug",
        _ => "info,backfill=debug,backfill_core=debug,datafusion=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BACKFILL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| BarAwareStderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_target(false)
        .try_init();
}

async fn dispatch(command: Command, progress: ProgressMode) -> ExitStatus {
    let result = match command {
        Command::Demo(a) => cmd_demo(a, progress).await,
        Command::Init { path, force } => cmd_init(&path, force),
        Command::Plan { job, json } => cmd_plan(&job, json).await,
        Command::Run(a) => cmd_run(a, progress).await,
        Command::Status { job, json } => cmd_status(&job, json),
        Command::Validate {
            job,
            group_by,
            chunks,
            window,
            json,
        } => cmd_validate(&job, group_by, chunks, &window, json).await,
        Command::Gaps {
            job,
            expect,
            min_ratio,
            fix,
            run,
            json,
        } => cmd_gaps(&job, expect, min_ratio, fix, run, json, progress).await,
        Command::Reset { job, window, all } => cmd_reset(&job, &window, all),
        Command::Unlock { job } => cmd_unlock(&job),
    };
    match result {
        Ok(status) => status,
        Err(e) => {
            eprintln!("error: {}", redact(&backfill_core::error_chain(e.as_ref())));
            ExitStatus::of_error(&e)
        }
    }
}

/// A [`Cancel`] for a run: the first Ctrl-C or SIGTERM stops it cleanly
/// (chunks in flight roll back or finish committing), a second exits at
/// once with 130. The listener lives as long as the process: a command
/// runs once.
fn cancel_on_signals() -> Cancel {
    let cancel = Cancel::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        next_signal(&mut term).await;
        tracing::warn!(
            "stopping: in-flight chunks are rolled back or finish committing; the next run resumes (press Ctrl-C again to exit at once)"
        );
        on_signal.cancel();
        next_signal(&mut term).await;
        std::process::exit(ExitStatus::Interrupted.code().into());
    });
    cancel
}

async fn next_signal(term: &mut Option<tokio::signal::unix::Signal>) {
    let term_fut = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term_fut => {},
    }
}

/// Writes command output; a closed pipe (`backfill status job | head`) ends
/// the process quietly instead of panicking.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(ExitStatus::Ok.code().into());
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(ExitStatus::Failed.code().into());
    }
}

fn load(job: &Path) -> anyhow::Result<Backfill> {
    Ok(Backfill::from_file(job)?)
}

/// How bounds are shown: instants in the job's zone (naive readings
/// declared local are shown as written), Kafka positions as partition and
/// offset.
fn shown_of(job: &Backfill) -> report::Shown {
    report::Shown {
        cal: job
            .spec()
            .range
            .as_ref()
            .map(|r| r.plan_calendar())
            .unwrap_or_default(),
        positions: job.spec().position_column().is_some(),
    }
}

fn window(job: &Backfill, w: &Window) -> Result<(Option<RangeValue>, Option<RangeValue>), Error> {
    job.window(w.from.as_deref(), w.to.as_deref(), ["--from", "--to"])
}

fn cmd_init(path: &Path, force: bool) -> anyhow::Result<ExitStatus> {
    if path.exists() && !force {
        return Err(Error::Usage(format!(
            "{} exists; use --force to overwrite it",
            path.display()
        ))
        .into());
    }
    std::fs::write(path, EXAMPLE_JOB).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "wrote {}; edit [source] and [target], then `backfill plan {}`",
        path.display(),
        path.display()
    );
    Ok(ExitStatus::Ok)
}

async fn cmd_plan(job: &Path, json: bool) -> anyhow::Result<ExitStatus> {
    let bf = load(job)?;
    let plan = bf.plan_in_full().await?;
    if json {
        let out = report::PlanJson {
            job: &bf.spec().name,
            chunks: &plan.chunks,
            partitions: &plan.partitions,
            total: plan.chunks.len(),
        };
        emit(&format!(
            "{}\n",
            redact(&serde_json::to_string_pretty(&out)?)
        ));
    } else {
        emit(&redact(&report::plan_text(
            &bf.spec().name,
            &plan,
            &shown_of(&bf),
        )));
    }
    Ok(ExitStatus::Ok)
}

async fn cmd_run(a: RunArgs, progress: ProgressMode) -> anyhow::Result<ExitStatus> {
    let mut bf = load(&a.job)?;
    if a.incremental {
        bf = bf.incremental()?;
    }
    let (from, to) = window(&bf, &a.window)?;
    let opts = RunOptions {
        from,
        to,
        parallelism: a.parallel.map(usize::from),
        replan: a.replan,
        dry_run: a.dry_run,
        only_failed: a.only_failed,
        progress,
        cancel: Some(cancel_on_signals()),
        on_chunk: None,
    };
    let summary = bf.run_with(opts).await?;
    if a.json {
        emit(&format!(
            "{}\n",
            redact(&serde_json::to_string_pretty(&summary)?)
        ));
    } else {
        emit(&redact(&report::run_text(&summary)));
    }
    Ok(ExitStatus::of_run(&summary))
}

fn cmd_status(job: &Path, json: bool) -> anyhow::Result<ExitStatus> {
    let bf = load(job)?;
    let records = bf.status()?;
    let ordered = bf.spec().range.as_ref().is_some_and(|r| r.ordered);
    if json {
        let out = report::StatusJson {
            job: &bf.spec().name,
            state: match &bf.spec().state.postgres {
                Some(pg) => pg.shown.clone(),
                None => bf.spec().state.path.display().to_string(),
            },
            chunks: &records,
            totals: report::totals(&records),
            watermark: report::watermark(&records),
        };
        emit(&format!(
            "{}\n",
            redact(&serde_json::to_string_pretty(&out)?)
        ));
    } else {
        emit(&redact(&report::status_text(
            &bf.spec().name,
            &records,
            ordered,
            &shown_of(&bf),
        )));
    }
    Ok(ExitStatus::Ok)
}

async fn cmd_validate(
    job: &Path,
    group_by: Vec<String>,
    chunks: Vec<String>,
    w: &Window,
    json: bool,
) -> anyhow::Result<ExitStatus> {
    let bf = load(job)?;
    let (from, to) = window(&bf, w)?;
    let group_by = if group_by.is_empty() {
        bf.spec().validate.group_by.clone()
    } else {
        group_by
    };
    let report = bf
        .validate(ValidateOptions {
            group_by,
            chunks,
            from,
            to,
        })
        .await?;
    if json {
        emit(&format!(
            "{}\n",
            redact(&serde_json::to_string_pretty(&report)?)
        ));
    } else {
        emit(&redact(&report::validate_text(&report)));
    }
    Ok(if report.ok {
        ExitStatus::Ok
    } else {
        ExitStatus::Mismatch
    })
}

async fn cmd_gaps(
    job: &Path,
    expect: Option<String>,
    min_ratio: f64,
    fix: bool,
    run: bool,
    json: bool,
    progress: ProgressMode,
) -> anyhow::Result<ExitStatus> {
    let bf = load(job)?;
    let expect = match expect {
        None => None,
        Some(e) => Some(Cadence::parse(&e).ok_or_else(|| {
            Error::Usage(format!(
                "--expect {e}: expected hourly, daily, weekly or monthly"
            ))
        })?),
    };
    let opts = GapOptions {
        expect,
        min_ratio,
        fix,
    };
    let show = |r: &backfill::gaps::GapReport| -> anyhow::Result<()> {
        if json {
            emit(&format!("{}\n", redact(&serde_json::to_string_pretty(r)?)));
        } else {
            emit(&redact(&backfill::gaps::gaps_text(r)));
        }
        Ok(())
    };
    let report = bf.gaps(&opts).await?;
    show(&report)?;
    if !fix {
        return Ok(if report.has_gaps() {
            ExitStatus::Gaps
        } else {
            ExitStatus::Ok
        });
    }
    if !run || !report.has_gaps() {
        return Ok(ExitStatus::Ok);
    }
    let summary = bf
        .run_with(RunOptions {
            progress,
            cancel: Some(cancel_on_signals()),
            ..Default::default()
        })
        .await?;
    if !json {
        emit(&redact(&report::run_text(&summary)));
    }
    if summary.interrupted {
        return Ok(ExitStatus::Interrupted);
    }
    let after = bf.gaps(&GapOptions { fix: false, ..opts }).await?;
    show(&after)?;
    // A chunk that failed is the louder news: gaps left behind it are
    // expected, and a script must not read 0 or 4 as "it ran".
    Ok(if !summary.failed.is_empty() {
        ExitStatus::Failed
    } else if after.has_gaps() {
        ExitStatus::Gaps
    } else {
        ExitStatus::Ok
    })
}

fn cmd_reset(job: &Path, w: &Window, all: bool) -> anyhow::Result<ExitStatus> {
    let bf = load(job)?;
    let (from, to) = window(&bf, w)?;
    if !all && from.is_none() && to.is_none() {
        return Err(Error::Usage("say which chunks: --from/--to, or --all".into()).into());
    }
    let n = bf.reset(from, to)?;
    println!("{n} chunk(s) will run again on the next `backfill run`");
    Ok(ExitStatus::Ok)
}

fn cmd_unlock(job: &Path) -> anyhow::Result<ExitStatus> {
    let bf = load(job)?;
    match bf.unlock()? {
        Some(h) => println!(
            "removed the lock of pid {} on {} (since {})",
            h.pid, h.host, h.since
        ),
        None => println!("the job was not locked"),
    }
    Ok(ExitStatus::Ok)
}

async fn cmd_demo(a: DemoArgs, progress: ProgressMode) -> anyhow::Result<ExitStatus> {
    let source = a.dir.join("source");
    let manifest_path = source.join("_demo.json");
    let wanted = DemoManifest {
        rows: a.rows,
        seed: a.seed,
        duplicates: a.rows / 100,
    };
    let existing: Option<DemoManifest> = std::fs::read(&manifest_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let reuse = match existing {
        Some(m) if m == wanted => true,
        Some(m) if !a.force => {
            return Err(demo::DemoError::Different {
                dir: a.dir.clone(),
                found: format!("{} rows (seed {})", m.rows, m.seed),
            }
            .into());
        }
        _ => false,
    };
    if !reuse {
        for sub in ["source", "warehouse", ".backfill"] {
            let p = a.dir.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        let t = Instant::now();
        eprintln!(
            "generating {} rows of demo transactions into {} ...",
            a.rows,
            source.display()
        );
        let m = demo::generate(&source, a.rows, a.seed)?;
        std::fs::write(&manifest_path, serde_json::to_vec_pretty(&m)?)
            .with_context(|| format!("writing {}", manifest_path.display()))?;
        eprintln!(
            "generated 12 monthly Parquet files ({} rows, {} re-emitted ids) in {:.1}s",
            m.rows,
            m.duplicates,
            t.elapsed().as_secs_f64()
        );
    } else {
        eprintln!("reusing the demo data in {}", source.display());
    }
    let job_path = a.dir.join("backfill.toml");
    if !job_path.exists() || !reuse {
        std::fs::write(&job_path, EXAMPLE_JOB)
            .with_context(|| format!("writing {}", job_path.display()))?;
    }
    if a.no_run {
        println!(
            "wrote {}; run it with `backfill run {}`",
            job_path.display(),
            job_path.display()
        );
        return Ok(ExitStatus::Ok);
    }
    let bf = load(&job_path)?;
    let summary = bf
        .run_with(RunOptions {
            parallelism: a.parallel.map(usize::from),
            progress,
            cancel: Some(cancel_on_signals()),
            ..Default::default()
        })
        .await?;
    emit(&redact(&report::run_text(&summary)));
    if !summary.nothing_to_do() {
        println!(
            "warehouse: {}\nquarantine: {}",
            bf.spec().target.path.display(),
            bf.spec().quarantine.path.display()
        );
    }
    Ok(ExitStatus::of_run(&summary))
}
