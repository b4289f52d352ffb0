//! An agent's process tree, checkpointed and restored with CRIU ([`crate::adapters::snapshot::criu`]).
//!
//! criu's own code runs inside the tasks it dumps (the parasite: a memfd mapped and
//! executed, fds drained over a socket) and restores (the restorer: clone3 with set_tid,
//! prctl(PR_SET_MM), mmap of files), which the agent's policy refuses (the guard denies
//! CAP_SYS_ADMIN and CAP_CHECKPOINT_RESTORE, the file hooks the memfd). So criu works on
//! the tasks in a staging cgroup beside the agents' that no BPF program confines, and only
//! while they cannot run code of their own.
//!
//! Dump: the daemon takes one freeze of the agent's cgroup (nested with any the caller
//! holds), moves the frozen tasks into a frozen staging cgroup, runs criu with
//! `--freeze-cgroup` on it (criu re-freezes a cgroup it found frozen before it detaches)
//! and `--leave-running`, moves every task back where it was and drops its freeze.
//!
//! Restore keeps the agent's cgroup, so its id (the key of its tokens, budgets and
//! network policy in the BPF maps) does not change and nothing is re-keyed:
//! 1. its exit watcher is told to wait for a hand-over, then the current tree is killed
//!    (the dumped pids must be free again: criu restores processes with their pids);
//! 2. criu runs in a staging cgroup, so the tree is born there; `--leave-stopped` stops
//!    every task before the first instruction of its own code;
//! 3. the daemon moves the stopped tasks into the agent's cgroup (checked in every
//!    hierarchy, as a spawn is), hands the restored root to the exit watcher, and only
//!    then sends SIGCONT: the agent's code runs confined from its first instruction.
//!
//! The restored root is the daemon's child (`--restore-sibling`), so its exit status is
//! seen as a spawned agent's is.
//!
//! Not kept: memory the restorer allocated is charged to the staging cgroup (cgroup v2
//! does not move charges with a task), so it escapes the agent's memory budget until it
//! is freed; sub-cgroups the agent made are flattened into its cgroup. Landlock-confined
//! agents are refused: criu does not restore Landlock domains.

use crate::core::Fault;
use crate::services::agent::AgentError;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rush_proto::AgentState;

use super::{AgentManager, Child, FileBackend, Files};
use crate::adapters::cgroup::AgentCgroup;
use crate::adapters::snapshot::SnapshotError;
use crate::adapters::snapshot::criu::{Criu, CriuSetup, DumpRequest, Inherit, RestoreRequest};
use crate::core::error_chain;
use crate::core::process::pidfd_open;

/// What the daemon keeps beside criu's images.
const META: &str = "rush-processes.json";

/// A dumped process tree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessImage {
    pub agent: String,
    pub dir: PathBuf,
    /// The agent's first process (criu's tree root).
    pub root_pid: u32,
    /// Every process dumped: all must be gone before a restore (they come back with
    /// these pids).
    pub pids: Vec<u32>,
    /// The log its stdout and stderr went to (handed back to the restored tree).
    pub log_path: PathBuf,
    pub bytes: u64,
    pub dump_ms: u64,
}

/// A restored process tree, running in its agent's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredProcesses {
    pub root_pid: u32,
    pub pids: Vec<u32>,
    pub restore_ms: u64,
}

/// The system's criu as a request sees it: located and checked once per daemon.
pub fn criu(setup: &CriuSetup) -> Result<&Criu, AgentError> {
    setup.get().map_err(snapshot_err)
}

fn snapshot_err(e: SnapshotError) -> AgentError {
    let kind = match e {
        SnapshotError::Unavailable(_) => Fault::Unsupported,
        SnapshotError::NoCheckpoint(_) => Fault::NotFound,
        _ => Fault::Internal,
    };
    AgentError::new(kind, error_chain(&e))
}

fn internal(what: &str, e: &dyn std::error::Error) -> AgentError {
    AgentError::new(Fault::Internal, format!("{what}: {}", error_chain(e)))
}

/// How long the killed tree may take to release its pids.
const PIDS_FREE_TIMEOUT: Duration = Duration::from_secs(5);

