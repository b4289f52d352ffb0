//! The `rush-agentd` binary: flags and config in, the daemon out.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rush_agentd::adapters::cgroup::CgroupLayout;
use rush_agentd::config::{Config, DEFAULT_CONFIG, LogFormat};
use rush_agentd::probe::{self, ProbeInputs};

/// The Rush daemon: runs AI agents as kernel-confined processes.
///
/// rush-agentd loads Rush's eBPF programs, creates one cgroup per agent, enforces each
/// agent's network policy in the kernel, and keeps an audit trail of every spawn, exit,
/// kill and denial. The `rush` command talks to it over a Unix socket.
///
/// It must run as root. Guarantees the running kernel cannot keep are reported at
/// start-up and by `rush doctor`, and requests that need them are refused.
#[derive(Parser)]
#[command(name = "rush-agentd", version, max_term_width = 100)]
struct Args {
    /// Config file (TOML); a missing default file means all defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the audit log and agent logs are kept [default: /var/lib/rush].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The API socket [default: /run/rush/agentd.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Log output format [default: text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// bpffs directory for this daemon's pinned programs and maps [default: /sys/fs/bpf/rush].
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
    /// Agent cgroups go under this path in every hierarchy [default: rush].
    #[arg(long, value_name = "PATH")]
    cgroup_parent: Option<PathBuf>,
    /// Remove the BPF pins on exit (for tests and benchmarks; a production daemon keeps
    /// them so enforcement outlives it).
    #[arg(long)]
    ephemeral: bool,
    /// What enforces file tokens: BPF LSM where its programs attach, else Landlock (auto),
    /// or only one of them [default: files.enforcement in the config, else auto].
    #[arg(long, value_enum)]
    enforcement: Option<rush_agentd::config::EnforcementChoice>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Probe this machine without starting the daemon and print what it supports.
    Doctor {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop this daemon and remove everything it leaves on a plain stop: kill every agent
    /// and remove every cgroup under the agent parent in each hierarchy, unmount what it
    /// mounted under its state directories, remove its BPF pins and its socket.
    ///
    /// A plain stop leaves agents running under the pinned programs on purpose (the next
    /// daemon re-adopts them); this is for uninstalling (the Debian package's prerm on
    /// `remove`). Works whether the daemon is running or not; reads the same config and
    /// flags as the daemon.
    Teardown,
    /// (internal) Write the man page, rush-agentd.8, into DIR (packaging: `cargo xtask deb`).
    #[command(name = "__man", hide = true)]
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// (internal) Hold an agent's terminal: started by the daemon with the pty master as
    /// stdin; see adapters/pty.rs.
    #[command(hide = true)]
    PtyHolder {
        #[arg(long)]
        agent: String,
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        log: PathBuf,
        #[arg(long)]
        scrollback: usize,
        #[arg(long)]
        rows: u16,
        #[arg(long)]
        cols: u16,
        #[arg(long)]
        append: bool,
    },
}

mod teardown;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Cmd::Man { dir }) = &args.command {
        return match write_man(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rush-agentd __man: {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Cmd::PtyHolder { agent, socket, log, scrollback, rows, cols, append }) = &args.command {
        let size = rush_proto::terminal::WindowSize { rows: *rows, cols: *cols };
        let cfg = rush_agentd::adapters::pty::HolderConfig {
            agent: agent.clone(),
            socket: socket.clone(),
            log: log.clone(),
            scrollback: *scrollback,
            size,
            append: *append,
        };
        return match rush_agentd::adapters::pty::holder::run(cfg) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rush-agentd pty-holder: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let explicit = args.config.is_some();
    let path = args.config.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let mut config = match Config::load(&path, explicit) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rush-agentd: {}", rush_agentd::core::error_chain(&e));
            return ExitCode::from(2);
        }
    };
    if let Some(v) = args.state_dir {
        config.daemon.state_dir = v;
    }
    if let Some(v) = args.socket {
        config.daemon.socket = v;
    }
    if let Some(v) = args.log_format {
        config.daemon.log_format = v;
    }
    if let Some(v) = args.pin_dir {
        config.bpf.pin_dir = v;
    }
    if let Some(v) = args.cgroup_parent {
        config.cgroup.parent = v;
    }
    if let Some(v) = args.enforcement {
        config.files.enforcement = v;
    }
    init_tracing(config.daemon.log_format);
    tracing::debug!(version = env!("CARGO_PKG_VERSION"), "rush-agentd starting");

    if let Some(Cmd::Doctor { json }) = args.command {
        return local_doctor(json, &config);
    }
    if let Some(Cmd::Teardown) = args.command {
        return teardown::run(&config);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rush-agentd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(rush_agentd::daemon::run(config, args.ephemeral)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", rush_agentd::core::error_chain(&e));
            eprintln!("rush-agentd: {}", rush_agentd::core::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// rush-agentd.8: a daemon, so section 8 (clap_mangen says 1 unless told).
fn write_man(dir: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let man = clap_mangen::Man::new(Args::command()).section("8");
    let mut page = Vec::new();
    man.render(&mut page)?;
    std::fs::write(dir.join("rush-agentd.8"), page)
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUSH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A log line that cannot be written (stderr a file on a full disk) is dropped: by
    // default tracing-subscriber reports it with eprintln!, which panics when stderr
    // refuses too, and a panic in a request's task closed its connection unanswered.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Probes without a running daemon: loads the programs into a throw-away pin directory to
/// learn what really attaches, then removes them.
fn local_doctor(json: bool, config: &Config) -> ExitCode {
    let layout = CgroupLayout::detect().ok();
    let attach = layout.as_ref().and_then(|l| {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/rush-doctor-{}", std::process::id()));
        let cfg = rush_agentd::adapters::bpf::BpfConfig {
            pin_dir: pin_dir.clone(),
            cgroup2_root: l.v2_root.clone(),
            agent_cgroup_level: 2,
            protected_dirs: Vec::new(),
        };
        let rt = tokio::runtime::Builder::new_current_thread().build().ok()?;
        let _guard = rt.enter();
        let result = rush_agentd::adapters::bpf::BpfHandle::start(cfg);
        let report = match result {
            Ok((handle, report, _events)) => {
                drop(handle);
                Some(report)
            }
            Err(e) => {
                eprintln!("rush-agentd: BPF load failed: {}", rush_agentd::core::error_chain(&e));
                None
            }
        };
        let _ = std::fs::remove_dir_all(&pin_dir);
        report
    });
    let files =
        attach.as_ref().map(|r| rush_agentd::daemon::choose_file_backend(config.files.enforcement, r));
    let report = probe::doctor(&ProbeInputs {
        attach: attach.as_ref(),
        cgroups: layout.as_ref(),
        meter_ready: None,
        api_endpoints: None,
        files: files.as_ref(),
        landlock: Some(&config.landlock),
        snapshot_store: None,
        criu: None,
        state: None,
        hardening: Some((&config.hardening, None)),
        landlock_audit: None,
        dns: None,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("report serializes"));
    } else {
        println!("kernel {}", report.kernel);
        for p in &report.probes {
            println!("  {} {:<18} {}", if p.ok { "ok  " } else { "FAIL" }, p.name, p.detail);
        }
        println!("guarantees:");
        for g in &report.guarantees {
            println!("  {} {:<36} {}", if g.holds { "yes" } else { "NO " }, g.name, g.detail);
        }
    }
    ExitCode::SUCCESS
}