impl AgentManager {
    /// The running agent's cgroup and log, if CRIU can checkpoint and restore it.
    fn criu_target(&self, agent: &str) -> Result<(AgentCgroup, u32, PathBuf), AgentError> {
        let reg = self.registry();
        let a = reg.agents.get(agent).ok_or_else(|| super::not_found(agent))?;
        if a.info.state != AgentState::Running {
            return Err(AgentError::new(Fault::Invalid, format!("agent {agent:?} has exited")));
        }
        if a.files == Files::Landlock || self.enforcement.files == FileBackend::Landlock {
            return Err(AgentError::new(
                Fault::Unsupported,
                format!(
                    "agent {agent:?} is confined by Landlock, which CRIU cannot restore: its restored processes \
                     would run unconfined"
                ),
            ));
        }
        if a.info.tty {
            return Err(AgentError::new(
                Fault::Unsupported,
                format!(
                    "agent {agent:?} runs on a terminal (--tty), whose pty CRIU would have to restore with \
                     its holder: only agents spawned with --detach have their processes checkpointed"
                ),
            ));
        }
        let log = a.log_path.clone().ok_or_else(|| {
            AgentError::new(
                Fault::Invalid,
                format!(
                    "agent {agent:?} runs in the foreground (its stdio is a terminal CRIU cannot restore): \
                     only detached agents have their processes checkpointed"
                ),
            )
        })?;
        Ok((a.cgroup.clone(), a.info.pid, log))
    }

    /// Dumps the agent's whole process tree into `images` (created if missing) and leaves
    /// it running. The caller may hold freezes of the agent's cgroup: they stay in force.
    pub async fn dump_processes(&self, agent: &str, images: &Path) -> Result<ProcessImage, AgentError> {
        let (cg, root_pid, log) = self.criu_target(agent)?;
        let criu = criu(&self.criu)?.clone();
        let log_path = std::fs::canonicalize(&log).map_err(|e| internal("the agent's log", &e))?;
        let cgroups = self.cgroups.clone();
        let images = images.to_path_buf();
        let agent = agent.to_owned();
        tokio::task::spawn_blocking(move || {
            // Our own freeze, nested with any the caller holds: nothing of the agent runs
            // until every task is back in its cgroup.
            let frozen = cgroups.freeze(&cg, Duration::from_secs(5)).map_err(|e| internal("freeze", &e))?;
            if !frozen {
                tracing::warn!(agent = %agent, "dumping a cgroup still freezing after 5 s");
            }
            let dumped = dump_in_staging(&criu, &cg, root_pid, &images);
            if let Err(e) = cgroups.thaw(&cg) {
                tracing::error!(agent = %agent, error = %error_chain(&e), "not thawed after the dump");
            }
            let (stats, pids) = dumped?;
            let image = ProcessImage {
                agent,
                dir: images.clone(),
                root_pid,
                pids,
                log_path,
                bytes: stats.bytes,
                dump_ms: stats.took.as_millis() as u64,
            };
            let meta = images.join(META);
            let text = serde_json::to_vec_pretty(&image).expect("plain data");
            std::fs::write(&meta, text).map_err(|e| internal(&format!("writing {}", meta.display()), &e))?;
            tracing::info!(agent = %image.agent, processes = image.pids.len(), ms = image.dump_ms, bytes = image.bytes, "processes dumped");
            Ok(image)
        })
        .await
        .map_err(|e| internal("the dump task", &e))?
    }

    /// Kills the agent's current processes and restores the tree dumped in `images` in
    /// their place: same cgroup (tokens, budget, network policy unchanged), same pids,
    /// stopped until it is in the agent's cgroup. On failure after the kill the agent is
    /// gone, cleaned up as if it had exited.
    pub async fn restore_processes(
        &self,
        agent: &str,
        images: &Path,
    ) -> Result<RestoredProcesses, AgentError> {
        let (cg, old_root, log) = self.criu_target(agent)?;
        let criu = criu(&self.criu)?.clone();
        let meta = images.join(META);
        let image: ProcessImage = std::fs::read(&meta)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_slice(&t).map_err(|e| e.to_string()))
            .map_err(|e| {
                AgentError::new(Fault::NotFound, format!("no process image in {}: {e}", images.display()))
            })?;
        if image.agent != agent {
            return Err(AgentError::new(
                Fault::Invalid,
                format!("{} holds agent {:?}'s processes, not {agent:?}'s", images.display(), image.agent),
            ));
        }
        // Its log goes on (append) rather than back to what it was at the dump.
        let log_file = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .map_err(|e| internal(&format!("opening {}", log.display()), &e))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.registry().restoring.insert(agent.to_owned(), rx);
        let cgroups = self.cgroups.clone();
        let images = images.to_path_buf();
        let name = agent.to_owned();
        let restored = tokio::task::spawn_blocking(move || -> Result<(Child, RestoredProcesses), AgentError> {
            cgroups.kill_all(&cg).map_err(|e| internal("kill", &e))?;
            wait_pids_free(&image.pids, old_root, PIDS_FREE_TIMEOUT)?;
            let stage = Staging::create(&cg, "restore")?;
            let procs = std::fs::OpenOptions::new()
                .write(true)
                .open(stage.dir.join("cgroup.procs"))
                .map_err(|e| internal("the staging cgroup", &e))?;
            let req = RestoreRequest {
                images: &images,
                inherit: vec![Inherit { fd: log_file.as_fd(), path: &image.log_path }],
                join_cgroup: Some(procs.as_fd()),
                // criu does not restore it; every agent runs with it.
                no_new_privs: true,
            };
            let r = criu.restore(&req).map_err(snapshot_err)?;
            let pids = stage.pids();
            // Confined before they run: into the agent's cgroup (checked), then SIGCONT.
            let placement = cgroups.placement(&cg).map_err(|e| internal("the agent's cgroup", &e))?;
            for &pid in &pids {
                move_into(&cg, &placement, pid)?;
            }
            let pidfd = pidfd_open(r.root_pid).ok_or_else(|| {
                AgentError::new(Fault::Internal, "the restored root process is gone before it ran")
            })?;
            tracing::info!(agent = %name, processes = pids.len(), ms = r.took.as_millis() as u64, "processes restored");
            Ok((
                Child { pid: r.root_pid, pidfd },
                RestoredProcesses { root_pid: r.root_pid, pids, restore_ms: r.took.as_millis() as u64 },
            ))
        })
        .await
        .map_err(|e| internal("the restore task", &e))
        .and_then(|r| r);
        match restored {
            Ok((child, out)) => {
                if let Some(a) = self.registry().agents.get_mut(agent) {
                    a.info.pid = out.root_pid;
                }
                // The watcher has the root before it runs, so no exit goes unseen.
                let _ = tx.send(Some(child));
                for &pid in &out.pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGCONT,
                    );
                }
                Ok(out)
            }
            Err(e) => {
                // The old tree may still be alive (a failed kill): no hand-over pending.
                self.registry().restoring.remove(agent);
                let _ = tx.send(None);
                Err(e)
            }
        }
    }
}

/// Dumps the frozen agent from a frozen staging cgroup: criu's parasite code runs inside
/// the dumped tasks (it maps a memfd, drains fds, ...), which the agent's own policy
/// refuses. criu finds the staging cgroup frozen, so it freezes it again before it lets
/// the tasks go: they never run in it. Every task then goes back to the cgroup it came
/// from (still frozen); one that cannot is killed, never left outside its confinement.
fn dump_in_staging(
    criu: &Criu,
    cg: &AgentCgroup,
    root_pid: u32,
    images: &Path,
) -> Result<(crate::adapters::snapshot::criu::DumpStats, Vec<u32>), AgentError> {
    let members = members(&cg.v2_dir);
    let pids: Vec<u32> = members.iter().map(|(_, p)| *p).collect();
    let stage = Staging::create(cg, "checkpoint")?;
    let freeze = stage.dir.join("cgroup.freeze");
    std::fs::write(&freeze, "1").map_err(|e| internal(&format!("freezing {}", freeze.display()), &e))?;
    let moved = pids.iter().try_for_each(|&pid| write_procs(&stage.dir, pid));
    let dumped = moved.and_then(|()| {
        criu.dump(&DumpRequest { root_pid, images, freeze_cgroup: Some(&stage.dir) }).map_err(snapshot_err)
    });
    for (dir, pid) in &members {
        // Gone meanwhile (it exited) is fine; anything else is killed by the staging drop.
        if let Err(e) = write_procs(dir, *pid)
            && Path::new(&format!("/proc/{pid}")).exists()
        {
            tracing::error!(pid, error = %e.message, "a dumped task could not go back to its cgroup: killed");
        }
    }
    drop(stage);
    Ok((dumped?, pids))
}

/// (cgroup directory, pid) of every process in `dir` and its sub-cgroups.
fn members(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out: Vec<(PathBuf, u32)> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .map(|p| (dir.to_path_buf(), p))
        .collect();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(members(&e.path()));
        }
    }
    out
}

/// Moves process `pid` into the v2 cgroup `dir`.
fn write_procs(dir: &Path, pid: u32) -> Result<(), AgentError> {
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, pid.to_string())
        .map_err(|e| internal(&format!("moving {pid} into {}", procs.display()), &e))
}

/// Waits until none of `pids` exists (they must be reaped, not only dead: a zombie keeps
/// its pid). `root` is the daemon's own child, reaped by its exit watcher.
fn wait_pids_free(pids: &[u32], root: u32, timeout: Duration) -> Result<(), AgentError> {
    let deadline = Instant::now() + timeout;
    let all: Vec<u32> = pids.iter().copied().chain(std::iter::once(root)).collect();
    loop {
        let taken: Vec<u32> =
            all.iter().copied().filter(|p| Path::new(&format!("/proc/{p}")).exists()).collect();
        if taken.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(AgentError::new(
                Fault::Internal,
                format!(
                    "pids {taken:?} are still in use {timeout:?} after the kill: CRIU restores processes with \
                     their old pids"
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A cgroup v2 directory beside the agents' (`.checkpoint-NAME`, `.restore-NAME`: no
/// agent name starts with a dot), which no BPF program confines, for criu's work on an
/// agent's tasks; whatever is still in it is killed on drop.
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn create(cg: &AgentCgroup, what: &str) -> Result<Staging, AgentError> {
        let parent =
            cg.v2_dir.parent().ok_or_else(|| AgentError::new(Fault::Internal, "agent cgroup at /"))?;
        let dir = parent.join(format!(".{what}-{}", cg.name));
        if dir.exists() {
            // Left by a restore that died half-way.
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            let _ = std::fs::remove_dir(&dir);
        }
        std::fs::create_dir(&dir).map_err(|e| internal(&format!("creating {}", dir.display()), &e))?;
        Ok(Staging { dir })
    }

    fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Empty after a successful restore; whatever is left was not confined: killed.
        if !self.pids().is_empty() {
            let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while std::fs::remove_dir(&self.dir).is_err_and(|e| e.raw_os_error() == Some(libc::EBUSY))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Moves one (stopped) restored process into the agent's cgroup in every hierarchy and
/// checks it arrived, as [`crate::adapters::spawn`] checks a new agent before it may exec.
fn move_into(
    cg: &AgentCgroup,
    placement: &crate::adapters::cgroup::Placement,
    pid: u32,
) -> Result<(), AgentError> {
    use std::io::Write;
    write_procs(&cg.v2_dir, pid)?;
    for j in &placement.v1 {
        (&j.procs)
            .write_all(pid.to_string().as_bytes())
            .map_err(|e| internal(&format!("moving {pid} into {}", j.dir.display()), &e))?;
    }
    if let Some(expected) = &placement.expect {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if let Some((hierarchy, found)) = expected.mismatch(&text) {
            return Err(AgentError::new(
                Fault::Internal,
                format!(
                    "restored process {pid} is in {hierarchy} cgroup {found:?}, not the agent's {:?}",
                    expected.path
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_that_never_existed_are_free_and_live_ones_are_not() {
        assert!(wait_pids_free(&[], i32::MAX as u32, Duration::ZERO).is_ok());
        let me = std::process::id();
        let e = wait_pids_free(&[me], i32::MAX as u32, Duration::from_millis(20)).unwrap_err();
        assert!(e.message.contains(&format!("[{me}]")), "{}", e.message);
    }

    #[test]
    fn the_image_metadata_round_trips() {
        let image = ProcessImage {
            agent: "a1".into(),
            dir: "/i".into(),
            root_pid: 7,
            pids: vec![7, 8],
            log_path: "/var/lib/rush/logs/a1.log".into(),
            bytes: 1,
            dump_ms: 2,
        };
        let text = serde_json::to_string(&image).unwrap();
        assert_eq!(serde_json::from_str::<ProcessImage>(&text).unwrap(), image);
    }
}
